"""Properties of SAS and the baselines: geometry, binary masks, ROI-only noise, seeding, records, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from sas_kit.augment import (
    NOISE_MODELS,
    POLICIES,
    SASParams,
    check_pair,
    make_policy,
    mask_box,
    resample_pair,
    roi_mask,
)
from sas_kit.augment.samples import augment_to_dir, generate

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_pair(size: int, seed: int = 0, rgb: bool = False, area: float = 0.05, empty: bool = False):
    """A speckle-like image and an elliptical mask (or an empty one)."""
    rng = np.random.default_rng(seed)
    h, w = size, size + size // 8  # not square, to catch x/y mix-ups
    image = rng.integers(20, 236, (h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(area * h * w / np.pi)
    cy, cx = rng.uniform(r + 1, h - r - 1), rng.uniform(r + 1, w - r - 1)
    mask = ((yy - cy) / r) ** 2 + ((xx - cx) / (0.8 * r)) ** 2 <= 1
    if empty:
        mask[:] = False
    if rgb:
        image = np.stack([image, image // 2, 255 - image], axis=2)
    return image, mask


def outside(box, shape) -> np.ndarray:
    sel = np.ones(shape[:2], bool)
    x0, y0, x1, y1 = box
    sel[y0:y1, x0:x1] = False
    return sel


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of the mask's edge (the whole mask if it is thin)."""
    return ndimage.binary_dilation(mask, np.ones((3, 3))) & ~ndimage.binary_erosion(mask, np.ones((3, 3)))


SCALE_ONLY = dict(p_scale=1.0, p_noise=0.0, min_target_area=0)


@FAST
@given(seed=st.integers(0, 10**6), size=st.sampled_from([48, 97, 256]), area=st.floats(0.002, 0.4),
       crop=st.booleans(), fill=st.sampled_from([0, 37]))
def test_scale_geometry_binary_aligned_and_area(seed, size, area, crop, fill):
    image, mask = make_pair(size, seed, area=area)
    binary_image = np.where(mask, 255, 0).astype(np.uint8)  # the mask drawn as an image
    policy = make_policy("sas", roi_crop_prob=float(crop), fill=fill, **SCALE_ONLY)
    out, out_mask, rec = policy(image, mask, seed)
    drawn, drawn_mask, rec2 = policy(binary_image, mask, seed)
    assert rec["scale"] == rec2["scale"] and np.array_equal(out_mask, drawn_mask)
    assert out.shape == image.shape and out.dtype == np.uint8 and out_mask.dtype == bool
    s = rec["scale"]
    lo, hi = SASParams().scale_range
    assert s["applied"] and lo - 1e-9 <= s["factor"] <= hi + 1e-9
    px0, py0, px1, py1 = s["paste_box"]
    assert 0 <= px0 < px1 <= mask.shape[1] and 0 <= py0 < py1 <= mask.shape[0]
    off = outside(s["paste_box"], mask.shape)
    assert (out[off] == fill).all() and not out_mask[off].any()
    # alignment: the thresholded transformed mask-image differs from the mask only along its edge
    mismatch = (drawn > 127) ^ drawn_mask
    assert not (mismatch & ~boundary_band(drawn_mask)).any()
    # area ≈ source area × fx × fy, within one pixel along the scaled perimeter
    fx, fy = s["factor_xy"]
    x0, y0, x1, y1 = mask_box(mask)
    perimeter = 2 * ((x1 - x0) * fx + (y1 - y0) * fy)
    assert abs(rec["mask_area"] - mask.sum() * fx * fy) <= perimeter + 4
    assert rec["mask_area"] == out_mask.sum() and rec["source_mask_area"] == mask.sum()


def test_min_target_area_keeps_small_targets():
    image, mask = make_pair(256, 1, area=0.002)
    policy = make_policy("sas", p_scale=1.0, p_noise=0.0, min_target_area=40)
    for seed in range(30):
        _, out_mask, rec = policy(image, mask, seed)
        assert rec["scale"]["factor"] ** 2 * mask.sum() >= 40 - 1e-6
        assert out_mask.sum() > 0


@pytest.mark.parametrize("mode", ["dilate", "bbox"])
@pytest.mark.parametrize("model", NOISE_MODELS)
def test_noise_only_inside_roi(model, mode):
    image, mask = make_pair(200, 3, area=0.03)
    margin = 0.3
    policy = make_policy("sas", p_scale=0.0, p_noise=1.0, noise_models=[model], noise_strength=(0.2, 0.2),
                         roi_mode=mode, roi_margin=margin)
    out, out_mask, rec = policy(image, mask, 5)
    n = rec["noise"]
    assert n["applied"] and n["model"] == model and n["strength"] == pytest.approx(0.2)
    roi, box, m = roi_mask(mask, margin, mode)
    assert box == n["roi_box"] and m == n["margin_px"] and roi.sum() == n["roi_pixels"]
    # independent construction of the ROI
    if mode == "dilate":
        expected = ndimage.binary_dilation(mask, np.ones((2 * m + 1, 2 * m + 1), bool))
    else:
        expected = ~outside(box, mask.shape)
    assert np.array_equal(roi, expected)
    assert np.array_equal(out[~roi], image[~roi])  # bit for bit outside the ROI
    assert (out[roi] != image[roi]).mean() > 0.5
    assert np.array_equal(out_mask, mask)


