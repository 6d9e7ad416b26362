"""Cache honesty: a prepared copy is reused only for the inputs configured now, unchanged."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sas_kit.data import datasets
from sas_kit.data.download import DataUnavailable
from tests.conftest import ellipse_mask, save


def _total(prepared) -> int:
    return sum(prepared.counts().values())


def test_changed_mirror_rebuilds_and_unchanged_is_a_cache_hit(tmp_data_root, fake_busi):
    first = datasets.prepare("busi", mirror=fake_busi)
    assert not first.cached and first.source == str((fake_busi / "busi").resolve())
    assert datasets.prepare("busi", mirror=fake_busi).cached
    info = json.loads((datasets.prepared_dir("busi") / "prepare.json").read_text())
    assert info["inputs"]["files"] == 21 and info["inputs"]["root"] == first.source
    root = fake_busi / "busi"
    save(root / "malignant" / "images" / "malignant (9).png", np.full((60, 80), 50, np.uint8))
    save(root / "malignant" / "mask" / "malignant (9)_mask.png", ellipse_mask(60, 80, 30, 40, 5))
    second = datasets.prepare("busi", mirror=fake_busi)
    assert not second.cached and _total(second) == _total(first) + 1
    # a changed mask (new content, new size) is noticed too
    save(root / "malignant" / "mask" / "malignant (9)_mask.png", np.zeros((60, 80), np.uint8))
    third = datasets.prepare("busi", mirror=fake_busi)
    assert not third.cached and third.empty == second.empty + 1


def test_two_mirrors_never_mix_and_load_follows_the_configured_one(tmp_data_root, fake_busi, tmp_path):
    other = tmp_path / "other-mirror"
    shutil.copytree(fake_busi / "busi", other / "busi")
    for name in ("benign (1).png", "benign (2).png"):
        (other / "busi" / "benign" / "images" / name).unlink()
    a = datasets.prepare("busi", mirror=fake_busi)
    b = datasets.prepare("busi", mirror=other)
    assert not b.cached and _total(b) == _total(a) - 2 and b.source != a.source
    assert len(datasets.load("busi", "train", mirror=other)) == b.counts()["train"]
    ids_a = {i for s in datasets.SPLITS for i in datasets.load("busi", s, mirror=fake_busi)["id"]}
    assert {"benign_0001", "benign_0002"} <= ids_a  # switching back rebuilt from mirror A, not B's copy
    assert datasets.prepare("busi", mirror=fake_busi).cached


def test_without_any_configured_input_the_copy_is_used_and_says_so(tmp_data_root, fake_busi, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    made = datasets.prepare("busi", mirror=fake_busi)
    shutil.rmtree(fake_busi)
    reused = datasets.prepare("busi")
    assert reused.cached and reused.counts() == made.counts()
    assert "inputs not found now" in reused.note and made.source in reused.note


def test_a_configured_mirror_without_the_dataset_does_not_return_a_copy_from_elsewhere(tmp_data_root, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    root = tmp_path / "a" / "ddti"
    for i in range(4):
        save(root / "image" / f"{i}.png", np.full((30, 30), 80, np.uint8))
        save(root / "mask" / f"{i}.png", (ellipse_mask(30, 30, 15, 15, 5) * 255).astype(np.uint8))
    datasets.prepare("ddti", mirror=root.parent)
    empty_mirror = tmp_path / "b"
    empty_mirror.mkdir()
    with pytest.raises(DataUnavailable, match="ddti"):
        datasets.load("ddti", "train", mirror=empty_mirror)


def test_new_reading_rules_rebuild(tmp_data_root, fake_busi, monkeypatch):
    datasets.prepare("busi", mirror=fake_busi)
    monkeypatch.setattr(datasets, "ADAPTER_VERSION", datasets.ADAPTER_VERSION + 1)
    assert not datasets.prepare("busi", mirror=fake_busi).cached
