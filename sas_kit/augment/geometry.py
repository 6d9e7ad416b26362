"""Image/mask pairs shared by every policy: input checks, a seeded rng, a mask's bounding box, crop-and-resize."""

from __future__ import annotations

import numpy as np
from PIL import Image

Box = list  # [x0, y0, x1, y1] in pixels, x1/y1 exclusive


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box [x0, y0, x1, y1] (x1, y1 exclusive) of a mask, None if it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def resample_pair(image: np.ndarray, mask: np.ndarray, box, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``box`` (x0, y0, x1, y1, floats allowed) and resize it to ``size`` = (w, h): the image with
    antialiased bilinear (Pillow), the mask nearest-neighbour on the same pixel-centre grid (stays binary)."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1)))
    rows = np.clip((y0 + (np.arange(h) + 0.5) * ((y1 - y0) / h)).astype(np.intp), 0, mask.shape[0] - 1)
    cols = np.clip((x0 + (np.arange(w) + 0.5) * ((x1 - x0) / w)).astype(np.intp), 0, mask.shape[1] - 1)
    return out, mask[np.ix_(rows, cols)]


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def check_pair(image: np.ndarray, mask: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The one input check of the kit: a uint8 HxW or HxWx3 image (HxWx1 becomes HxW) and an HxW mask (any dtype,
    nonzero = target, returned as bool). Errors start with ``where`` (e.g. "sample 3") and say the fix."""
    image, mask = np.asarray(image), np.asarray(mask)
    at = f"{where}: " if where else ""
    if image.dtype != np.uint8:
        raise TypeError(f"{at}image must be uint8, got {image.dtype}; convert with np.clip(image, 0, 255).astype(np.uint8)"
                        " or use sas_kit.data.datasets.to_arrays")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"{at}image must be HxW (grey) or HxWx3 (RGB), got shape {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{at}mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    return image, mask if mask.dtype == bool else mask != 0
