"""One adapter per dataset: find image/mask files by upstream names and read them with each quirk."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class Item:
    """One image and the file(s) that make its mask, before reading."""

    id: str
    image: Path | None
    masks: list[Path] = field(default_factory=list)
    group: str = ""
    label: int | None = None  # palette index to select (multi-class masks); None = any foreground
    fill: bool = False  # fill closed outlines (HC18 ellipses)
    split: str | None = None  # an upstream split to respect ("test"), else None
    phantom_index: int | None = None


class BadItem(ValueError):
    """An item that cannot be used; the message says why (it is counted and reported, never dropped silently)."""


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


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


def paired(root: Path) -> tuple[list[Item], list[tuple[str, str]]]:
    """Manual datasets: masks are files in a folder named ``*mask*`` or named ``<stem>_mask``; images are
    the rest; pairs match by stem within the same upstream split (``test*`` folders → test)."""
    images, masks = {}, {}
    for p in _files(root):
        rel = p.relative_to(root).parts
        split = "test" if any(part.lower().startswith("test") for part in rel[:-1]) else None
        is_mask = p.stem.endswith("_mask") or any("mask" in part.lower() for part in rel[:-1])
        stem = p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem
        (masks if is_mask else images)[(split, stem)] = p
    items = [Item(id=("test_" if s else "") + stem, image=p, masks=[masks[(s, stem)]] if (s, stem) in masks else [],
                  group=stem.split("_")[0], split=s) for (s, stem), p in images.items()]
    return items, []


ADAPTERS = {
    "busi": busi, "bus_bra": bus_bra, "hc18": hc18, "carotid_cca": carotid_cca, "paired": paired,
    "usgra_nerve": lambda root: usgra(root, 1), "usgra_vessel": lambda root: usgra(root, 2),
}


def read_image(path: Path) -> np.ndarray:
    """An 8-bit greyscale array (ultrasound content is grey; RGB/RGBA copies are converted)."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BadItem(f"corrupt or unreadable image ({error})") from None


def read_mask(paths: list[Path], shape: tuple[int, int], label: int | None = None, fill: bool = False) -> np.ndarray:
    """One boolean mask from one or more files: palette index ``label`` if given, else colour channels
    only (``convert("L") > 0``; alpha is ignored, see NOTES.md #1); several files are OR-ed."""
    if not paths:
        raise BadItem("no mask file for this image")
    out = np.zeros(shape, dtype=bool)
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                if label is not None:
                    if img.mode != "P":
                        raise BadItem(f"mask {path.name} is mode {img.mode}, expected a palette PNG with label {label}")
                    arr = np.asarray(img) == label
                else:
                    grey = np.asarray(img.convert("L"))
                    lossy = path.suffix.lower() in {".jpg", ".jpeg"}
                    arr = grey > 127 if lossy else grey > 0
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise BadItem(f"corrupt or unreadable mask {path.name} ({error})") from None
        if arr.shape != shape:
            raise BadItem(f"mask {path.name} is {arr.shape[1]}x{arr.shape[0]} but the image is {shape[1]}x{shape[0]}")
        out |= arr
    if fill:
        out = ndimage.binary_fill_holes(out)
    return out
