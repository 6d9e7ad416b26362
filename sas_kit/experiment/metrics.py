"""Overlap metrics shared by training (model selection) and evaluation: Dice and IoU of boolean masks."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P| + |G|); NaN when both are empty (undefined — such images are excluded, not scored)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    total = int(pred.sum()) + int(gt.sum())
    return float("nan") if total == 0 else 2.0 * int((pred & gt).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P∩G| / |P∪G|; NaN when both are empty."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    union = int((pred | gt).sum())
    return float("nan") if union == 0 else int((pred & gt).sum()) / union


def clicks_to_reach(ious, threshold: float, max_clicks: int) -> int:
    """NoC@threshold of one click curve (``ious[k-1]`` = IoU after k clicks or rounds): the first k ≤
    ``max_clicks`` with IoU ≥ ``threshold``, or ``max_clicks`` when none reaches it (RITM/SimpleClick's
    convention: a miss counts as the cap, so NoC ≤ ``max_clicks`` and "NoC == cap" counts the failures).
    ``ious`` may stop early (after the threshold was reached) or run past the cap (ignored)."""
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    for k, value in enumerate(list(ious)[:max_clicks], start=1):
        if value >= threshold:
            return k
    return max_clicks
