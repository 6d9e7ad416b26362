"""The dataset layer: quirks, bad input, group-disjoint splits, caching, and the real mirror."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sas_kit.data import adapter_io, adapters, datasets, sources
from sas_kit.data.download import DataUnavailable


def _all_ids(prepared):
    return {i for s in datasets.SPLITS for i in prepared.splits[s]["id"]}


def test_phantom_prepares_offline_and_second_call_is_a_cache_hit(tmp_data_root, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    first = datasets.prepare("phantom")
    assert not first.cached and sum(first.counts().values()) == datasets.PHANTOM_COUNT
    second = datasets.prepare("phantom")
    assert second.cached and second.counts() == first.counts()
    example = datasets.load("phantom", "test", limit=3)[0]
    image, mask = datasets.to_arrays(example)
    assert image.dtype == np.uint8 and mask.dtype == bool and image.shape == mask.shape
    assert set(example) >= {"image", "mask", "dataset", "target", "group", "area_fraction"}
    assert abs(example["area_fraction"] - mask.mean()) < 1e-6


def test_busi_quirks_and_bad_items(tmp_data_root, fake_busi):
    prepared = datasets.prepare("busi", mirror=fake_busi)
    ids = _all_ids(prepared)
    reasons = dict(prepared.skipped)
    # corrupt image and size mismatch are skipped, counted and explained — never silently dropped
    assert len(prepared.skipped) == 2
    assert any("corrupt" in r for r in reasons.values())
    assert any("is 40x30 but the image is 80x60" in r for r in reasons.values())
    assert len(ids) == 6 + 3 + 1 - 2
    rows = {r["id"]: r for s in datasets.SPLITS for r in prepared.splits[s]}
    # the RGBA extra lesion is OR-ed in by colour, not turned into a full-image mask by its alpha
    _, mask2 = datasets.to_arrays(rows["benign_0002"])
    assert mask2[10, 60] and mask2[30, 22] and 0.01 < mask2.mean() < 0.2
    # the empty 'normal' mask is kept and flagged
    assert rows["normal_0001"]["empty"] and prepared.empty == 1
    # 1-bit and 0/255 greyscale masks both give the same binary geometry
    _, m1 = datasets.to_arrays(rows["benign_0001"])
    _, m3 = datasets.to_arrays(rows["benign_0003"])
    assert m1.sum() == m3.sum()


def test_palette_masks_select_their_label(tmp_data_root, fake_usgra):
    nerve = datasets.prepare("usgra_nerve", mirror=fake_usgra)
    vessel = datasets.prepare("usgra_vessel", mirror=fake_usgra)
    assert nerve.counts()["test"] == vessel.counts()["test"] == 3  # the upstream test folder is kept
    n_row = nerve.splits["train"][0]
    _, n_mask = datasets.to_arrays(n_row)
    assert n_mask.sum() == 100 and n_mask[10, 10]
    empties = sum(r["empty"] for s in datasets.SPLITS for r in vessel.splits[s])
    assert empties == 3 + 1  # i % 3 == 0 has no vessel: 0,3,6 in train/val and 0 in test


def test_non_binary_and_rgb_masks_read_by_colour(tmp_path):
    from tests.conftest import save

    grey = np.zeros((10, 10), np.uint8)
    grey[2:5, 2:5] = 128
    grey[6, 6] = 1
    p = save(tmp_path / "m.png", grey)
    assert adapter_io.read_mask([p], (10, 10)).sum() == 10
    with pytest.raises(adapter_io.BadItem, match="palette"):
        adapter_io.read_mask([p], (10, 10), label=1)
    with pytest.raises(adapter_io.BadItem, match="no mask"):
        adapter_io.read_mask([], (10, 10))


def test_hc18_outlines_are_filled(tmp_path):
    from tests.conftest import ellipse_mask, save

    ring = ellipse_mask(50, 60, 25, 30, 15) & ~ellipse_mask(50, 60, 25, 30, 14)
    p = save(tmp_path / "000_HC_Annotation.png", ring.astype(np.uint8) * 255)
    filled = adapter_io.read_mask([p], (50, 60), fill=True)
    assert filled[25, 30] and filled.sum() > 5 * ring.sum()


def test_splits_are_group_disjoint_deterministic_and_respect_fixed():
    groups = [f"g{i // 3}" for i in range(90)]
    a = datasets.assign_splits(groups)
    assert a == datasets.assign_splits(groups)
    owner = {}
    for g, s in zip(groups, a):
        assert owner.setdefault(g, s) == s
    counts = {s: a.count(s) for s in datasets.SPLITS}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    fixed = [None] * 80 + ["test"] * 10
    b = datasets.assign_splits([f"x{i}" for i in range(90)], fixed)
    assert b[80:] == ["test"] * 10 and "test" not in b[:80]
    assert len(set(datasets.assign_splits(["a", "b", "c"]))) == 3  # tiny sets still fill all splits


def test_missing_dataset_says_what_to_do(tmp_data_root, monkeypatch, tmp_path):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    with pytest.raises(DataUnavailable) as info:
        datasets.prepare("bus_bra", mirror=tmp_path / "nothing-here")
    text = str(info.value)
    assert "zenodo" in text and "SAS_KIT_MIRROR" in text and str(tmp_data_root / "raw" / "bus_bra") in text


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="busi"):
        sources.get("nope")


def test_registry_records_are_complete():
    real = [sources.SOURCES[n] for n in sources.REAL_TARGETS]
    assert len(real) >= 6
    for src in sources.SOURCES.values():
        assert src.licence and src.citation and src.source and src.split_rule, src.name
        assert src.adapter in adapters.ADAPTERS or src.adapter == "phantom"
    for name in ("tn3k", "ddti", "kaggle_nerve", "open_kidney"):  # placed by hand: one adapter per published layout
        src = sources.SOURCES[name]
        assert src.adapter == name and src.manual and src.layout, name


@pytest.mark.realdata
@pytest.mark.parametrize("name", sources.REAL_TARGETS)
def test_real_datasets_match_their_source_counts(mirror, name):
    prepared = datasets.prepare(name)
    src = sources.get(name)
    total = sum(prepared.counts().values())
    assert total + len(prepared.skipped) == src.expected["mirror"]
    assert not prepared.skipped
    groups = [set(prepared.splits[s]["group"]) for s in datasets.SPLITS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]), "group leak"
    fractions = np.array([f for s in datasets.SPLITS for f in prepared.splits[s]["area_fraction"]])
    assert fractions.max() < 0.6, "a mask covers most of the image: alpha or outline read wrongly"
    info = json.loads((datasets.prepared_dir(name) / "prepare.json").read_text())
    assert info["counts"] == prepared.counts()
