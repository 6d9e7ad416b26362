"""One adapter per dataset: find image/mask files by upstream names and read them with each quirk."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from sas_kit.data import adapters_manual
from sas_kit.data.adapter_io import Item, files

_files = files


def busi(root: Path) -> tuple[list[Item], list[tuple[str, str]]]:
    """BUSI: ``<class> (N).png`` with ``<class> (N)_mask.png`` and extra ``_mask_K.png`` lesions (OR-ed)."""
    items: dict[str, Item] = {}
    masks: dict[str, list[Path]] = {}
    for p in _files(root):
        m = re.match(r"^(benign|malignant|normal) \((\d+)\)(_mask(_\d+)?)?$", p.stem)
        if not m:
            continue
        key = f"{m.group(1)}_{int(m.group(2)):04d}"
        if m.group(3):
            masks.setdefault(key, []).append(p)
        else:
            items[key] = Item(id=key, image=p, group=key)
    skipped = [(str(p[0]), "mask without image") for k, p in masks.items() if k not in items]
    for key, item in items.items():
        item.masks = sorted(masks.get(key, []))
    return list(items.values()), skipped


def bus_bra(root: Path) -> tuple[list[Item], list[tuple[str, str]]]:
    """BUS-BRA: ``bus_XXXX-s.png`` + ``mask_XXXX-s.png``; patient id from ``bus_data.csv`` (Case)."""
    cases: dict[str, str] = {}
    csvs = sorted(root.rglob("bus_data.csv"))
    if csvs:
        with csvs[0].open(newline="") as fh:
            cases = {row["ID"]: row["Case"] for row in csv.DictReader(fh)}
    images, masks = {}, {}
    for p in _files(root):
        if p.stem.startswith("bus_"):
            images[p.stem] = p
        elif p.stem.startswith("mask_"):
            masks["bus_" + p.stem[len("mask_"):]] = p
    items, skipped = [], []
    for key, path in images.items():
        if key not in cases and cases:
            skipped.append((str(path), "no row in bus_data.csv (patient unknown, cannot split leak-free)"))
            continue
        group = "case_" + cases.get(key, key.split("-")[0])
        items.append(Item(id=key, image=path, masks=[masks[key]] if key in masks else [], group=group))
    return items, skipped


def hc18(root: Path) -> tuple[list[Item], list[tuple[str, str]]]:
    """HC18: ``NNN[_K]HC.png`` with ``..._Annotation.png`` ellipse outlines (filled); group = ``NNN``."""
    images, masks = {}, {}
    for p in _files(root):
        if p.stem.endswith("_Annotation"):
            masks[p.stem[: -len("_Annotation")]] = p
        elif re.match(r"^\d{3}_(\d+)?HC$", p.stem):
            images[p.stem] = p
    items = [Item(id=k, image=p, masks=[masks[k]] if k in masks else [], group=k[:3], fill=True)
             for k, p in images.items()]
    return items, []


def carotid_cca(root: Path) -> tuple[list[Item], list[tuple[str, str]]]:
    """Carotid: ``US images/<name>.png`` + ``Expert mask images/<name>.png``; group = recording prefix."""
    images, masks = {}, {}
    for p in _files(root):
        parent = p.parent.name.lower()
        if "mask" in parent:
            masks[p.stem] = p
        elif "image" in parent:
            images[p.stem] = p
    items = [Item(id=k, image=p, masks=[masks[k]] if k in masks else [], group=k.split("_slice")[0])
             for k, p in images.items()]
    skipped = [(str(p), "mask without image") for k, p in masks.items() if k not in images]
    return items, skipped


def usgra(root: Path, label: int) -> tuple[list[Item], list[tuple[str, str]]]:
    """USGRA-seg: ``[test/]images/NNNN.png`` + ``[test/]masks/NNNN.png`` palette masks; ``label`` selects."""
    images, masks = {}, {}
    for p in _files(root):
        split = "test" if "test" in p.relative_to(root).parts else None
        key = (split, p.stem)
        (masks if p.parent.name == "masks" else images if p.parent.name == "images" else {})[key] = p
    items = [Item(id=("test_" if s else "") + stem, image=p, masks=[masks[(s, stem)]] if (s, stem) in masks else [],
                  group=("test_" if s else "") + stem, label=label, split=s) for (s, stem), p in images.items()]
    return items, []


ADAPTERS = {
    "busi": busi, "bus_bra": bus_bra, "hc18": hc18, "carotid_cca": carotid_cca,
    "usgra_nerve": lambda root: usgra(root, 1), "usgra_vessel": lambda root: usgra(root, 2),
    "tn3k": adapters_manual.tn3k, "ddti": adapters_manual.ddti, "kaggle_nerve": adapters_manual.kaggle_nerve,
    "open_kidney": adapters_manual.open_kidney,
}
