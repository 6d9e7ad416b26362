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
    preds, given = _click_sequence(sam, spec, embedding, meta, part, others, n_clicks(prompt), multimask_first)
    return preds[-1], given


def _click_sequence(sam, spec, embedding, meta, part: np.ndarray, others: np.ndarray, clicks: int,
                    multimask_first: bool) -> tuple[list[np.ndarray], dict]:
    """Predictions after click 1, 2, ..., ``clicks`` of one part's interactive session. Clicks are
    deterministic, so the k-click prompt's result is element k-1 of a longer session; once the prediction
    is perfect no further click is given and it repeats."""
    points, labels, low_res, preds = [prompts.first_click(part)], [1], None, []
    for k in range(clicks):
        if k > 0:
            click = prompts.next_click(part, preds[-1], ignore=others)
            if click is None:  # already perfect: no further click to give
                preds += [preds[-1]] * (clicks - k)
                break
            points.append(click[0])
            labels.append(click[1])
        low_res, _, full = models.decode(sam, spec, embedding, meta, points=np.array(points, dtype=np.float32),
                                         labels=np.array(labels), mask_input=low_res,
                                         multimask=multimask_first and k == 0)
        preds.append((full[0, 0] > 0).cpu().numpy())
    return preds, {"points": [list(p) for p in points], "labels": labels}


def predict_clicks(sam, spec, image: np.ndarray, gt_mask: np.ndarray, clicks: int, embedding=None, meta=None,
                   per_component: bool = True, multimask_first: bool = False) -> list[np.ndarray]:
    """Predicted masks after 1..``clicks`` clicks from ONE session per part (element k-1 equals
    ``predict(..., f"{k}click")``): evaluating 1, 2 and 3 clicks costs 3 decodes per part, not 6."""
    spec = models.get_spec(spec)
    gt = np.asarray(gt_mask).astype(bool)
    if not gt.any():
        raise ValueError("gt_mask is empty: no prompt can be simulated (evaluate() skips and counts such images)")
    if embedding is None or meta is None:
        embedding, meta = models.encode(sam, spec, image)
    parts = prompts.components(gt) if per_component else [gt]
    unions = [np.zeros_like(gt) for _ in range(clicks)]
    with torch.no_grad():
        for part in parts:
            preds, _ = _click_sequence(sam, spec, embedding, meta, part, gt & ~part, clicks, multimask_first)
            for union, pred in zip(unions, preds):
                union |= pred
    return unions


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
