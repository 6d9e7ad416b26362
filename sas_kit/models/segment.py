"""Promptable segmentation of one image with simulated prompts: box or 1–5 iterative clicks, per part."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from sas_kit.models import prompts, registry


def n_clicks(prompt: str) -> int:
    """Number of clicks a prompt name asks for (0 for "box")."""
    if prompt not in prompts.PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}; choose one of {prompts.PROMPTS}")
    return 0 if prompt == "box" else int(prompt[0])


def _predict_part(sam, spec, embedding, meta, part: np.ndarray, others: np.ndarray, prompt: str,
                  rng: np.random.Generator, jitter: float, multimask_first: bool) -> tuple[np.ndarray, dict]:
    """Segment one connected part; ``others`` (the other parts of the target) never count as errors."""
    if prompt == "box":
        box = prompts.box_from_mask(part, jitter=jitter, rng=rng)
        _, _, full = registry.decode(sam, spec, embedding, meta, boxes=box[None])
        return (full[0, 0] > 0).cpu().numpy(), {"box": box.tolist()}
    preds, given = _click_sequence(sam, spec, embedding, meta, part, others, n_clicks(prompt), multimask_first)
    return preds[-1], given


@dataclass
class ClickSession:
    """One part's interactive session: its clicks so far, the last low-res logits and the mask after each click."""

    points: list
    labels: list
    low_res: torch.Tensor | None = None
    preds: list = field(default_factory=list)
    done: bool = False  # no unclicked error pixel was left: no further click to give


def click_sessions(sam, spec, embeddings: Sequence[torch.Tensor], metas: Sequence[dict], parts: Sequence[np.ndarray],
                   others: Sequence[np.ndarray], clicks: Sequence[int], multimask_first: bool = False,
                   batch_size: int = 16,
                   stop: Callable[[int, list[ClickSession]], Iterable[int]] | None = None) -> list[ClickSession]:
    """Deterministic click sessions, one per part, decoded ``batch_size`` parts at a time (no grad).

    Part i gets up to ``clicks[i]`` clicks: the first at its deepest point, each later one from RITM's clicker on
    the previous prediction (:func:`prompts.next_click`: the deeper of the missed and the spurious pixels, never a
    pixel clicked before; ``others``, the target's other parts, are not errors), with the previous low-res logits
    fed back as mask input, as SAM's interactive protocol does (docs/notes.md). Once no unclicked error pixel is
    left the session is done and its last prediction repeats. ``preds[k-1]`` is the mask after k clicks,
    so 1-, 2- and 3-click results are prefixes of one session. Batching pairs each part with its own image
    embedding (:func:`registry.decode_batch`); the result equals decoding part by part.

    ``stop(r, sessions)``, if given, is called after every round r = 1, 2, ... (each unfinished part has then been
    decoded r times, ``preds[-1]`` is its latest mask); the parts whose indices it returns get no further click
    and their ``preds`` end at round r (evaluate() stops an image once its NoC is known)."""
    spec = registry.get_spec(spec)
    sessions = [ClickSession([prompts.first_click(p)], [1]) for p in parts]
    limit = list(clicks)  # lowered by ``stop``
    with torch.no_grad():
        for k in range(max(clicks, default=0)):
            active = [i for i, s in enumerate(sessions) if limit[i] > k and not s.done]
            if not active:
                break  # every session is done or stopped: later rounds would decode nothing
            if k > 0:
                for i in active:
                    click = prompts.next_click(parts[i], sessions[i].preds[-1], ignore=others[i],
                                               clicked=sessions[i].points)
                    if click is None:
                        sessions[i].done = True
                    else:
                        sessions[i].points.append(click[0])
                        sessions[i].labels.append(int(click[1]))
                active = [i for i in active if not sessions[i].done]
            for chunk in (active[j:j + batch_size] for j in range(0, len(active), batch_size)):
                low, _ = registry.decode_batch(
                    sam, torch.cat([embeddings[i] for i in chunk]), [metas[i]["scale_xy"] for i in chunk],
                    points=np.array([sessions[i].points for i in chunk], dtype=np.float32),
                    labels=np.array([sessions[i].labels for i in chunk]),
                    mask_input=torch.cat([sessions[i].low_res for i in chunk]) if k > 0 else None,
                    multimask=multimask_first and k == 0)
                for j, i in enumerate(chunk):
                    sessions[i].low_res = low[j:j + 1]
                    full = registry.postprocess(spec, low[j:j + 1], metas[i])
                    sessions[i].preds.append((full[0, 0] > 0).cpu().numpy())
            if stop is not None:
                for i in stop(k + 1, sessions):
                    limit[i] = min(limit[i], k + 1)
    for s, n in zip(sessions, limit):
        s.preds += s.preds[-1:] * (n - len(s.preds))
    return sessions


