"""Simulated clicker (negative clicks in false positives) and the NoC option of evaluate(), on a fake decoder
whose masks after each click are scripted, so the clicks and NoC are known; one small check on LiteMedSAM."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from sas_kit.experiment import evaluate as ev
from sas_kit.experiment.metrics import clicks_to_reach
from sas_kit.models import prompts, registry, segment

H = W = 64
FAKE_SAM = SimpleNamespace(device="cpu")  # the fake decoder never touches the model


def _rect(y0, y1, x0, x1, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _deepest_by_edt(region):
    """Reference for the expected click: argmax of the (border-padded) Euclidean distance transform, as (x, y)."""
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return int(x), int(y)


# --------------------------------------------------------------------------- the clicker


def test_deepest_point_on_the_cropped_box_equals_the_whole_image_transform():
    """prompts._deepest runs the distance transform on the region's padded bounding box only: on random regions
    (blobs, several parts, thin lines, regions touching the image border, ties) it must pick the same pixel as
    the transform of the whole image."""
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(300):
        h, w = rng.integers(5, 90, size=2)
        noise = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma=rng.uniform(0.5, 6))
        region = noise > np.quantile(noise, rng.uniform(0.6, 0.99))
        if trial % 5 == 0:
            region[:, : rng.integers(1, w)] |= rng.random() < 0.5  # a region along the border
        if trial % 7 == 0:
            region = np.zeros((h, w), bool)
            region[rng.integers(0, h), :] = True  # a one-pixel line: every pixel ties
        if not region.any():
            continue
        (x, y), depth = prompts._deepest(region)
        assert (x, y) == _deepest_by_edt(region), trial
        assert depth == ndimage.distance_transform_edt(np.pad(region, 1))[1 + y, 1 + x], trial
        checked += 1
    assert checked > 250
    assert prompts._deepest(np.zeros((4, 4), bool)) is None



def test_negative_click_at_the_centre_of_a_larger_false_positive():
    gt = _rect(10, 30, 10, 30)  # 400 px
    blob = _rect(40, 59, 35, 54)  # 19 x 19 = 361 spurious px, disjoint from gt, centre (44, 49)
    missed = _rect(10, 14, 10, 30)  # 80 missed px
    pred = (gt & ~missed) | blob
    (x, y), label = prompts.next_click(gt, pred)
    assert label == 0 and blob[y, x] and not gt[y, x]
    assert (x, y) == _deepest_by_edt(blob) == (44, 49)
    # the same prediction without the blob: the miss is the only error, a positive click at its centre
    (x, y), label = prompts.next_click(gt, pred & ~blob)
    assert label == 1 and (x, y) == _deepest_by_edt(missed)


def test_positive_click_when_the_missed_region_is_larger():
    gt = _rect(5, 45, 5, 45)  # 1600 px
    missed = _rect(5, 45, 30, 45)  # 600 missed px
    blob = _rect(50, 60, 50, 60)  # 100 spurious px
    pred = (gt & ~missed) | blob
    (x, y), label = prompts.next_click(gt, pred)
    assert label == 1 and missed[y, x] and not pred[y, x]
    assert (x, y) == _deepest_by_edt(missed)


def test_deeper_error_wins_not_larger():
    """RITM's rule: the deeper distance-transform maximum wins, not the region with more pixels. A 2-pixel-thin
    ring of 224 missed pixels (depth 1) loses to a 10 x 10 false positive (depth 5); a tie of depths goes to the
    negative click."""
    gt = _rect(10, 40, 10, 40)
    sliver = gt & ~_rect(12, 38, 12, 38)  # a 2-px-wide ring along gt's border: 900 - 676 = 224 missed px
    blob = _rect(48, 58, 48, 58)  # 100 px, 10 x 10
    pred = (gt & ~sliver) | blob
    assert sliver.sum() > blob.sum()
    (x, y), label = prompts.next_click(gt, pred)
    assert label == 0 and blob[y, x] and (x, y) == _deepest_by_edt(blob)
    # equal depths (a 10 x 5 miss and a 5 x 10 false positive, both depth 3): the negative click
    gt2 = _rect(0, 10, 0, 10)
    spurious = _rect(20, 25, 20, 30)
    (x, y), label = prompts.next_click(gt2, (gt2 & ~_rect(0, 10, 0, 5)) | spurious)
    assert label == 0 and spurious[y, x]


def test_a_pixel_is_never_clicked_twice():
    """RITM's "not clicked" map: a click the model ignored is not given again at the same pixel; the next one goes
    to the deepest unclicked error pixel, and when every error pixel has been clicked the session has no click."""
    gt = _rect(10, 31, 10, 31)  # 21 x 21, centre (20, 20)
    first = prompts.first_click(gt)
    assert first == (20, 20)
    nothing = np.zeros_like(gt)
    assert prompts.next_click(gt, nothing) == (first, 1)  # without the session's clicks: the same pixel
    (x, y), label = prompts.next_click(gt, nothing, clicked=[first])
    assert label == 1 and gt[y, x] and (x, y) != first
    depth = ndimage.distance_transform_edt(np.pad(gt, 1))[1:-1, 1:-1]
    assert depth[y, x] == depth[20, 20] - 1  # the next-deepest ring of the square (first in raster order)
    one = _rect(5, 6, 5, 6)  # a one-pixel miss, already clicked: nothing left
    assert prompts.next_click(one, np.zeros_like(one), clicked=[(5, 5)]) is None
    # a clicked pixel outside the errors changes nothing
    assert prompts.next_click(gt, nothing, clicked=[(0, 0)]) == (first, 1)


def test_a_session_never_repeats_a_click(fake):
    """A model that ignores every click: each round's click is a new pixel of the (unchanged) miss."""
    gt = _rect(10, 30, 10, 30)
    fake(lambda points, labels, prev: np.zeros_like(gt))
    s = segment.click_sessions(FAKE_SAM, "litemedsam", [torch.zeros(1, 1)], [{"scale_xy": (1.0, 1.0)}], [gt],
                               [np.zeros_like(gt)], [6])[0]
    assert len(s.points) == 6 and len(set(map(tuple, s.points))) == 6 and s.labels == [1] * 6
    assert all(gt[y, x] for x, y in s.points)


