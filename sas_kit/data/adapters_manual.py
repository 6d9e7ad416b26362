"""Adapters for datasets a user places by hand: TN3K, DDTI (original and derived layouts), Kaggle nerve, Open Kidney."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from xml.etree import ElementTree

from sas_kit.data.adapter_io import Item, Polygon, files

Result = tuple[list[Item], list[tuple[str, str]]]
MASK_DIRS = {"mask", "masks"}


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _tn3k_fold(root: Path, skipped: list[tuple[str, str]]) -> dict[int, str]:
    """Image index -> "train"/"val" from the first ``tn3k-trainval-fold*.json`` (fold 0), or {} if none."""
    folds = sorted(root.rglob("tn3k-trainval-fold*.json"))
    if not folds:
        return {}
    try:
        data = json.loads(folds[0].read_text())
        return {int(i): split for split in ("train", "val") for i in data[split]}
    except (ValueError, KeyError, TypeError) as error:
        skipped.append((_rel(folds[0], root), f"fold file unreadable ({error}); train/val are drawn by the kit"))
        return {}


def tn3k(root: Path) -> Result:
    """TN3K: ``trainval-image/NNNN.jpg`` + ``trainval-mask/NNNN.jpg`` and ``test-image/`` + ``test-mask/``.
    The test folders are the official test split. ``tn3k-trainval-fold0.json`` (``{"train": [i, ...],
    "val": [...]}``, indices = the 4-digit file numbers), when present, pins train/val; otherwise the kit
    draws them. Masks are JPEG (read with a mid-grey threshold). No patient ids upstream: group = image."""
    images: dict[tuple[str, str], Path] = {}
    masks: dict[tuple[str, str], Path] = {}
    skipped: list[tuple[str, str]] = []
    for p in files(root):
        m = re.fullmatch(r"(trainval|test)-(image|mask)", p.parent.name.lower())
        if not m:
            skipped.append((_rel(p, root), "not in trainval-image/, trainval-mask/, test-image/ or test-mask/"))
            continue
        (images if m.group(2) == "image" else masks)[(m.group(1), p.stem)] = p
    fold = _tn3k_fold(root, skipped)
    items = []
    for (part, stem), path in sorted(images.items()):
        if (part, stem) not in masks:
            skipped.append((_rel(path, root), f"no mask of the same name in {part}-mask/"))
            continue
        split = "test" if part == "test" else fold.get(int(stem)) if stem.isdigit() else None
        items.append(Item(id=f"{part}_{stem}", image=path, masks=[masks[(part, stem)]], group=f"{part}_{stem}",
                          split=split))
    skipped += [(_rel(p, root), f"mask without an image in {part}-image/")
                for (part, stem), p in sorted(masks.items()) if (part, stem) not in images]
    return items, skipped


def _ddti_case(xml: Path) -> tuple[str, dict[str, list[Polygon]], str | None]:
    """(case number, image index -> nodule outlines, problem) from one DDTI case XML: ``<case><number>N
    </number>...<mark><image>K</image><svg>[{"points": [{"x": .., "y": ..}, ...]}, ...]</svg></mark></case>``.
    One ``svg`` may hold several nodules; several marks may name the same image."""
    try:
        node = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError as error:
        return xml.stem, {}, f"unreadable case XML {xml.name} ({error})"
    number = (node.findtext("number") or xml.stem).strip() or xml.stem
    outlines: dict[str, list[Polygon]] = {}
    problem = None
    for mark in node.iter("mark"):
        index, text = (mark.findtext("image") or "").strip(), (mark.findtext("svg") or "").strip()
        if not index or not text:
            continue
        try:
            shapes = json.loads(text)
            polys = [[(float(pt["x"]), float(pt["y"])) for pt in shape["points"]] for shape in shapes]
        except (ValueError, KeyError, TypeError) as error:
            problem = f"outline in {xml.name} is not a JSON point list ({error})"
            continue
        outlines.setdefault(index, []).extend(polys)
    return number, outlines, problem


def _ddti_original(root: Path, images: list[Path], skipped: list[tuple[str, str]]) -> list[Item]:
    cases = {(x.parent, x.stem): _ddti_case(x) for x in sorted(root.rglob("*.xml")) if x.is_file()}
    items = []
    for p in images:
        m = re.fullmatch(r"(\d+)_(\d+)", p.stem)
        case = cases.get((p.parent, m.group(1))) if m else None
        if case is None:
            skipped.append((_rel(p, root), "no <case>.xml next to this image (expected <case>_<k>.jpg + <case>.xml)"))
            continue
        number, outlines, problem = case
        if not outlines.get(m.group(2)):
            skipped.append((_rel(p, root), problem or f"no nodule outline for image {m.group(2)} in {m.group(1)}.xml"))
            continue
        items.append(Item(id=p.stem, image=p, masks=[p.parent / f"{m.group(1)}.xml"], group=f"case_{number}",
                          polygons=outlines[m.group(2)]))
    return items


def _ddti_folders(root: Path, images: list[Path], masks: dict, per_case: bool,
                  skipped: list[tuple[str, str]]) -> list[Item]:
    items = []
    for p in images:
        mask = masks.get((p.parent.parent, p.stem))
        if mask is None:
            skipped.append((_rel(p, root), "no mask of the same name in the sibling mask/ folder"))
            continue
        case = re.match(r"(\d+)_\d+", p.stem) if per_case else None
        items.append(Item(id=p.stem, image=p, masks=[mask], group=f"case_{case.group(1)}" if case else p.stem))
    return items


def ddti(root: Path) -> Result:
    """DDTI in one of three layouts; the one with most images is read (ties: this order), the others' files are
    reported as skipped, so no nodule counts twice:
    1. original (CIM@LAB): ``<case>.xml`` + ``<case>_<k>.jpg``; nodule outlines are rasterised; group = case.
    2. ``cropped/<case>_<k>[(<j>)].png`` + ``mask/<same>.gif`` (+ ``diagnosis.csv``, TI-RADS, not needed for
       segmentation): one nodule crop per file; group = case number.
    3. ``image/N.PNG`` + ``mask/N.PNG`` (the TN-SCUI-style copy): renumbered upstream, so group = image."""
    skipped: list[tuple[str, str]] = []
    all_images = files(root)
    masks = {(p.parent.parent, p.stem): p for p in all_images if p.parent.name.lower() in MASK_DIRS}
    has_xml = any(x.is_file() for x in root.rglob("*.xml"))
    layouts = {
        "original": [p for p in all_images if has_xml and p.suffix.lower() in {".jpg", ".jpeg"}
                     and p.parent.name.lower() not in MASK_DIRS | {"cropped", "image", "images"}],
        "cropped": [p for p in all_images if p.parent.name.lower() == "cropped"],
        "image/mask": [p for p in all_images if p.parent.name.lower() in {"image", "images"}],
    }
    chosen = max(layouts, key=lambda name: len(layouts[name])) if any(layouts.values()) else None
    used = set(layouts.get(chosen, []))
    if chosen == "original":
        items = _ddti_original(root, layouts["original"], skipped)
    elif chosen is not None:
        items = _ddti_folders(root, layouts[chosen], masks, chosen == "cropped", skipped)
        used |= {masks.get((p.parent.parent, p.stem)) for p in layouts[chosen]}
    else:
        items = []
    for p in all_images:
        if p in used:
            continue
        other = next((name for name, found in layouts.items() if name != chosen and p in found), None)
        if other is not None:
            reason = (f"DDTI {other} layout file ignored: the {chosen} layout is read (one layout only, so no "
                      "nodule is counted twice)")
        elif p.parent.name.lower() in MASK_DIRS and chosen in {"cropped", "image/mask"}:
            reason = "mask without an image of the same name"
        else:
            reason = "name/folder does not match a DDTI layout"
        skipped.append((_rel(p, root), reason))
    return items, skipped


def kaggle_nerve(root: Path) -> Result:
    """Kaggle Ultrasound Nerve Segmentation: ``train/<subject>_<n>.tif`` + ``train/<subject>_<n>_mask.tif``
    (0/255, many masks empty: no nerve in that frame, kept and flagged). ``test/<n>.tif`` has no masks upstream
    and is reported as skipped. Group = subject (images of one patient stay in one split)."""
    images: dict[tuple[Path, str, str], Path] = {}
    masks: dict[tuple[Path, str, str], Path] = {}
    skipped: list[tuple[str, str]] = []
    for p in files(root):
        m = re.fullmatch(r"(\d+)_(\d+)(_mask)?", p.stem)
        if m:
            (masks if m.group(3) else images)[(p.parent, m.group(1), m.group(2))] = p
        elif re.fullmatch(r"\d+", p.stem):
            skipped.append((_rel(p, root), "test image: the competition has no masks for test/"))
        else:
            skipped.append((_rel(p, root), "name is not <subject>_<n>.tif or <subject>_<n>_mask.tif"))
    items = []
    for (parent, subject, n), path in sorted(images.items(), key=lambda kv: (int(kv[0][1]), int(kv[0][2]))):
        if (parent, subject, n) not in masks:
            skipped.append((_rel(path, root), f"no {subject}_{n}_mask file next to this image"))
            continue
        items.append(Item(id=f"{subject}_{n}", image=path, masks=[masks[(parent, subject, n)]],
                          group=f"subject_{subject}"))
    skipped += [(_rel(p, root), "mask without an image") for key, p in sorted(masks.items()) if key not in images]
    return items, skipped


def _kidney_labels(root: Path) -> tuple[Path | None, dict[str, list[Polygon]], set[str]]:
    """(CSV used, file name -> capsule polygons, all file names in the CSV) from a VGG Image Annotator export:
    ``reviewed_labels_1.csv`` (sonographer 1) if present, else the first CSV with ``region_shape_attributes``."""
    candidates = sorted(root.rglob("*.csv"), key=lambda p: (p.name != "reviewed_labels_1.csv", str(p)))
    for path in candidates:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "region_shape_attributes" not in (reader.fieldnames or []):
                continue
            capsules: dict[str, list[Polygon]] = {}
            listed: set[str] = set()
            for row in reader:
                listed.add(row["filename"])
                try:
                    shape = json.loads(row["region_shape_attributes"] or "{}")
                    anatomy = json.loads(row["region_attributes"] or "{}").get("Anatomy", "")
                except ValueError:
                    continue
                if anatomy.strip().lower() == "capsule" and shape.get("name") == "polygon":
                    poly = list(zip(shape["all_points_x"], shape["all_points_y"]))
                    capsules.setdefault(row["filename"], []).append(poly)
            return path, capsules, listed
    return None, {}, set()


def open_kidney(root: Path) -> Result:
    """Open Kidney Ultrasound Data Set: PNG images (``<n>_IM-....-anon.png``, released after registration)
    and the repository's VIA polygon CSV ``labels/reviewed_labels_1.csv``; the kidney capsule polygons
    (``{"Anatomy": "Capsule"}``) are rasterised. One image per patient upstream: group = image."""
    label_csv, capsules, listed = _kidney_labels(root)
    items, skipped = [], []
    for p in files(root):
        if label_csv is None:
            skipped.append((_rel(p, root), "no VIA label CSV (reviewed_labels_1.csv from the kidneyUS repository)"))
        elif p.name not in listed:
            skipped.append((_rel(p, root), f"not listed in {label_csv.name} (unlabelled image)"))
        elif p.name not in capsules:
            skipped.append((_rel(p, root), f"no Capsule polygon in {label_csv.name}"))
        else:
            items.append(Item(id=p.stem, image=p, masks=[label_csv], group=p.stem, polygons=capsules[p.name]))
    return items, skipped
