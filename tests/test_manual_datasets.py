"""Placed-by-hand datasets in their published layouts: DDTI (XML, cropped+GIF, image/mask), TN3K, Kaggle, Kidney."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sas_kit import cli
from sas_kit.data import adapter_io, datasets
from tests.conftest import ellipse_mask, save


def _rows(prepared) -> dict[str, dict]:
    return {r["id"]: r for s in datasets.SPLITS for r in prepared.splits[s]}


def _assert_group_disjoint(prepared) -> None:
    owner = {}
    for s in datasets.SPLITS:
        for g in prepared.splits[s]["group"]:
            assert owner.setdefault(g, s) == s, f"group {g} spans two splits"


def _xml(number: int, marks: dict[int, list[list[tuple[int, int]]]]) -> str:
    body = ""
    for k, polys in marks.items():
        svg = [{"points": [{"x": x, "y": y} for x, y in poly], "annotation": {}, "regionType": "freehand"}
               for poly in polys]
        body += f"<mark><image>{k}</image><svg>{json.dumps(svg)}</svg></mark>"
    return (f"<?xml version='1.0' encoding='utf-8'?><case><number>{number}</number><age>50</age><sex>F</sex>"
            f"<composition>solid</composition><tirads>4a</tirads><reportbacaf/>{body}</case>")


@pytest.fixture
def ddti_original(tmp_path) -> Path:
    """Original DDTI: <case>.xml + <case>_<k>.jpg; image 1 of case 7 holds two nodules."""
    root = tmp_path / "mirror" / "ddti"
    root.mkdir(parents=True)
    square_a = [(10, 10), (29, 10), (29, 29), (10, 29)]
    square_b = [(50, 30), (69, 30), (69, 49), (50, 49)]
    (root / "7.xml").write_text(_xml(7, {1: [square_a, square_b], 2: [square_b]}))
    empty_mark = "<mark><image>2</image><svg></svg></mark></case>"  # a mark without an outline
    (root / "8.xml").write_text(_xml(8, {1: [square_a]}).replace("</case>", empty_mark))
    rng = np.random.default_rng(0)
    for stem in ("7_1", "7_2", "8_1", "8_2"):
        save(root / f"{stem}.jpg", rng.integers(0, 255, (60, 80), dtype=np.uint8))
    return root.parent


def test_ddti_original_xml_polygons_are_rasterised_per_image_and_grouped_by_case(tmp_data_root, ddti_original):
    prepared = datasets.prepare("ddti", mirror=ddti_original)
    rows = _rows(prepared)
    assert set(rows) == {"7_1", "7_2", "8_1"}
    assert [(p, r) for p, r in prepared.skipped] == [("8_2.jpg", "no nodule outline for image 2 in 8.xml")]
    _, mask = datasets.to_arrays(rows["7_1"])
    assert mask.sum() == 2 * 20 * 20  # both nodules of the image, outline pixels included
    assert mask[20, 20] and mask[40, 60] and not mask[40, 20]
    assert rows["7_1"]["group"] == rows["7_2"]["group"] == "case_7" and rows["8_1"]["group"] == "case_8"
    _assert_group_disjoint(prepared)


@pytest.fixture
def ddti_cropped(tmp_path) -> Path:
    """cropped/<case>_<k>[(<j>)].png + mask/<same>.gif + diagnosis.csv; one crop has no mask."""
    root = tmp_path / "mirror" / "ddti"
    rng = np.random.default_rng(1)
    for i, stem in enumerate(("10_1(1)", "10_1(2)", "11_1", "12_2")):
        save(root / "cropped" / f"{stem}.png", rng.integers(0, 255, (50, 50), dtype=np.uint8))
        save(root / "mask" / f"{stem}.gif", ellipse_mask(50, 50, 25, 25, 5 + i))
    save(root / "cropped" / "13_1.png", np.zeros((50, 50), np.uint8))
    (root / "diagnosis.csv").write_text("10_1(1),4a\n10_1(2),4a\n11_1(1),2\n12_2(1),5\n")
    return root.parent


def test_ddti_cropped_layout_reads_gif_masks_and_groups_by_case(tmp_data_root, ddti_cropped):
    prepared = datasets.prepare("ddti", mirror=ddti_cropped)
    rows = _rows(prepared)
    assert set(rows) == {"10_1(1)", "10_1(2)", "11_1", "12_2"}
    assert prepared.skipped == [("cropped/13_1.png", "no mask of the same name in the sibling mask/ folder")]
    assert rows["10_1(1)"]["group"] == rows["10_1(2)"]["group"] == "case_10"
    _, mask = datasets.to_arrays(rows["11_1"])
    assert mask.sum() == ellipse_mask(50, 50, 25, 25, 7).sum()
    _assert_group_disjoint(prepared)


def test_ddti_image_mask_png_copy_is_per_image_and_only_one_layout_is_read(tmp_data_root, tmp_path):
    root = tmp_path / "m" / "ddti"
    for i in range(1, 5):
        save(root / "image" / f"{i}.PNG", np.full((40, 40), 100, np.uint8))
        save(root / "mask" / f"{i}.PNG", (ellipse_mask(40, 40, 20, 20, 4 + i) * 255).astype(np.uint8))
    prepared = datasets.prepare("ddti", mirror=root.parent)
    rows = _rows(prepared)
    assert set(rows) == {"1", "2", "3", "4"} and {r["group"] for r in rows.values()} == {"1", "2", "3", "4"}
    assert not prepared.skipped
    save(root / "cropped" / "5_1.png", np.zeros((40, 40), np.uint8))  # a second layout: ignored, reported
    again = datasets.prepare("ddti", mirror=root.parent)
    assert not again.cached and sum(again.counts().values()) == 4 and len(again.skipped) == 1
    assert again.skipped[0][0] == "cropped/5_1.png" and "the image/mask layout is read" in again.skipped[0][1]


def test_tn3k_keeps_the_official_test_split_uses_the_fold_file_and_thresholds_jpeg_masks(tmp_data_root, tmp_path):
    root = tmp_path / "m" / "tn3k"
    truth = {}
    for part, n in (("trainval", 6), ("test", 2)):
        for i in range(n):
            save(root / f"{part}-image" / f"{i:04d}.jpg", np.full((64, 64), 90, np.uint8))
            m = ellipse_mask(64, 64, 32, 32, 8 + i)
            truth[f"{part}_{i:04d}"] = m.sum()
            save(root / f"{part}-mask" / f"{i:04d}.jpg", (m * 255).astype(np.uint8))
    (root / "tn3k-trainval-fold0.json").write_text(json.dumps({"train": [0, 1, 2, 3], "val": [4, 5]}))
    prepared = datasets.prepare("tn3k", mirror=root.parent)
    assert prepared.counts() == {"train": 4, "val": 2, "test": 2}
    assert sorted(prepared.splits["test"]["id"]) == ["test_0000", "test_0001"]
    assert sorted(prepared.splits["val"]["id"]) == ["trainval_0004", "trainval_0005"]
    for key, row in _rows(prepared).items():
        _, mask = datasets.to_arrays(row)
        assert abs(int(mask.sum()) - int(truth[key])) <= 0.05 * truth[key], key  # "> 0" would add JPEG ringing
    noisy = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(root / "test-mask" / "0000.jpg").convert("L"))
    assert (noisy > 0).sum() > (noisy > 127).sum()  # the fixture really has compression noise


@pytest.fixture
def kaggle_nerve(tmp_path) -> Path:
    """train/<subject>_<n>.tif + _mask.tif (some empty) and a test/ folder without masks."""
    root = tmp_path / "m" / "kaggle_nerve"
    for subject, n in ((1, 3), (2, 2), (3, 2), (4, 1)):
        for k in range(1, n + 1):
            save(root / "train" / f"{subject}_{k}.tif", np.full((42, 58), 60 + k, np.uint8))
            m = ellipse_mask(42, 58, 20, 30, 6) if k % 2 else np.zeros((42, 58), bool)
            save(root / "train" / f"{subject}_{k}_mask.tif", (m * 255).astype(np.uint8))
    for k in (1, 2):
        save(root / "test" / f"{k}.tif", np.full((42, 58), 60, np.uint8))
    (root / "train_masks.csv").write_text("subject,img,pixels\n")
    return root.parent


def test_kaggle_nerve_tiff_pairs_group_by_subject_keep_empty_masks_and_report_test(tmp_data_root, kaggle_nerve):
    prepared = datasets.prepare("kaggle_nerve", mirror=kaggle_nerve)
    rows = _rows(prepared)
    assert len(rows) == 8 and prepared.empty == 3  # 1_2, 2_2, 3_2 have no nerve
    assert {r["group"] for r in rows.values()} == {"subject_1", "subject_2", "subject_3", "subject_4"}
    assert sorted(prepared.skipped) == [("test/1.tif", "test image: the competition has no masks for test/"),
                                        ("test/2.tif", "test image: the competition has no masks for test/")]
    _, mask = datasets.to_arrays(rows["1_1"])
    assert mask.sum() == ellipse_mask(42, 58, 20, 30, 6).sum()
    _assert_group_disjoint(prepared)


def test_open_kidney_rasterises_capsule_polygons_from_the_via_csv(tmp_data_root, tmp_path):
    root = tmp_path / "m" / "open_kidney"
    names = ["1_IM-0001-0059_anon.png", "2_IM-0383-0001_anon.png", "3_IM-0359-0014_anon.png", "4_IM-0002-0001_anon.png"]
    for name in names:
        save(root / "images" / name, np.full((60, 80), 70, np.uint8))
    (root / "labels").mkdir()
    with (root / "labels" / "reviewed_labels_1.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "file_size", "file_attributes", "region_count", "region_id",
                    "region_shape_attributes", "region_attributes"])
        for name in names[:3]:
            capsule = {"name": "polygon", "all_points_x": [10, 49, 49, 10], "all_points_y": [10, 10, 39, 39]}
            cortex = {"name": "polygon", "all_points_x": [60, 70, 70], "all_points_y": [40, 40, 50]}
            if name != names[2]:
                w.writerow([name, 1, "{}", 2, 0, json.dumps(capsule), json.dumps({"Anatomy": "Capsule"})])
            w.writerow([name, 1, "{}", 2, 1, json.dumps(cortex), json.dumps({"Anatomy": "Cortex"})])
    prepared = datasets.prepare("open_kidney", mirror=root.parent)
    rows = _rows(prepared)
    assert set(rows) == {Path(n).stem for n in names[:2]}
    assert dict(prepared.skipped) == {f"images/{names[2]}": "no Capsule polygon in reviewed_labels_1.csv",
                                      f"images/{names[3]}": "not listed in reviewed_labels_1.csv (unlabelled image)"}
    _, mask = datasets.to_arrays(rows[Path(names[0]).stem])
    assert mask.sum() == 40 * 30 and not mask[45, 65]  # capsule only, the cortex polygon is not the target


def test_rasterise_unions_polygons_and_rejects_degenerate_ones():
    two = adapter_io.rasterise([[(0, 0), (4, 0), (4, 4), (0, 4)], [(10, 10), (14, 10), (14, 14), (10, 14)]], (20, 20))
    assert two.sum() == 50
    with pytest.raises(adapter_io.BadItem, match="3 points"):
        adapter_io.rasterise([[(1, 1), (2, 2)]], (5, 5))


def test_all_skipped_folder_raises_the_kits_error_with_counts_reasons_and_layout(tmp_data_root, tmp_path):
    root = tmp_path / "m" / "ddti"
    for i in range(5):
        save(root / "cropped" / f"{i}_1.png", np.zeros((20, 20), np.uint8))
    (root / "notes.txt").write_text("masks were never downloaded\n")
    with pytest.raises(adapter_io.UnusableData) as info:
        datasets.prepare("ddti", mirror=root.parent)
    text = str(info.value)
    assert "no usable image/mask pair" in text and "seen: 6 files (5 image files); skipped: 5" in text
    assert "5 skipped: no mask of the same name" in text and "cropped/0_1.png" in text
    assert "expected layout:" in text and "<case>.xml" in text and not datasets.is_prepared("ddti")


def test_folder_with_no_matching_names_says_so(tmp_data_root, tmp_path):
    root = tmp_path / "m" / "kaggle_nerve"
    root.mkdir(parents=True)
    (root / "README.txt").write_text("wrong zip\n")
    with pytest.raises(adapter_io.UnusableData, match="no file name matched the expected layout"):
        datasets.prepare("kaggle_nerve", mirror=root.parent)


def test_cli_prepare_of_an_unusable_folder_prints_the_message_and_exits_1_without_traceback(tmp_path):
    root = tmp_path / "m" / "ddti"
    for i in range(3):
        save(root / "cropped" / f"{i}_1.png", np.zeros((20, 20), np.uint8))
        save(root / "mask" / f"{i}_1.gif", np.zeros((10, 10), np.uint8))  # wrong size: skipped with the reason
    env = {**__import__("os").environ, "SAS_KIT_DATA_DIR": str(tmp_path / "data")}
    env.pop("SAS_KIT_MIRROR", None)
    done = subprocess.run([sys.executable, "-m", "sas_kit", "data", "prepare", "ddti", "--mirror", str(root.parent)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1, done.stderr
    assert "ddti: FAILED" in done.stderr and "seen: 6 files (6 image files); skipped: 3" in done.stderr
    assert "1 skipped: mask 0_1.gif is 10x10 but the image is 20x20 (e.g. cropped/0_1.png)" in done.stderr
    assert "expected layout" in done.stderr and "Traceback" not in done.stderr + done.stdout


def test_cli_prepare_places_manual_dataset_and_summarises_skips(tmp_data_root, kaggle_nerve, capsys):
    assert cli.main(["data", "prepare", "kaggle_nerve", "--mirror", str(kaggle_nerve)]) == 0
    out = capsys.readouterr().out
    assert "kaggle_nerve: prepared" in out and "skipped: 2" in out
    assert "2 skipped: test image: the competition has no masks for test/ (e.g. test/1.tif, test/2.tif)" in out


def test_cli_prepare_reads_a_folder_placed_in_raw(tmp_data_root, capsys):
    root = tmp_data_root / "raw" / "tn3k" / "Thyroid Dataset" / "tn3k"  # an extra zip folder level is fine
    for part, n in (("trainval", 5), ("test", 2)):
        for i in range(n):
            save(root / f"{part}-image" / f"{i:04d}.jpg", np.full((32, 32), 90, np.uint8))
            save(root / f"{part}-mask" / f"{i:04d}.jpg", (ellipse_mask(32, 32, 16, 16, 6) * 255).astype(np.uint8))
    assert cli.main(["data", "prepare", "tn3k"]) == 0
    out = capsys.readouterr().out
    assert "tn3k: prepared" in out and "test 2" in out and "skipped: 0" in out
    assert f"from {tmp_data_root / 'raw' / 'tn3k'}" in out
