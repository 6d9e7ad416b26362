"""Shared adapter pieces: the Item record, the kit's data errors, file discovery and mask/image reading."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError
from scipy import ndimage

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"}
LOSSY_EXTS = {".jpg", ".jpeg"}
JPEG_THRESHOLD = 127  # JPEG masks carry compression noise around 0 and 255: threshold at mid-grey, never "> 0"

Polygon = list[tuple[float, float]]


@dataclass
class Item:
    """One image and the file(s) or outline(s) that make its mask, before reading."""

    id: str
    image: Path | None
    masks: list[Path] = field(default_factory=list)
    group: str = ""
    label: int | None = None  # palette index to select (multi-class masks); None = any foreground
    fill: bool = False  # fill closed outlines (HC18 ellipses)
    split: str | None = None  # an upstream split to respect ("train"/"val"/"test"), else None
    phantom_index: int | None = None
    polygons: list[Polygon] | None = None  # outlines to rasterise (DDTI XML, Open Kidney CSV) instead of mask files


class BadItem(ValueError):
    """An item that cannot be used; the message says why (it is counted and reported, never dropped silently)."""


class UnusableData(ValueError):
    """A dataset folder that yields no usable image/mask pair; the message says what was seen and expected."""


def files(root: Path) -> list[Path]:
    """Every image-like file under ``root`` (any format PIL reads that datasets ship), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def skip_summary(skipped: list[tuple[str, str]], examples: int = 3, max_reasons: int = 12) -> list[str]:
    """One line per skip reason: count and a few example paths (most frequent reason first)."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    order = Counter({r: len(p) for r, p in by_reason.items()}).most_common()
    lines = [f"{n} skipped: {reason} (e.g. {', '.join(by_reason[reason][:examples])})"
             for reason, n in order[:max_reasons]]
    if len(order) > max_reasons:
        rest = sum(n for _, n in order[max_reasons:])
        lines.append(f"{rest} skipped for {len(order) - max_reasons} other reasons (all listed in prepare.json)")
    return lines


def read_image(path: Path) -> np.ndarray:
    """An 8-bit greyscale array (ultrasound content is grey; RGB/RGBA copies are converted)."""
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadItem(f"corrupt or unreadable image ({error})") from None


def rasterise(polygons: list[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask: the union of the filled ``polygons`` (x, y pixel coordinates; outline included)."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    drawn = 0
    for poly in polygons:
        if len(poly) >= 3:
            draw.polygon([(float(x), float(y)) for x, y in poly], fill=1, outline=1)
            drawn += 1
    if not drawn:
        raise BadItem("no outline with at least 3 points")
    return np.asarray(canvas) > 0


def read_mask(paths: list[Path], shape: tuple[int, int], label: int | None = None, fill: bool = False,
              polygons: list[Polygon] | None = None) -> np.ndarray:
    """One boolean mask from outlines or from one or more files. Files: palette index ``label`` if given,
    else colour channels only (``convert("L") > 0``, alpha ignored: an all-255 alpha would otherwise turn
    a mask into the full image; JPEG masks ``> 127``); several files are OR-ed."""
    if polygons is not None:
        return rasterise(polygons, shape)
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
                    arr = grey > JPEG_THRESHOLD if path.suffix.lower() in LOSSY_EXTS else grey > 0
        except BadItem:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise BadItem(f"corrupt or unreadable mask {path.name} ({error})") from None
        if arr.shape != shape:
            raise BadItem(f"mask {path.name} is {arr.shape[1]}x{arr.shape[0]} but the image is {shape[1]}x{shape[0]}")
        out |= arr
    if fill:
        out = ndimage.binary_fill_holes(out)
    return out
