"""One fine-tuning step: a prompt per view (jittered box or 1–3 iterative clicks), batched decoding, loss on the
decoder's 256x256 low-res logits (or, ``loss_size="full"``, on logits upsampled to the original image size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sas_kit.experiment.run import LOSS_SIZES
from sas_kit.models import prompts, registry, segment

LOW_RES = 256  # SAM-family decoders emit 256x256 logits whatever the input size


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  eps: float = 1e-5) -> torch.Tensor:
    """MedSAM's loss: soft Dice with squared predictions (MONAI DiceLoss(sigmoid, squared_pred)) + BCE.
    ``weight`` (same shape, 0–1, or bool "keep") removes pixels from both terms: the target's other parts,
    prompted separately, and the padding outside the image. ``target`` may be soft (area fractions)."""
    logits, target = logits.float(), target.float()
    keep = torch.ones_like(target) if weight is None else weight.float()
    prob = torch.sigmoid(logits) * keep
    target = target * keep
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + eps) / ((prob * prob).sum() + (target * target).sum() + eps)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=keep, reduction="sum") / keep.sum().clamp(min=1)
    return dice + bce


def lowres_target(spec, meta: dict, mask: np.ndarray, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask`` (original size) in the low-res logit frame: area-averaged onto the resized image extent and
    padded like the model input (so a target a few pixels wide keeps a soft presence instead of vanishing), and
    the 0/1 map of that extent (the padding is not part of the image). Both 1x1x256x256 float."""
    spec = registry.get_spec(spec)
    rh, rw = meta["resized_hw"]
    h, w = max(1, round(rh * LOW_RES / spec.img_size)), max(1, round(rw * LOW_RES / spec.img_size))
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    t = F.interpolate(t, (h, w), mode="area")
    valid = torch.zeros(1, 1, LOW_RES, LOW_RES)
    valid[..., :h, :w] = 1.0
    t = F.pad(t, (0, LOW_RES - w, 0, LOW_RES - h))
    return (t.to(device), valid.to(device)) if device is not None else (t, valid)


@dataclass
class Prompt:
    """The prompt of one training sample: a box, or clicks with the previous low-res logits (or none)."""

    box: np.ndarray | None = None
    points: list | None = None
    labels: list | None = None
    mask_input: torch.Tensor | None = None

    def signature(self) -> tuple:
        """Samples with equal signatures are decoded in one batch (same token count and mask input)."""
        return ("box",) if self.box is not None else ("clicks", len(self.points), self.mask_input is not None)


def draw_prompts(sam, spec, pairs: Sequence[tuple], masks: Sequence[np.ndarray], rng, click_fraction: float, max_clicks: int, box_jitter: float) -> list[tuple[Prompt, np.ndarray, np.ndarray]]:
    """For each view: pick one connected part of its mask (the others are prompted separately at evaluation and
    are not errors) and prompt it by a jittered box, or (share ``click_fraction``) by 1..``max_clicks`` clicks:
    the clicks before the last come from a no-grad :func:`segment.click_sessions` (each on the error of the
    previous prediction, logits fed back), exactly as evaluation places them. ``rng``: one generator drawn from
    view after view, or a list of one generator per view (a view's prompt then does not depend on the other views
    of the batch: data-parallel ranks). Returns (prompt, part, others)."""
    drawn, sessions_for = [], []
    streams = list(rng) if isinstance(rng, (list, tuple)) else [rng] * len(masks)
    for mask, rng in zip(masks, streams):
        parts = prompts.components(mask)
        target = parts[int(rng.integers(len(parts)))] if len(parts) > 1 else np.asarray(mask, bool)
        others = np.asarray(mask, bool) & ~target
        if rng.random() >= click_fraction:
            drawn.append((Prompt(box=prompts.box_from_mask(target, jitter=box_jitter, rng=rng)), target, others))
        else:
            n = int(rng.integers(1, max_clicks + 1))
            drawn.append((Prompt(points=[prompts.first_click(target)], labels=[1]), target, others))
            if n > 1:
                sessions_for.append((len(drawn) - 1, n))
    if sessions_for:  # the no-grad part of every multi-click sample, batched together
        idx = [i for i, _ in sessions_for]
        sessions = segment.click_sessions(sam, spec, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx],
                                          [drawn[i][1] for i in idx], [drawn[i][2] for i in idx],
                                          [n - 1 for _, n in sessions_for])
        for i, s in zip(idx, sessions):
            prompt = drawn[i][0]
            prompt.points, prompt.labels, prompt.mask_input = list(s.points), list(s.labels), s.low_res
            if not s.done:
                click = prompts.next_click(drawn[i][1], s.preds[-1], ignore=drawn[i][2], clicked=s.points)
                if click is not None:
                    prompt.points.append(click[0])
                    prompt.labels.append(int(click[1]))
    return drawn


def decode_prompts(sam, pairs: Sequence[tuple], batch: Sequence[Prompt]) -> list[torch.Tensor]:
    """Low-res logits 1x1x256x256 for each prompt (with grad), decoding equal signatures together."""
    out: list[torch.Tensor | None] = [None] * len(batch)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(batch):
        groups.setdefault(p.signature(), []).append(i)
    for sig, idx in groups.items():
        emb = torch.cat([pairs[i][0] for i in idx])
        scales = [pairs[i][1]["scale_xy"] for i in idx]
        if sig[0] == "box":
            low, _ = registry.decode_batch(sam, emb, scales, boxes=np.array([batch[i].box for i in idx], np.float32))
        else:
            low, _ = registry.decode_batch(
                sam, emb, scales, points=np.array([batch[i].points for i in idx], np.float32),
                labels=np.array([batch[i].labels for i in idx]),
                mask_input=torch.cat([batch[i].mask_input for i in idx]).detach() if sig[2] else None)
        for k, i in enumerate(idx):
            out[i] = low[k:k + 1]
    return out


def step_loss(sam, spec, pairs: Sequence[tuple], masks: Sequence[np.ndarray], rng,
              click_fraction: float = 0.5, max_clicks: int = 3, box_jitter: float = 0.05,
              loss_size: str = "low") -> torch.Tensor:
    """Mean Dice + BCE over one batch of views: ``pairs`` (embedding 1x256x64x64, meta) and their masks.
    ``loss_size="low"``: on the low-res logits against :func:`lowres_target` (MedSAM's training does the same),
    which spares upsampling every prediction to the original image size and back. ``"full"``: on the logits
    upsampled to the original size (the model's own postprocess) against the mask itself, as the kit's first
    configuration did (docs/notes.md); every pixel then weighs the same, so a small target weighs less."""
    if loss_size not in LOSS_SIZES:
        raise ValueError(f"loss_size must be one of {LOSS_SIZES}, got {loss_size!r}")
    drawn = draw_prompts(sam, spec, pairs, masks, rng, click_fraction, max_clicks, box_jitter)
    logits = decode_prompts(sam, pairs, [p for p, _, _ in drawn])
    total = 0.0
    for (emb, meta), (_, target, others), low in zip(pairs, drawn, logits):
        if loss_size == "full":
            full = registry.postprocess(spec, low, meta)
            t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None, None].to(full.device)
            keep = torch.from_numpy(np.ascontiguousarray(~others, dtype=np.float32))[None, None].to(full.device)
            total = total + dice_bce_loss(full, t, keep if others.any() else None)
            continue
        t, valid = lowres_target(spec, meta, target, low.device)
        weight = valid
        if others.any():
            weight = valid * (1.0 - lowres_target(spec, meta, others, low.device)[0])
        total = total + dice_bce_loss(low, t, weight)
    return total / len(drawn)