@pytest.mark.parametrize("model", NOISE_MODELS)
def test_noise_strength_is_relative_std(model):
    image = np.full((300, 300), 128, np.uint8)
    mask = np.ones_like(image, bool)
    policy = make_policy("sas", p_scale=0.0, p_noise=1.0, noise_models=[model], noise_strength=(0.15, 0.15))
    out, _, _ = policy(image, mask, 0)
    std = out.astype(float).std()
    expected = 0.15 * 255 if model == "gaussian" else 0.15 * 128
    assert std == pytest.approx(expected, rel=0.2)


@FAST
@given(seed=st.integers(0, 10**6), rgb=st.booleans(), area=st.floats(0.001, 0.3))
def test_sas_full_keeps_canvas_and_outside_roi(seed, rgb, area):
    image, mask = make_pair(128, seed, rgb=rgb, area=area)
    policy = make_policy("sas", p_scale=1.0, p_noise=1.0)
    out, out_mask, rec = policy(image, mask, seed)
    off = outside(rec["scale"]["paste_box"], mask.shape)
    assert (out[off] == 0).all() and not out_mask[off].any()
    # without the noise step, the same stream gives the same geometry: noise only touched the ROI
    clean, clean_mask, rec2 = make_policy("sas", p_scale=1.0, p_noise=0.0)(image, mask, seed)
    assert rec2["scale"] == rec["scale"] and np.array_equal(clean_mask, out_mask)
    roi, box, _ = roi_mask(out_mask, SASParams().roi_margin, "dilate", rec["scale"]["paste_box"])
    assert box == rec["noise"]["roi_box"]
    assert np.array_equal(out[~roi], clean[~roi])
    if rgb:  # one noise field for all channels
        assert out.shape == image.shape


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("size", [256, 1024])
@pytest.mark.parametrize("rgb", [False, True])
def test_policies_sizes_channels_seeding_json(name, size, rgb):
    image, mask = make_pair(size, 7, rgb=rgb, area=0.01)
    policy = make_policy(name, seed=0)
    a = policy(image, mask, 11)
    b = policy(image, mask, np.random.default_rng(11))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    out, out_mask, rec = a
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out_mask.shape == mask.shape and out_mask.dtype == bool
    assert json.loads(json.dumps(rec)) == rec
    assert rec["policy"] == name and rec["channels"] == (3 if rgb else 1) and rec["mask_area"] == out_mask.sum()
    assert np.array_equal(image, make_pair(size, 7, rgb=rgb, area=0.01)[0])  # input untouched


def test_seeded_policy_without_rng_repeats_and_differs_by_seed():
    image, mask = make_pair(128, 2)
    policies = [make_policy("sas", seed=s, p_scale=1.0) for s in (4, 4, 5)]
    runs = [[policy(image, mask)[2] for _ in range(3)] for policy in policies]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert runs[0][0] != runs[0][1]  # the policy's own stream advances between calls


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("rgb", [False, True])
def test_empty_mask(name, rgb):
    image, mask = make_pair(96, 1, rgb=rgb, empty=True)
    policy = make_policy(name, seed=0, **({"p_scale": 1.0, "p_noise": 1.0} if name == "sas" else {}))
    out, out_mask, rec = policy(image, mask, 0)
    assert rec["empty_mask"] and rec["source_mask_area"] == 0 and rec["mask_area"] == 0 and not out_mask.any()
    if name == "sas":
        assert rec["noise"] == {"applied": False, "reason": "empty mask"}
        assert (out[outside(rec["scale"]["paste_box"], mask.shape)] == 0).all()


def test_classic_is_torchvision_joint_and_aligned():
    image, mask = make_pair(128, 4, area=0.08)
    flip = make_policy("classic", hflip_prob=1.0, degrees=0, translate=0, scale=(1, 1), brightness=0, contrast=0)
    out, out_mask, rec = flip(image, mask, 0)
    assert rec["hflip"] and np.array_equal(out, image[:, ::-1]) and np.array_equal(out_mask, mask[:, ::-1])
    geo = make_policy("classic", brightness=0, contrast=0)
    drawn = np.where(mask, 255, 0).astype(np.uint8)
    for seed in range(5):
        d, d_mask, rec = geo(drawn, mask, seed)
        assert set(np.unique(d_mask)) <= {False, True}
        assert not (((d > 127) ^ d_mask) & ~boundary_band(d_mask)).any()