def box_predictions(sam, spec, embeddings: Sequence[torch.Tensor], metas: Sequence[dict], boxes: Sequence,
                    batch_size: int = 16) -> list[np.ndarray]:
    """Masks (original size) for one xyxy box per part, decoded ``batch_size`` parts at a time (no grad)."""
    spec = registry.get_spec(spec)
    out = []
    with torch.no_grad():
        for j in range(0, len(boxes), batch_size):
            idx = range(j, min(j + batch_size, len(boxes)))
            low, _ = registry.decode_batch(sam, torch.cat([embeddings[i] for i in idx]), [metas[i]["scale_xy"] for i in idx],
                                         boxes=np.array([boxes[i] for i in idx], dtype=np.float32))
            out += [(registry.postprocess(spec, low[k:k + 1], metas[i])[0, 0] > 0).cpu().numpy() for k, i in enumerate(idx)]
    return out


def _click_sequence(sam, spec, embedding, meta, part: np.ndarray, others: np.ndarray, clicks: int,
                    multimask_first: bool) -> tuple[list[np.ndarray], dict]:
    """Predictions after click 1, 2, ..., ``clicks`` of one part's session (:func:`click_sessions`)."""
    s = click_sessions(sam, spec, [embedding], [meta], [part], [others], [clicks], multimask_first)[0]
    return s.preds, {"points": [list(p) for p in s.points], "labels": s.labels}


def predict_clicks(sam, spec, image: np.ndarray, gt_mask: np.ndarray, clicks: int, embedding=None, meta=None,
                   per_component: bool = True, multimask_first: bool = False) -> list[np.ndarray]:
    """Predicted masks after 1..``clicks`` clicks from ONE session per part (element k-1 equals
    ``predict(..., f"{k}click")``): evaluating 1, 2 and 3 clicks costs 3 decodes per part, not 6."""
    spec = registry.get_spec(spec)
    gt = np.asarray(gt_mask).astype(bool)
    if not gt.any():
        raise ValueError("gt_mask is empty: no prompt can be simulated (evaluate() skips and counts such images)")
    if embedding is None or meta is None:
        embedding, meta = registry.encode(sam, spec, image)
    parts = prompts.components(gt) if per_component else [gt]
    sessions = click_sessions(sam, spec, [embedding] * len(parts), [meta] * len(parts), parts,
                              [gt & ~p for p in parts], [clicks] * len(parts), multimask_first)
    return [np.logical_or.reduce([s.preds[k] for s in sessions]) for k in range(clicks)]


def predict(sam, spec, image: np.ndarray, gt_mask: np.ndarray, prompt: str, rng: np.random.Generator | None = None,
            embedding: torch.Tensor | None = None, meta: dict | None = None, per_component: bool = True,
            jitter: float = 0.0, multimask_first: bool = False, return_prompts: bool = False):
    """Predicted bool mask (original size) for ``image`` given prompts simulated from ``gt_mask``.

    ``prompt``: "box" (tight box, optionally ``jitter``-ed) or "Nclick" (N = 1, 2, 3, 5): the first click
    at the deepest point of the target, each further click from RITM's clicker (:func:`prompts.next_click`),
    with the previous low-res logits fed back as mask input (docs/notes.md).

    Convention (docs/notes.md): with ``per_component=True`` (default) each connected part of ``gt_mask`` gets
    its own box / click sequence and the predictions are united; with False one box (or one click
    sequence) covers the whole target. Pass ``embedding``/``meta`` from :func:`registry.encode` to avoid
    encoding the same image again. ``multimask_first`` takes SAM's best-of-3 output for the first click
    (off by default: LiteMedSAM and train.py use single-mask outputs). Raises ValueError on an empty
    ``gt_mask`` (no prompt can be drawn). With ``return_prompts`` also returns the prompts per part.
    """
    spec = registry.get_spec(spec)
    gt = np.asarray(gt_mask).astype(bool)
    n_clicks(prompt)  # validates the name
    if not gt.any():
        raise ValueError("gt_mask is empty: no prompt can be simulated (evaluate() skips and counts such images)")
    if embedding is None or meta is None:
        embedding, meta = registry.encode(sam, spec, image)
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