# --------------------------------------------------------------------------- a scripted decoder


class FakeDecoder:
    """Stand-in for registry.decode_batch (with registry.postprocess the identity): each row's mask is
    ``script(points, labels, mask_input)`` at the image size; logits are +5 inside, -5 outside. Records calls."""

    def __init__(self, script, boxes=None):
        self.script, self.boxes, self.calls = script, boxes or {}, []

    def __call__(self, sam, embeddings, scales, boxes=None, points=None, labels=None, mask_input=None,
                 multimask=False):
        out = []
        for g in range(len(scales)):
            if points is None:  # a box prompt: the part whose tight box it is
                mask = self.boxes[tuple(np.asarray(boxes[g]).astype(int).tolist())]
                call = {"box": True}
            else:
                prev = None if mask_input is None else mask_input[g:g + 1].clone()
                call = {"points": [tuple(p) for p in np.asarray(points[g]).tolist()],
                        "labels": list(np.asarray(labels[g]).tolist()), "mask_input": prev}
                mask = self.script(np.asarray(points[g]), np.asarray(labels[g]), prev)
            out.append(torch.from_numpy(np.where(mask, 5.0, -5.0)).float()[None])
            self.calls.append({**call, "logits": out[-1][None].clone()})
        return torch.stack(out), torch.ones(len(out), 1)


@pytest.fixture
def fake(monkeypatch):
    """Install a FakeDecoder built by the test; encode and postprocess become trivial."""

    def install(script, parts=()):
        dec = FakeDecoder(script, {tuple(prompts.box_from_mask(p).astype(int).tolist()): p for p in parts})
        monkeypatch.setattr(registry, "decode_batch", dec)
        monkeypatch.setattr(registry, "postprocess", lambda spec, low, meta: low)
        monkeypatch.setattr(registry, "encode", lambda sam, spec, image, precision="fp32":
                            (torch.zeros(1, 1), {"scale_xy": (1.0, 1.0), "original_hw": image.shape[:2]}))
        return dec

    return install


def test_session_that_over_segments_gets_a_negative_click_and_its_logits_back(fake):
    gt = _rect(10, 30, 10, 30)
    blob = _rect(38, 61, 30, 53)  # 23 x 23 spurious region, centre (41, 49)
    over = gt | blob

    def script(points, labels, prev):
        return over if len(points) == 1 else gt  # the negative click removes the blob

    dec = fake(script)
    s = segment.click_sessions(FAKE_SAM, "litemedsam", [torch.zeros(1, 1)], [{"scale_xy": (1.0, 1.0)}], [gt],
                               [np.zeros_like(gt)], [3])[0]
    assert s.labels == [1, 0] and s.points[0] == prompts.first_click(gt)
    assert s.points[1] == _deepest_by_edt(blob) == (41, 49)
    assert len(dec.calls) == 2 and dec.calls[0]["mask_input"] is None
    assert torch.equal(dec.calls[1]["mask_input"], dec.calls[0]["logits"])  # the first logits are fed back
    assert dec.calls[1]["labels"] == [1, 0]
    # the second mask is perfect: no third click, it repeats
    assert s.done and np.array_equal(s.preds[0], over) and all(np.array_equal(p, gt) for p in s.preds[1:])
    assert len(s.preds) == 3


