"""Fine-tuning (decoder-only or full) as a function of a :class:`~sas_kit.experiment.run.RunSpec`: epochs over views,
model selection, checkpoints, resume, and data-parallel ranks under ``torchrun`` (full mode)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sas_kit import files
from sas_kit.digest import data_key
from sas_kit.experiment import distributed
from sas_kit.experiment.embed_cache import EmbeddingCache, Policy, View, build_views
from sas_kit.experiment.metrics import dice
from sas_kit.experiment.run import RunSpec, load_images, load_samples  # noqa: F401  (load_samples re-exported)
from sas_kit.experiment.train_step import step_loss
from sas_kit.models import precision as policy
from sas_kit.models import registry, segment

# Spec fields that may differ between a run and its resumption (more epochs); every other field must match last.pt.
RESUMABLE = ("epochs",)


@dataclass
class TrainResult:
    """What a run produced: checkpoint paths, per-epoch history and its cost."""

    out: Path
    last: Path
    best: Path
    train_loss: list[float]
    val_dice: list[float]
    val_dice_initial: float
    best_epoch: int  # 0 = no epoch beat the starting weights (best.pt then holds them); select="last": the last
    encoder_calls: int  # image-encoder forward passes made by this call (cache hits excluded)
    seconds: float
    steps: int  # optimiser steps made by this call
    skipped_empty: int  # training views with an empty mask (nothing to prompt)
    resumed_from: int = 0
    samples: int = 0  # prompted training samples (one decode with gradients each) made by this call
    precision: str = "fp32"


def trainable_parameters(sam, mode: str) -> dict[str, torch.nn.Parameter]:
    """Freeze the image encoder in ``decoder`` mode; return the parameters left trainable by name."""
    for name, p in sam.named_parameters():
        p.requires_grad_(mode == "full" or not name.startswith("image_encoder."))
    return {n: p for n, p in sam.named_parameters() if p.requires_grad}


def make_optimizer(params, spec: RunSpec, device: str) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where this torch has one for ``device`` (6x faster per step on CPU)."""
    try:
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay,
                                 fused=str(device).split(":")[0] in ("cpu", "cuda"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def flush_denormals() -> None:
    """Treat denormal floats as zero on CPU (left on for the process). Adam's squared-gradient averages
    underflow into denormals after the first steps, and x86 handles those ~50x slower: measured here, a
    decoder step went from 0.3 s to 2.5 s (backward 1.7 s, AdamW 0.75 s) without this."""
    torch.set_flush_denormal(True)


@torch.no_grad()
def val_dice(sam, spec, val: Sequence[View], embed, device: str, precision: str = "fp32") -> float:
    """Model-selection score: mean over the non-empty ``val`` views of the average of box and 2-click Dice
    (prompts per connected part, union). Training mixes both prompt kinds, so selection weighs both: a box-only
    score could keep the pretrained weights, whose click Dice is near zero (docs/notes.md)."""
    scores = []
    for v in val:
        if not v.mask.any():
            continue
        embedding, meta = embed(v)
        with policy.decoder(device, precision):
            box = segment.predict(sam, spec, v.image, v.mask, "box", embedding=embedding, meta=meta)
            clicks = segment.predict(sam, spec, v.image, v.mask, "2click", embedding=embedding, meta=meta)
        scores.append((dice(box, v.mask) + dice(clicks, v.mask)) / 2)  # non-empty mask: never NaN
    return float(np.mean(scores)) if scores else float("nan")


def _check_resume(state: dict, spec: RunSpec, path: Path, key: str) -> None:
    if state.get("data_key") != key:
        raise ValueError(f"cannot resume from {path}: it was trained on other images (data key "
                         f"{state.get('data_key')} != {key}); use another --out")
    old = RunSpec.from_dict(state["spec"]) if "spec" in state else None
    diff = {} if old is None else {k: v for k, v in spec.differs(old).items() if k not in RESUMABLE}
    if old is None or diff:
        raise ValueError(f"cannot resume from {path}: its run spec differs in {sorted(diff) or 'format'} "
                         f"({ {k: v[0] for k, v in diff.items()} }); use the same settings or another --out")


def epoch_views(spec: RunSpec, samples: Sequence[tuple], epoch: int, policy_fn: Policy | None = None) -> list[View]:
    """The training views of ``epoch``. Decoder mode: the same pre-drawn views every epoch (each encoded once,
    from the cache). Full mode: drawn afresh every epoch (the encoder is trained, nothing is cached, so fresh
    augmentations cost nothing extra), from ``SeedSequence([view seed, epoch])``."""
    view_seed = spec.view_seed
    if spec.mode == "full":
        view_seed = int(np.random.SeedSequence([view_seed, epoch]).generate_state(1)[0])
    params = None if spec.params is None or policy_fn is not None else asdict(spec.params)
    return build_views(samples, policy_fn or ("none" if spec.arm == "zero_shot" else spec.arm), spec.views,
                       view_seed, params)


def arm_policy(spec: RunSpec, train_samples: Sequence[tuple], progress: bool = True) -> Policy | None:
    """The arm's policy when it needs more than its name: genseg's pix2pix generator, trained on the run's own
    training images with the run's seed and ``spec.params`` (cached by all three, :func:`genseg.load_or_train`)."""
    if spec.arm != "genseg":
        return None
    from sas_kit.augment import genseg

    generator, record = genseg.load_or_train(train_samples, spec.params, spec.seed, progress=progress)
    if progress:
        how = "cached" if record["cached"] else f"trained {record['steps']} steps"
        print(f"genseg generator {record['key'][:8]} ({len(train_samples)} images): {how} in {record['seconds']:.0f} s")
    return genseg.GenSegPolicy(generator, spec.params, key=record["key"])


def train_arrays(spec: RunSpec, train_samples: Sequence[tuple], val_samples: Sequence[tuple], out: str | Path,
                 cache: EmbeddingCache | None = None, resume: bool = False, progress: bool = True,
                 policy_fn: Policy | None = None, disk_cache: bool = True) -> TrainResult:
    """Fine-tune ``spec.model`` on (image, mask) arrays; checkpoints go to ``out`` (last.pt each epoch; best.pt:
    by :func:`val_dice` (box and 2-click) after each epoch, or the last epoch with ``select="last"``). Pass one
    ``cache`` to several runs to encode each view once (``disk_cache``: a cache of its own also keeps embeddings
    under ``data_root()/cache/embeddings``). With ``resume`` and an existing last.pt the run continues from it and
    ends as an uninterrupted one. ``policy_fn`` replaces the arm's policy (tests; the genseg arm passes its
    generator's policy, :func:`arm_policy`).

    Under ``torchrun`` (full mode), rank r takes views ``batch[r::world]`` of every global batch of
    ``spec.batch_size``, its loss is its views' summed loss over the GLOBAL batch size and gradients are summed
    over ranks (:mod:`sas_kit.experiment.distributed`), so the steps equal one process's; rank 0 alone writes
    checkpoints and shows progress. Full mode draws each view's prompt from a stream of its own
    (``[seed, epoch, step, position]``), so the prompt does not depend on which rank decodes it."""
    start = time.perf_counter()
    flush_denormals()
    if spec.mode != "full" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ValueError("torchrun runs one full-mode run on several processes; decoder mode trains in one process "
                         "(spread independent runs with `sas-kit reproduce --workers N` instead)")
    ctx = distributed.from_env(spec.device) if spec.mode == "full" else distributed.Context()
    device = distributed.rank_device(spec.device, ctx)
    progress = progress and ctx.main
    precision = spec.precision
    model = registry.get_spec(spec.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    last, best = out / "last.pt", out / "best.pt"
    hist = {"train_loss": [], "val_dice": [], "epoch_seconds": [], "best_dice": None, "best_epoch": 0,
            "val_dice_initial": float("nan")}
    state = None
    key = data_key(train_samples, val_samples)
    if key != spec.data_key:
        raise ValueError(f"run {spec.name}: the training images given (data key {key}) are not the spec's "
                         f"({spec.data_key}); build the spec from these images")
    if resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        _check_resume(state, spec, last, key)
        hist = state["history"]
        if state["epoch"] >= spec.epochs:  # already complete: nothing to load, encode or train
            return _result(out, hist, 0, start, 0, state["epoch"], 0, precision)
    if cache is None:
        cache = EmbeddingCache(spec.model, root=True if disk_cache else None, precision=precision, device=device)
    elif cache.model != spec.model or cache.precision != precision:
        raise ValueError(f"embedding cache is for {cache.model!r}/{cache.precision}, not {spec.model!r}/{precision}")
    calls0, full_calls = cache.encoder_calls, 0
    policy_fn = policy_fn or arm_policy(spec, train_samples, progress)

    torch.manual_seed(spec.seed)
    sam = registry.load_model(spec.model, device=device)  # eval mode throughout: TinyViT BatchNorm stats stay fixed
    params = trainable_parameters(sam, spec.mode)
    optimizer = make_optimizer(list(params.values()), spec, device)
    first = 1
    if state is not None:
        sam.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        first = state["epoch"] + 1

    val_views = build_views(val_samples, "none", 1, spec.seed) if ctx.main else []

    def cached(v: View):
        return cache.get(sam, model, v.image, key=v.key, device=device)

    def fresh(v: View):  # full mode: the encoder changes, so validation re-encodes
        nonlocal full_calls
        full_calls += 1
        return registry.encode(sam, model, v.image, precision=precision)

    def select(weights: dict, epoch: int, dice: float) -> None:
        hist["best_dice"], hist["best_epoch"] = dice, epoch
        if ctx.main:
            files.torch_save(best, {"model": weights, "epoch": epoch, "val_dice": dice, "model_name": spec.model,
                                    "spec": spec.plain()})

    if first == 1 and spec.select == "best":
        if spec.mode == "decoder":
            cache.fill(sam, model, val_views, desc=f"encode val ({spec.name})", progress=progress)
        embed = fresh if spec.mode == "full" else cached
        hist["val_dice_initial"] = val_dice(sam, model, val_views, embed, device, precision)
        select({n: p.detach().cpu() for n, p in params.items()}, 0, hist["val_dice_initial"])

    steps = samples = 0
    for epoch in range(first, spec.epochs + 1):
        t0 = time.perf_counter()
        views = epoch_views(spec, train_samples, epoch, policy_fn)
        items = [v for v in views if v.mask.any()]
        hist["skipped_empty"] = len(views) - len(items)
        if spec.mode == "decoder":
            cache.fill(sam, model, items, desc=f"encode views ({spec.name})", progress=progress)
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, epoch, 0x5A5]))  # epoch-local stream
        order = rng.permutation(len(items))
        batches = [order[i:i + spec.batch_size] for i in range(0, len(order), spec.batch_size)]
        losses = []
        bar = tqdm(batches, desc=f"train {spec.name} epoch {epoch}/{spec.epochs}", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            optimizer.zero_grad(set_to_none=True)
            if spec.mode == "full":  # per-view prompt streams, then this rank's share of the global batch
                streams = [np.random.default_rng([spec.seed, epoch, step, j]) for j in range(len(batch))]
                chosen, streams = distributed.shard([items[i] for i in batch], ctx), distributed.shard(streams, ctx)
            else:
                chosen, streams = [items[i] for i in batch], rng
            loss = None
            if chosen:
                with policy.decoder(device, precision):  # forward only; backward runs outside autocast
                    if spec.mode == "full":  # one batched encoder pass with gradients
                        encoded = [registry.preprocess(model, v.image) for v in chosen]
                        with policy.encoder(device, precision):
                            emb_all = sam.image_encoder(torch.cat([x for x, _ in encoded]).to(device)).float()
                        full_calls += len(chosen)
                        pairs = [(emb_all[k:k + 1], m) for k, (_, m) in enumerate(encoded)]
                    else:
                        pairs = [cached(v) for v in chosen]
                    loss = step_loss(sam, model, pairs, [v.mask for v in chosen], streams, spec.click_fraction,
                                     spec.max_clicks, spec.box_jitter, spec.loss_size)
                    if ctx.active:  # this rank's share of the global batch mean
                        loss = loss * (len(chosen) / len(batch))
                loss.backward()
            distributed.average_gradients(list(params.values()), ctx)
            optimizer.step()
            steps += 1
            samples += len(batch)
            hist["samples"] = hist.get("samples", 0) + len(batch)
            losses.append(distributed.all_sum(float(loss.detach()) if loss is not None else 0.0, ctx))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        weights = {n: p.detach().cpu() for n, p in params.items()}
        dice = float("nan")
        if val_views and (spec.select == "best" or epoch == spec.epochs):
            embed = fresh if spec.mode == "full" else cached
            if spec.mode == "decoder":
                cache.fill(sam, model, val_views, desc=f"encode val ({spec.name})", progress=progress)
            dice = val_dice(sam, model, val_views, embed, device, precision)
        hist["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        hist["val_dice"].append(dice)
        hist["epoch_seconds"].append(time.perf_counter() - t0)
        if spec.select == "last" and epoch == spec.epochs:
            select(weights, epoch, dice)
        elif spec.select == "best" and (dice > hist["best_dice"] or np.isnan(hist["best_dice"])):
            select(weights, epoch, dice)
        if ctx.main:
            files.torch_save(last, {"model": weights, "optimizer": optimizer.state_dict(), "epoch": epoch,
                                    "rng": {"torch": torch.get_rng_state()}, "model_name": spec.model,
                                    "mode": spec.mode, "data_key": key, "spec": spec.plain(), "history": hist})
    distributed.barrier(ctx)  # every rank leaves when rank 0 has written the last checkpoint
    return _result(out, hist, cache.encoder_calls - calls0 + full_calls, start, steps, first - 1, samples, precision)


def _result(out: Path, hist: dict, encoder_calls: int, start: float, steps: int, resumed_from: int,
            samples: int, precision: str) -> TrainResult:
    return TrainResult(out=out, last=out / "last.pt", best=out / "best.pt", train_loss=list(hist["train_loss"]),
                       val_dice=list(hist["val_dice"]), val_dice_initial=hist["val_dice_initial"],
                       best_epoch=hist["best_epoch"], encoder_calls=encoder_calls,
                       seconds=time.perf_counter() - start, steps=steps,
                       skipped_empty=hist.get("skipped_empty", 0), resumed_from=resumed_from,
                       samples=hist.get("samples", samples), precision=precision)


def train(spec: RunSpec, out: str | Path, cache: EmbeddingCache | None = None, resume: bool = False,
          progress: bool = True, disk_cache: bool = True) -> TrainResult:
    """Fine-tune on the spec's internal dataset (its train split for training, val split for model selection)."""
    train_samples, val_samples = load_images(spec.data, spec.train_limit, spec.val_limit)
    if not train_samples:
        raise ValueError(f"dataset {spec.data!r} has no training images; prepare it with `sas-kit data`")
    result = train_arrays(spec, train_samples, val_samples, out, cache=cache, resume=resume, progress=progress,
                          disk_cache=disk_cache)
    policy.trim_heap()  # the run's model, optimiser and graphs are freed now: hand their heap pages back
    return result
