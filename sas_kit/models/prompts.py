"""Simulated user prompts from a ground-truth mask: jittered boxes, first clicks, corrective clicks, parts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PROMPTS = ("box", "1click", "2click", "3click", "4click", "5click")  # the prompt names every stage uses

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal neighbours belong to the same part


def _check(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"{what} must be a 2-D HxW array, got shape {mask.shape}")
    return mask


def box_from_mask(mask: np.ndarray, jitter: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Tight box [x0, y0, x1, y1] (pixel indices, inclusive) around ``mask``; with ``jitter`` > 0 each side
    moves by a uniform random amount of up to ``jitter`` × the box width (x) or height (y), so the noise
    scales with the target and the image. The box is clipped to the image and kept non-degenerate."""
    mask = _check(mask)
    if not mask.any():
        raise ValueError("cannot draw a box around an empty mask (the image has no target)")
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    if jitter > 0:
        rng = rng if rng is not None else np.random.default_rng()
        w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
        box += rng.uniform(-jitter, jitter, size=4) * np.array([w, h, w, h])
    return clip_box(box, mask.shape)


def clip_box(box, shape: tuple[int, int]) -> np.ndarray:
    """Clip an xyxy box to an image of ``shape`` (H, W) and order its corners."""
    h, w = shape[:2]
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64).reshape(4)
    x0, x1 = sorted((float(np.clip(x0, 0, w - 1)), float(np.clip(x1, 0, w - 1))))
    y0, y1 = sorted((float(np.clip(y0, 0, h - 1)), float(np.clip(y1, 0, h - 1))))
    return np.array([x0, y0, x1, y1])


def _deepest(region: np.ndarray, clicked=()) -> tuple[tuple[int, int], float] | None:
    """((x, y), distance) of the pixel of ``region`` farthest from its boundary (the image border counts as
    boundary), leaving out the pixels in ``clicked`` ((x, y) pairs); the first such pixel in raster order. None when
    no pixel is left.

    The distance transform runs on the region's bounding box padded by one background pixel: exact, because the
    nearest background pixel of a region pixel is never farther than the padded box's ring (project it onto the
    ring: both coordinate gaps shrink), and cropping keeps raster order. An error region is usually a small part of
    the image, so this is most of the clicker's cost saved (docs/notes.md, "decode chunks")."""
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if rows.size == 0:
        return None
    y0, x0 = int(rows[0]), int(cols[0])
    dist = ndimage.distance_transform_edt(np.pad(region[y0:int(rows[-1]) + 1, x0:int(cols[-1]) + 1], 1))[1:-1, 1:-1]
    for x, y in clicked:
        if 0 <= y - y0 < dist.shape[0] and 0 <= x - x0 < dist.shape[1]:
            dist[y - y0, x - x0] = 0.0  # RITM's "not clicked" map: a pixel is never clicked twice
    k = int(np.argmax(dist))
    if dist.flat[k] <= 0:
        return None
    y, x = np.unravel_index(k, dist.shape)
    return (int(x) + x0, int(y) + y0), float(dist.flat[k])


def first_click(mask: np.ndarray) -> tuple[int, int]:
    """The first positive click: the mask pixel farthest from the mask boundary, as (x, y)."""
    mask = _check(mask)
    if not mask.any():
        raise ValueError("cannot place a click on an empty mask (the image has no target)")
    return _deepest(mask)[0]


def next_click(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None,
               clicked=()) -> tuple[tuple[int, int], int] | None:
    """The next corrective click of RITM's evaluation clicker (Sofiiuk et al. 2022, ``isegm/inference/clicker.py``;
    SimpleClick uses the same), written here with scipy.

    Missed pixels (false negatives) and spurious ones (false positives) are two masks, each padded so the image
    border counts as boundary. Each gets its distance transform, with the pixels already ``clicked`` ((x, y) pairs
    of this session) set to 0. The click goes to the deeper of the two maxima: positive (label 1) at the deepest
    missed pixel when its distance is strictly larger, else negative (label 0) at the deepest spurious pixel (a tie
    goes to the negative click, as in RITM); the first maximum in raster order. Pixels in ``ignore`` (the target's
    other parts, prompted separately) are neither. Returns ``((x, y), label)``, or None when no unclicked error
    pixel is left (RITM would then click pixel (0, 0); here the session ends).

    Unlike the kit's clicker before amendment v4 (docs/protocol.md) there is no connected-component labelling: a
    thick small error beats a thin large one, and a click the model ignores is never repeated on the same pixel.
    """
    gt, pred = _check(gt, "gt"), _check(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} differ in shape")
    keep = ~_check(ignore, "ignore") if ignore is not None else np.ones_like(gt)
    missed = _deepest(gt & ~pred & keep, clicked)
    spurious = _deepest(pred & ~gt & keep, clicked)
    if missed is None and spurious is None:
        return None
    if spurious is None or (missed is not None and missed[1] > spurious[1]):
        return missed[0], 1
    return spurious[0], 0


def components(mask: np.ndarray, min_pixels: int = 1) -> list[np.ndarray]:
    """Connected parts of ``mask`` (8-connectivity) as boolean masks, largest first; parts smaller than
    ``min_pixels`` are left out (the default 1 keeps every part). Used to prompt each part separately
    and take the union of the predictions (docs/notes.md)."""
    mask = _check(mask)
    labelled, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    order = [i for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_pixels]
    return [labelled == i + 1 for i in order]