# --------------------------------------------------------------------------- NoC through evaluate()


def _first_n(part, fraction):
    """The first round(fraction x |part|) pixels of ``part`` in raster order (IoU with the part = fraction)."""
    flat = part.ravel().copy()
    idx = np.flatnonzero(flat)
    flat[idx[int(round(fraction * idx.size)):]] = False
    return flat.reshape(part.shape)


def _scripted(schedules):
    """Per part (keyed by its first click): IoU with the part after 1, 2, ... clicks (the last one repeats)."""
    by_click = {prompts.first_click(part): (part, sched) for part, sched in schedules}

    def script(points, labels, prev):
        part, sched = by_click[tuple(int(v) for v in points[0])]
        return _first_n(part, sched[min(len(points), len(sched)) - 1])

    return script


def _data(mask):
    return [(np.zeros((*mask.shape, 3), np.uint8), mask, {"seed": 0, "index": 0})]


def _rounds(dec):
    return max(len(c["points"]) for c in dec.calls if "points" in c)


def test_noc_of_one_part_is_the_first_click_reaching_the_threshold(fake):
    gt = _rect(10, 30, 10, 30)  # 400 px
    dec = fake(_scripted([(gt, [0.5, 0.86, 0.92, 0.95])]), parts=[gt])
    df = ev.evaluate(FAKE_SAM, "litemedsam", _data(gt), ["box", "1click"], noc=(0.85, 0.90), max_clicks=10,
                     progress=False)
    assert list(df.columns[-3:]) == ["noc85", "noc90", "max_clicks"]
    assert df["noc85"].tolist() == [2, 2] and df["noc90"].tolist() == [3, 3] and (df["max_clicks"] == 10).all()
    assert df.loc[df.prompt == "1click", "iou"].item() == pytest.approx(0.5)
    np.testing.assert_allclose(df.attrs["click_iou"]["phantom-0-0"], [0.5, 0.86, 0.92])
    assert _rounds(dec) == 3  # stopped once both thresholds were reached, not at the cap
    # a 5-click prompt keeps the session going to 5 clicks; NoC is unchanged
    dec = fake(_scripted([(gt, [0.5, 0.86, 0.92, 0.95])]))
    df5 = ev.evaluate(FAKE_SAM, "litemedsam", _data(gt), ["5click"], noc=[0.85, 0.9], progress=False)
    assert _rounds(dec) == 5 and df5[["noc85", "noc90"]].values.tolist() == [[2, 3]]
    assert df5["iou"].item() == pytest.approx(0.95)


def test_a_miss_counts_as_the_cap(fake):
    gt = _rect(10, 30, 10, 30)
    dec = fake(_scripted([(gt, [0.5, 0.8, 0.88])]))  # reaches 0.85, never 0.90
    df = ev.evaluate(FAKE_SAM, "litemedsam", _data(gt), ["2click"], noc=(0.85, 0.90), max_clicks=4, progress=False)
    assert df[["noc85", "noc90", "max_clicks"]].values.tolist() == [[3, 4, 4]]
    assert _rounds(dec) == 4 and len(df.attrs["click_iou"]["phantom-0-0"]) == 4
    assert df["iou"].item() == pytest.approx(0.8)


def test_noc_of_several_parts_counts_rounds_of_the_union(fake):
    a, b = _rect(5, 25, 5, 25), _rect(35, 55, 35, 55)  # two 400-px parts
    mask = a | b
    # a is perfect after its first click (its session ends); b: 0.3, 0.75, 0.85 of its pixels
    dec = fake(_scripted([(a, [1.0]), (b, [0.3, 0.75, 0.85, 0.95])]))
    df = ev.evaluate(FAKE_SAM, "litemedsam", _data(mask), ["1click"], noc=(0.85, 0.90), progress=False)
    # union IoU per round: (400 + 120) / 800, (400 + 300) / 800, (400 + 340) / 800
    np.testing.assert_allclose(df.attrs["click_iou"]["phantom-0-0"], [0.65, 0.875, 0.925])
    assert df[["noc85", "noc90", "n_components"]].values.tolist() == [[2, 3, 2]]
    clicks = {c["points"][0]: len(c["points"]) for c in dec.calls}
    assert sorted(clicks.values()) == [1, 3]  # 4 clicks in all, but 3 rounds: NoC counts rounds


