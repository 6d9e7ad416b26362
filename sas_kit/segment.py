"""Promptable segmentation of one image with simulated prompts: box or 1–5 iterative clicks, per part."""

from __future__ import annotations

import numpy as np
import torch

from sas_kit import models, prompts

PROMPTS = ("box", "1click", "2click", "3click", "5click")


def n_clicks(prompt: str) -> int:
    """Number of clicks a prompt name asks for (0 for "box")."""
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}; choose one of {PROMPTS}")
    return 0 if prompt == "box" else int(prompt[0])


def _predict_part(sam, spec, embedding, meta, part: np.ndarray, others: np.ndarray, prompt: str,
                  rng: np.random.Generator, jitter: float, multimask_first: bool) -> tuple[np.ndarray, dict]:
    """Segment one connected part; ``others`` (the other parts of the target) never count as errors."""
    if prompt == "box":
        box = prompts.box_from_mask(part, jitter=jitter, rng=rng)
        _, _, full = models.decode(sam, spec, embedding, meta, boxes=box[None])
        return (full[0, 0] > 0).cpu().numpy(), {"box": box.tolist()}
    points, labels, low_res = [prompts.first_click(part)], [1], None
    for k in range(n_clicks(prompt)):
        if k > 0:
            click = prompts.next_click(part, pred, ignore=others)
            if click is None:  # already perfect: no further click to give
                break
            points.append(click[0])
            labels.append(click[1])
        low_res, _, full = models.decode(sam, spec, embedding, meta, points=np.array(points, dtype=np.float32),
                                         labels=np.array(labels), mask_input=low_res,
                                         multimask=multimask_first and k == 0)
        pred = (full[0, 0] > 0).cpu().numpy()
    return pred, {"points": [list(p) for p in points], "labels": labels}


def predict(sam, spec, image: np.ndarray, gt_mask: np.ndarray, prompt: str, rng: np.random.Generator | None = None,
            embedding: torch.Tensor | None = None, meta: dict | None = None, per_component: bool = True,
            jitter: float = 0.0, multimask_first: bool = False, return_prompts: bool = False):
    """Predicted bool mask (original size) for ``image`` given prompts simulated from ``gt_mask``.

    ``prompt``: "box" (tight box, optionally ``jitter``-ed) or "Nclick" (N = 1, 2, 3, 5): the first click
    at the deepest point of the target, each further click at the centre of the largest error region,
    with the previous low-res logits fed back as mask input (NOTES #9).

    Convention (NOTES #4): with ``per_component=True`` (default) each connected part of ``gt_mask`` gets
    its own box / click sequence and the predictions are united; with False one box (or one click
    sequence) covers the whole target. Pass ``embedding``/``meta`` from :func:`models.encode` to avoid
    encoding the same image again. ``multimask_first`` takes SAM's best-of-3 output for the first click
    (off by default: LiteMedSAM and train.py use single-mask outputs). Raises ValueError on an empty
    ``gt_mask`` (no prompt can be drawn). With ``return_prompts`` also returns the prompts per part.
    """
    spec = models.get_spec(spec)
    gt = np.asarray(gt_mask).astype(bool)
    n_clicks(prompt)  # validates the name
    if not gt.any():
        raise ValueError("gt_mask is empty: no prompt can be simulated (evaluate() skips and counts such images)")
    if embedding is None or meta is None:
        embedding, meta = models.encode(sam, spec, image)
    if tuple(meta["original_hw"]) != gt.shape:
        raise ValueError(f"mask shape {gt.shape} does not match the encoded image {tuple(meta['original_hw'])}")
    rng = rng if rng is not None else np.random.default_rng(0)
    parts = prompts.components(gt) if per_component else [gt]
    union = np.zeros_like(gt)
    used = []
    with torch.no_grad():
        for part in parts:
            pred, given = _predict_part(sam, spec, embedding, meta, part, gt & ~part, prompt, rng, jitter, multimask_first)
            union |= pred
            used.append(given)
    return (union, used) if return_prompts else union
