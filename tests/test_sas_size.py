"""The exploratory ``sas_size`` arm: records match pixels (shrink, enlarge, not applied), the drawn area fraction is
log-uniform over ``area_range``, parameters are checked, the arm reaches policies, run specs and plans, and its
documented default is the measured one."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

from sas_kit.augment import make_policy, mask_box, resample_pair
from sas_kit.augment.sas_size import SASSizeParams, area_table, measure_area_range
from tests.test_augment import boundary_band, make_pair, outside

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sas_parameters.md"
SIZE_ONLY = dict(p_size=1.0, p_noise=0.0)


def aligned(policy, image, mask, seed):
    """The policy on the image and on the mask drawn as an image: the same draw, so the thresholded mask-image must
    differ from the output mask only along its edge (a band one output pixel wide, or one enlarged source pixel
    wide when enlarging: bilinear upsampling rounds the mask's corners)."""
    out, out_mask, rec = policy(image, mask, seed)
    drawn, drawn_mask, rec2 = policy(np.where(mask, 255, 0).astype(np.uint8), mask, seed)
    assert rec["size"] == rec2["size"] and np.array_equal(out_mask, drawn_mask)
    width = math.ceil(rec["size"]["factor"]) if rec["size"]["mode"] == "enlarge" else 1
    square = np.ones((3, 3), bool)
    band = (boundary_band(drawn_mask) if width == 1 else ndimage.binary_dilation(drawn_mask, square, width)
            & ~ndimage.binary_erosion(drawn_mask, square, width))
    assert not (((drawn > 127) ^ drawn_mask) & ~band).any()
    return out, out_mask, rec


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("crop", [0.0, 1.0])
def test_shrink_record_matches_pixels(seed, crop):
    image, mask = make_pair(120, seed, area=0.3)
    policy = make_policy("sas_size", area_range=(0.01, 0.1), roi_crop_prob=crop, fill=37, **SIZE_ONLY)
    out, out_mask, rec = aligned(policy, image, mask, seed)
    s = rec["size"]
    assert s["applied"] and s["mode"] == "shrink" and 0.01 <= s["drawn_fraction"] <= 0.1
    assert s["source"] == ("roi_crop" if crop else "image") and s["source_fraction"] == mask.mean()
    assert s["achieved_fraction"] == out_mask.sum() / out_mask.size == rec["mask_area"] / mask.size
    assert s["factor"] == pytest.approx(math.sqrt(s["drawn_fraction"] / s["source_fraction"]))
    # the paste box holds the source box resampled to its size; everything else is the fill
    px0, py0, px1, py1 = s["paste_box"]
    sx0, sy0, sx1, sy1 = s["source_box"]
    thumb, thumb_mask = resample_pair(image, mask, s["source_box"], (px1 - px0, py1 - py0))
    assert np.array_equal(out[py0:py1, px0:px1], thumb) and np.array_equal(out_mask[py0:py1, px0:px1], thumb_mask)
    off = outside(s["paste_box"], mask.shape)
    assert (out[off] == 37).all() and not out_mask[off].any()
    fx, fy = s["factor_xy"]
    assert fx == (px1 - px0) / (sx1 - sx0) and abs(fx - s["factor"]) <= 0.5 / (sx1 - sx0) + 1e-9
    # achieved ≈ drawn: the thumbnail's rounding and the mask's edge are the only differences
    x0, y0, x1, y1 = mask_box(mask)
    edge = 2 * ((x1 - x0) * fx + (y1 - y0) * fy) + 4
    assert abs(out_mask.sum() - mask.sum() * fx * fy) <= edge
    assert abs(out_mask.sum() - s["drawn_fraction"] * mask.size) <= edge + mask.sum() * abs(fx * fy - s["factor"] ** 2)


@pytest.mark.parametrize("seed", range(6))
def test_enlarge_record_matches_pixels(seed):
    image, mask = make_pair(120, seed, area=0.004)
    H, W = mask.shape
    policy = make_policy("sas_size", area_range=(0.03, 0.2), **SIZE_ONLY)
    out, out_mask, rec = aligned(policy, image, mask, seed)
    s = rec["size"]
    assert s["applied"] and s["mode"] == "enlarge" and not s["capped"] and s["paste_box"] == [0, 0, W, H]
    assert s["achieved_fraction"] == out_mask.mean() and s["factor"] ** 2 == pytest.approx(
        s["drawn_fraction"] / s["source_fraction"])
    # the crop box: the image's aspect ratio, inside the frame, holding the whole target box
    cx0, cy0, cx1, cy1 = s["crop_box"]
    assert (cx1 - cx0) / W == pytest.approx((cy1 - cy0) / H) == pytest.approx(1 / s["factor"])
    assert -1e-9 <= cx0 and cx1 <= W + 1e-9 and -1e-9 <= cy0 and cy1 <= H + 1e-9
    bx0, by0, bx1, by1 = mask_box(mask)
    assert cx0 <= bx0 + 1e-9 and bx1 <= cx1 + 1e-9 and cy0 <= by0 + 1e-9 and by1 <= cy1 + 1e-9
    # the output is that window resized to the image size
    again, again_mask = resample_pair(image, mask, s["crop_box"], (W, H))
    assert np.array_equal(out, again) and np.array_equal(out_mask, again_mask)
    f = s["factor"]
    edge = 2 * ((bx1 - bx0) + (by1 - by0)) * f + 4
    assert abs(out_mask.sum() - s["drawn_fraction"] * mask.size) <= edge


def test_enlarge_is_capped_where_the_window_would_cut_the_target():
    image, _ = make_pair(120, 0)
    H, W = image.shape
    band = np.zeros((H, W), bool)
    band[50:56, 5:W - 5] = True  # wide and thin: the window cannot be narrower than the band
    out, out_mask, rec = make_policy("sas_size", area_range=(0.3, 0.3), **SIZE_ONLY)(image, band, 1)
    s = rec["size"]
    assert s["mode"] == "enlarge" and s["capped"] and s["achieved_fraction"] < s["drawn_fraction"]
    cx0, _, cx1, _ = s["crop_box"]
    assert cx0 <= 5 + 1e-9 and W - 5 <= cx1 + 1e-9 and (cx1 - cx0) == pytest.approx(W - 10)
    assert out_mask.sum() == pytest.approx(band.sum() * s["factor"] ** 2, rel=0.1)  # nothing cut off
    full = band.copy()
    full[50:56, :] = True  # spans the frame: nothing to enlarge
    out, out_mask, rec = make_policy("sas_size", area_range=(0.3, 0.3), **SIZE_ONLY)(image, full, 1)
    assert rec["size"]["mode"] == "not applied" and rec["size"]["reason"] == "target box spans the frame"
    assert np.array_equal(out, image) and np.array_equal(out_mask, full) and rec["size"]["drawn_fraction"] == 0.3


def test_not_applied_empty_mask_and_noise_like_sas():
    image, mask = make_pair(96, 2, area=0.05)
    out, out_mask, rec = make_policy("sas_size", p_size=0.0, p_noise=0.0)(image, mask, 0)
    assert rec["size"]["mode"] == "not applied" and rec["size"]["reason"] == "not drawn"
    assert rec["size"]["achieved_fraction"] == rec["size"]["source_fraction"] == mask.mean()
    assert np.array_equal(out, image) and np.array_equal(out_mask, mask)
    empty = np.zeros_like(mask)
    out, out_mask, rec = make_policy("sas_size", p_size=1.0, p_noise=1.0)(image, empty, 0)
    assert rec["size"]["reason"] == "empty mask" and rec["noise"] == {"applied": False, "reason": "empty mask"}
    assert np.array_equal(out, image) and not out_mask.any()
    # without the size step, sas_size is sas without its scale step: the same noise, pixel for pixel
    mine = make_policy("sas_size", p_size=0.0, p_noise=1.0)(image, mask, 5)
    theirs = make_policy("sas", p_scale=0.0, p_noise=1.0)(image, mask, 5)
    assert np.array_equal(mine[0], theirs[0]) and mine[2]["noise"] == theirs[2]["noise"] and mine[2]["noise"]["applied"]
    # after a shrink the noise stays inside the paste box: the canvas is exactly the fill
    big, big_mask = make_pair(96, 3, area=0.3)
    for seed in range(5):
        out, _, rec = make_policy("sas_size", area_range=(0.01, 0.05), p_size=1.0, p_noise=1.0)(big, big_mask, seed)
        assert rec["size"]["mode"] == "shrink" and (out[outside(rec["size"]["paste_box"], big_mask.shape)] == 0).all()


def test_drawn_fraction_is_log_uniform_over_area_range():
    image, mask = make_pair(48, 0, area=0.05)
    lo, hi = 0.002, 0.5
    policy = make_policy("sas_size", area_range=(lo, hi), **SIZE_ONLY)
    records = [policy(image, mask, seed)[2]["size"] for seed in range(1500)]
    drawn = np.array([r["drawn_fraction"] for r in records])
    assert lo <= drawn.min() and drawn.max() <= hi
    assert {r["mode"] for r in records} == {"shrink", "enlarge"}
    assert stats.kstest(np.log(drawn / lo) / np.log(hi / lo), "uniform").pvalue > 0.01
    # half the draws below the geometric middle; a draw uniform in the linear factor would put ≈ 20 % there
    assert abs((drawn < math.sqrt(lo * hi)).mean() - 0.5) < 0.05


@pytest.mark.parametrize("bad, message", [
    ({"area_range": (0.2, 0.1)}, "SASSizeParams: expected area_range"),
    ({"area_range": (0.0, 0.1)}, "SASSizeParams: expected area_range"),
    ({"area_range": (0.1, 1.5)}, "SASSizeParams: expected area_range"),
    ({"area_range": (0.1,)}, "SASSizeParams: expected area_range"),
    ({"p_size": 1.5}, "SASSizeParams: expected p_size"),
    ({"noise_strength": (0.3, 0.1)}, "SASSizeParams: expected noise_strength"),
    ({"roi_mode": "circle"}, "SASSizeParams: expected roi_mode"),
    ({"fill": 300}, "SASSizeParams: expected fill"),
])
def test_bad_parameters_raise_clearly(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SASSizeParams(**bad)
    with pytest.raises(ValueError, match=re.escape(message)):
        make_policy("sas_size", **bad)


def test_policy_and_params():
    with pytest.raises(ValueError, match="unknown parameter.*scale_range"):
        make_policy("sas_size", scale_range=(0.1, 1.0))  # SAS's factor is not a sas_size parameter
    p = SASSizeParams(area_range=[0.01, 0.2], noise_models=["gaussian"])  # lists from JSON become tuples
    assert p.area_range == (0.01, 0.2) and p.noise_models == ("gaussian",) and p.sas().noise_models == ("gaussian",)
    policy = make_policy("sas_size", seed=0)
    assert policy.params["area_range"] == list(SASSizeParams().area_range)
    image, mask = make_pair(64, 1, area=0.05)
    _, _, rec = policy(image, mask)
    assert rec["policy"] == "sas_size" and json.loads(json.dumps(rec)) == rec and set(rec) >= {"size", "noise"}


def test_run_spec_and_plan_accept_the_arm(tmp_data_root, monkeypatch):
    from sas_kit.experiment.protocol import HEADLINE_ARMS, make_plan
    from sas_kit.experiment.run import RunSpec

    spec = RunSpec.build(arm="sas_size", params={"area_range": [0.01, 0.2]}, data_key="k" * 32, device="cpu",
                         precision="fp32")
    assert isinstance(spec.params, SASSizeParams) and spec.name.startswith("sas_size_seed0-")
    assert RunSpec.from_dict(json.loads(spec.to_json())) == spec
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    plan = make_plan("quick", data="phantom", arms=("none", "sas_size"), seeds=(0,))
    arm = [t.spec for t in plan.tasks if t.spec.arm == "sas_size"]
    assert len(arm) == 1 and arm[0].params == SASSizeParams() and "sas_size" not in HEADLINE_ARMS


def test_docs_give_the_default_area_range():
    section = DOCS.read_text().split("## `sas_size`")[1]
    row = re.search(r"^\| `area_range` \| \(([\d.]+), ([\d.]+)\) \|", section, re.M)
    assert row and (float(row[1]), float(row[2])) == SASSizeParams().area_range
    pooled = re.search(r"^\| \*\*pooled\*\* \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", section, re.M)
    assert tuple(float(f"{float(v):.2g}") for v in pooled.groups()[1:]) == SASSizeParams().area_range
    per_dataset = re.findall(r"^\| (\w+) \| (\d+) \| [\d.]+ \| [\d.]+ \|$", section, re.M)
    assert sum(int(n) for _, n in per_dataset) == int(pooled[1])


@pytest.mark.realdata
@pytest.mark.slow
def test_the_default_area_range_is_the_measured_one(mirror):
    from sas_kit.experiment.protocol import EXTERNALS

    measured = measure_area_range(EXTERNALS)
    assert tuple(measured["rounded"]) == SASSizeParams().area_range
    assert area_table(measured) in DOCS.read_text()
