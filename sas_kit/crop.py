"""Pixel-box helpers shared by SAS and the baselines: a mask's bounding box, crop-and-resize of an image/mask pair."""

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