def test_stsnet_ops():
    image, mask = make_pair(160, 5, area=0.01)
    big_image, big_mask = make_pair(160, 5, area=0.2)
    out, out_mask, rec = make_policy("stsnet")(big_image, big_mask, 0)
    assert rec["op"] == "none" and not rec["small"] and np.array_equal(out, big_image)
    out, out_mask, rec = make_policy("stsnet", ops=["hflip"])(image, mask, 0)
    assert np.array_equal(out, image[:, ::-1]) and np.array_equal(out_mask, mask[:, ::-1])
    for seed in range(5):
        out, out_mask, rec = make_policy("stsnet", ops=["lesion_crop"])(image, mask, seed)
        assert rec["small"] and 1.1 <= rec["zoom"] <= 2.1
        assert out_mask.sum() == pytest.approx(mask.sum() * rec["zoom"] ** 2, rel=0.15)
        x0, y0, x1, y1 = rec["crop_box"]
        assert 0 <= x0 and x1 <= mask.shape[1] + 1e-6 and 0 <= y0 and y1 <= mask.shape[0] + 1e-6


def test_sas_moves_area_toward_small():
    pairs = [make_pair(128, s, area=a) for s, a in enumerate(np.geomspace(0.005, 0.3, 20))]
    policy = make_policy("sas", seed=0)
    ratios = [policy(im, m, i)[2]["mask_area"] / m.sum() for i, (im, m) in enumerate(pairs)]
    assert np.median(ratios) < 0.5 and max(ratios) <= 1.0 + 1e-9


def test_resample_pair_identity_box():
    image, mask = make_pair(64, 0)
    h, w = mask.shape
    out, out_mask = resample_pair(image, mask, (0, 0, w, h), (w, h))
    assert np.array_equal(out, image) and np.array_equal(out_mask, mask)


def test_bad_inputs_and_params():
    image, mask = make_pair(32, 0)
    with pytest.raises(TypeError, match="uint8"):
        check_pair(image.astype(np.float32), mask)
    with pytest.raises(ValueError, match="does not match"):
        check_pair(image, mask[:-1])
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        make_policy("mixup")
    with pytest.raises(ValueError, match="unknown parameter"):
        make_policy("sas", scale=0.5)
    with pytest.raises(ValueError, match="scale_range"):
        SASParams(scale_range=(0.5, 0.1))
    with pytest.raises(ValueError, match="noise_models"):
        SASParams(noise_models=("salt",))


def check_written(out_dir, records):
    for rec in records:
        image = np.asarray(Image.open(out_dir / f"{rec['id']}_image.png"))
        mask = np.asarray(Image.open(out_dir / f"{rec['id']}_mask.png")) > 0
        on_disk = json.loads((out_dir / f"{rec['id']}.json").read_text())
        assert on_disk == rec and mask.sum() == rec["mask_area"]
        s = rec["scale"]
        if s["applied"]:
            off = outside(s["paste_box"], mask.shape)
            assert (image[off] == 0).all() and not mask[off].any()
            fx, fy = s["factor_xy"]
            src = rec["source_mask_area"]
            assert abs(rec["mask_area"] - src * fx * fy) <= 4 * np.sqrt(src) * max(fx, fy) + 4


def test_cli_writes_triples_matching_records(tmp_data_root, tmp_path):
    from sas_kit.cli import main

    out = tmp_path / "aug"
    assert main(["augment", "--data", "phantom", "--policy", "sas", "--n", "12", "--seed", "0", "--out", str(out),
                 "--param", "p_scale=1"]) == 0
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(records) == 12 and len(list(out.glob("*_image.png"))) == 12 and len(list(out.glob("*_mask.png"))) == 12
    assert all(r["scale"]["applied"] and r["params"]["p_scale"] == 1 for r in records)
    check_written(out, records)
    assert main(["augment", "--data", "phantom", "--n", "2", "--out", str(out), "--param", "bogus=1"]) == 2


@pytest.mark.parametrize("name", POLICIES)
def test_generate_is_order_independent_and_writes(name, tmp_path):
    from sas_kit.augment.samples import write_sample
    from sas_kit.data.phantom import make_phantom

    pairs = [(f"p{i}", im, m) for i, (im, m, _) in enumerate(make_phantom(3))]
    policy = make_policy(name, seed=0)
    first = list(generate(pairs, policy, 5, seed=3))
    again = list(generate(pairs, make_policy(name, seed=99), 5, seed=3))
    assert [r for *_, r in first] == [r for *_, r in again]
    for sid, image, mask, rec in first:
        write_sample(tmp_path, sid, image, mask, rec)
    if name == "sas":
        check_written(tmp_path, [r for *_, r in first])


@pytest.mark.realdata
def test_cli_real_data(mirror, tmp_path):
    records = augment_to_dir("usgra_nerve", "sas", 6, 0, tmp_path / "nerve")
    assert len(records) == 6 and all(r["dataset"] == "usgra_nerve" for r in records)
    check_written(tmp_path / "nerve", records)