def test_noc_leaves_the_prompt_rows_unchanged(fake):
    a, b = _rect(5, 25, 5, 25), _rect(35, 55, 35, 55)
    data = _data(a | b) + [(np.zeros((H, W, 3), np.uint8), a, {"seed": 0, "index": 1})]
    script = _scripted([(a, [0.4, 0.7, 0.8, 0.82, 0.9]), (b, [0.2, 0.5, 0.6, 0.7, 0.75, 0.82, 0.99])])
    fake(script, parts=[a, b])
    plain = ev.evaluate(FAKE_SAM, "litemedsam", data, ["box", "1click", "2click", "5click"], progress=False)
    assert list(plain.columns) == ["id", "dataset", "target", "prompt", "dice", "iou", "area_fraction", "size_bin",
                                   "n_components", "model", "per_component"]
    assert "click_iou" not in plain.attrs
    fake(script, parts=[a, b])
    with_noc = ev.evaluate(FAKE_SAM, "litemedsam", data, ["box", "1click", "2click", "5click"], noc=(0.85, 0.9),
                           progress=False)
    assert with_noc[list(plain.columns)].equals(plain)
    # image 0: union IoU after round k = (a_k + b_k) / 2 = .3, .6, .7, .76, .825, .86, .945; image 1 is a alone
    np.testing.assert_allclose(with_noc.attrs["click_iou"]["phantom-0-0"], [.3, .6, .7, .76, .825, .86, .945])
    noc = with_noc.groupby("id")[["noc85", "noc90"]].agg(set)  # one value per image, on all its rows
    assert noc.loc["phantom-0-0"].tolist() == [{6}, {7}] and noc.loc["phantom-0-1"].tolist() == [{5}, {5}]
    # the k-click rows are the session's prefixes: 2click IoU of image 1 = a's second value
    assert with_noc.query("id == 'phantom-0-1' and prompt == '2click'")["iou"].item() == pytest.approx(0.7)


def test_noc_arguments_are_checked(fake):
    gt = _rect(10, 30, 10, 30)
    fake(_scripted([(gt, [0.95])]))
    df = ev.evaluate(FAKE_SAM, "litemedsam", _data(gt), ["1click"], noc=0.9, progress=False)
    assert df["noc90"].tolist() == [1] and "noc85" not in df.columns
    for bad in ((1.5,), (), (0.85, 0.85)):
        with pytest.raises(ValueError, match="noc"):
            ev.evaluate(FAKE_SAM, "litemedsam", _data(gt), ["1click"], noc=bad, progress=False)
    with pytest.raises(ValueError, match="max_clicks"):
        ev.evaluate(FAKE_SAM, "litemedsam", _data(gt), ["1click"], noc=0.9, max_clicks=0, progress=False)
    assert ev.noc_column(0.85) == "noc85" and ev.noc_column(0.9) == "noc90"


def test_clicks_to_reach():
    assert clicks_to_reach([0.5, 0.86, 0.92], 0.85, 20) == 2
    assert clicks_to_reach([0.5, 0.86, 0.92], 0.90, 20) == 3
    assert clicks_to_reach([0.5, 0.86], 0.90, 20) == 20  # RITM: a miss counts as the cap
    assert clicks_to_reach([0.1] * 5 + [0.99], 0.9, 5) == 5  # rounds past the cap do not count
    with pytest.raises(ValueError, match="max_clicks"):
        clicks_to_reach([0.9], 0.9, 0)


# --------------------------------------------------------------------------- the real model, once


def test_noc_on_litemedsam_matches_its_click_curve():
    from sas_kit.data.phantom import make_phantom

    sam = registry.load_model("litemedsam")
    data = make_phantom(1, seed=0)
    df = ev.evaluate(sam, "litemedsam", data, ["1click", "2click"], noc=(0.85, 0.90), max_clicks=3, progress=False)
    curve = df.attrs["click_iou"][df["id"].iloc[0]]
    assert 2 <= len(curve) <= 3  # runs at least to the 2-click prompt, at most to the cap
    np.testing.assert_allclose(df.sort_values("prompt")["iou"], curve[:2])  # rows are the curve's prefix
    for t, col in ((0.85, "noc85"), (0.90, "noc90")):
        assert set(df[col]) == {clicks_to_reach(curve, t, 3)}
    assert 1 <= df["noc85"].iloc[0] <= df["noc90"].iloc[0] <= 3
