"""Fine-tuning (decoder-only or full): epochs over views, model selection, checkpoints, resume."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sas_kit import config, files
from sas_kit.digest import data_key
from sas_kit.experiment.embed_cache import EmbeddingCache, View, build_views
from sas_kit.experiment.metrics import dice
from sas_kit.experiment.train_step import step_loss
from sas_kit.models import precision as policy
from sas_kit.models import registry, segment

DEFAULT_LR = {"decoder": 5e-5, "full": 1e-5}
# Fields that may differ between a run and its resumption; every other field must match last.pt.
RESUMABLE = ("epochs", "out", "device", "progress", "disk_cache")


@dataclass
class TrainConfig:
    """One fine-tuning run. ``lr=None`` picks DEFAULT_LR[mode]: 5e-5 for the decoder (half MedSAM's 1e-4,
    a lower rate forgets less on box prompts, docs/notes.md) and 1e-5 when the encoder is trained too.
    ``batch_size`` views make one optimiser step; their prompts are decoded in batches of equal kind."""

    model: str = "litemedsam"
    data: str = "phantom"
    policy: str = "none"  # a name for augment.make_policy, or any callable policy(image, mask, rng)
    policy_params: dict = field(default_factory=dict)
    mode: str = "decoder"  # "decoder": image encoder frozen, embeddings cached; "full": encoder trained too
    epochs: int = 4
    lr: float | None = None
    weight_decay: float = 0.01
    batch_size: int = 4  # views per optimiser step, decoded together (train_step.decode_prompts)
    views: int = 3  # per image: view 0 the original, views 1..K-1 drawn by the policy
    seed: int = 0
    view_seed: int | None = None  # seed of the pre-drawn views; None = seed (a fixed one shares encodes across seeds)
    select: str = "best"  # "best": best.pt by val score after each epoch; "last": the last epoch (val once, at the end)
    precision: str | None = None  # "fp32", "bf16" or None/"auto" (sas_kit.models.precision); training and evaluation share it
    train_limit: int | None = None
    val_limit: int | None = None
    click_fraction: float = 0.5  # share of samples prompted by clicks; the rest use boxes (limits box forgetting)
    max_clicks: int = 3  # click steps use 1..max_clicks iterative clicks, logits fed back: what evaluation scores
    box_jitter: float = 0.05
    out: str = "runs/train"
    device: str | None = None
    disk_cache: bool = True  # also keep embeddings under data_root()/cache/embeddings/<model>/
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in DEFAULT_LR:
            raise ValueError(f"mode must be one of {sorted(DEFAULT_LR)}, got {self.mode!r}")
        if not 0.0 <= self.click_fraction <= 1.0:
            raise ValueError(f"click_fraction must be in [0, 1], got {self.click_fraction}")
        if self.select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', got {self.select!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.views < 1 or self.max_clicks < 1:
            raise ValueError("epochs, batch_size, views and max_clicks must all be >= 1")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.mode] if self.lr is None else float(self.lr)

    def plain(self) -> dict:
        """The config as JSON primitives (what checkpoints store)."""
        return json.loads(json.dumps(asdict(self), default=lambda o: getattr(o, "__qualname__", None) or repr(o)))


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


def load_samples(name: str, split: str, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, mask) arrays of the first ``limit`` examples of ``split`` of dataset ``name``."""
    from sas_kit.data import datasets

    return [datasets.to_arrays(ex) for ex in datasets.load(name, split=split, limit=limit)]


def trainable_parameters(sam, mode: str) -> dict[str, torch.nn.Parameter]:
    """Freeze the image encoder in ``decoder`` mode; return the parameters left trainable by name."""
    for name, p in sam.named_parameters():
        p.requires_grad_(mode == "full" or not name.startswith("image_encoder."))
    return {n: p for n, p in sam.named_parameters() if p.requires_grad}


def make_optimizer(params, cfg: TrainConfig, device: str) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where this torch has one for ``device`` (6x faster per step on CPU)."""
    try:
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                 fused=str(device).split(":")[0] in ("cpu", "cuda"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


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


def _check_resume(state: dict, cfg: TrainConfig, path: Path, key: str) -> None:
    if state.get("data_key") != key:
        raise ValueError(f"cannot resume from {path}: it was trained on other images (data key "
                         f"{state.get('data_key')} != {key}); use another --out")
    old, new = state["config"], cfg.plain()
    diff = [k for k in new if k not in RESUMABLE and old.get(k) != new[k]]
    if diff:
        raise ValueError(f"cannot resume from {path}: its config differs in {diff} "
                         f"({ {k: old.get(k) for k in diff} }); use the same settings or another --out")


def epoch_views(cfg: TrainConfig, samples: Sequence[tuple], epoch: int) -> list[View]:
    """The training views of ``epoch``. Decoder mode: the same pre-drawn views every epoch (each encoded once,
    from the cache). Full mode: drawn afresh every epoch (the encoder is trained, nothing is cached, so fresh
    augmentations cost nothing extra), from ``SeedSequence([view seed, epoch])``."""
    view_seed = cfg.seed if cfg.view_seed is None else cfg.view_seed
    if cfg.mode == "full":
        view_seed = int(np.random.SeedSequence([view_seed, epoch]).generate_state(1)[0])
    return build_views(samples, cfg.policy, cfg.views, view_seed, cfg.policy_params)


def train_arrays(cfg: TrainConfig, train_samples: Sequence[tuple], val_samples: Sequence[tuple],
                 cache: EmbeddingCache | None = None, resume: bool = False) -> TrainResult:
    """Fine-tune ``cfg.model`` on (image, mask) arrays; checkpoints go to ``cfg.out`` (last.pt each epoch;
    best.pt: by :func:`val_dice` (box and 2-click) after each epoch, or the last epoch with ``select="last"``).
    Pass one ``cache`` to several runs to encode each view once. With ``resume`` and an existing last.pt the run
    continues from it and ends as an uninterrupted one."""
    start = time.perf_counter()
    flush_denormals()
    device = config.device(cfg.device)
    precision = policy.resolve(cfg.precision, device)
    spec = registry.get_spec(cfg.model)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last, best = out / "last.pt", out / "best.pt"
    hist = {"train_loss": [], "val_dice": [], "epoch_seconds": [], "best_dice": None, "best_epoch": 0,
            "val_dice_initial": float("nan")}
    state = None
    key = data_key(train_samples, val_samples)
    if resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        _check_resume(state, cfg, last, key)
        hist = state["history"]
        if state["epoch"] >= cfg.epochs:  # already complete: nothing to load, encode or train
            return _result(out, hist, 0, start, 0, state["epoch"], 0, precision)
    if cache is None:
        cache = EmbeddingCache(cfg.model, root=True if cfg.disk_cache else None, precision=precision, device=device)
    elif cache.model != cfg.model or cache.precision != precision:
        raise ValueError(f"embedding cache is for {cache.model!r}/{cache.precision}, not {cfg.model!r}/{precision}")
    calls0, full_calls = cache.encoder_calls, 0

    torch.manual_seed(cfg.seed)
    sam = registry.load_model(cfg.model, device=device)  # eval mode throughout: TinyViT BatchNorm stats stay fixed
    params = trainable_parameters(sam, cfg.mode)
    optimizer = make_optimizer(list(params.values()), cfg, device)
    first = 1
    if state is not None:
        sam.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        first = state["epoch"] + 1

    val_views = build_views(val_samples, "none", 1, cfg.seed)

    def cached(v: View):
        return cache.get(sam, spec, v.image, key=v.key, device=device)

    def fresh(v: View):  # full mode: the encoder changes, so validation re-encodes
        nonlocal full_calls
        full_calls += 1
        return registry.encode(sam, spec, v.image, precision=precision)

    def select(weights: dict, epoch: int, dice: float) -> None:
        hist["best_dice"], hist["best_epoch"] = dice, epoch
        files.torch_save(best, {"model": weights, "epoch": epoch, "val_dice": dice, "model_name": cfg.model,
                     "config": cfg.plain()})

    if first == 1 and cfg.select == "best":
        cache.fill(sam, spec, val_views, desc="encode val", progress=cfg.progress)
        hist["val_dice_initial"] = val_dice(sam, spec, val_views, cached, device, precision)
        select({n: p.detach().cpu() for n, p in params.items()}, 0, hist["val_dice_initial"])

    steps = samples = 0
    for epoch in range(first, cfg.epochs + 1):
        t0 = time.perf_counter()
        views = epoch_views(cfg, train_samples, epoch)
        items = [v for v in views if v.mask.any()]
        hist["skipped_empty"] = len(views) - len(items)
        if cfg.mode == "decoder":
            cache.fill(sam, spec, items, desc="encode views", progress=cfg.progress)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, 0x5A5]))  # epoch-local stream
        order = rng.permutation(len(items))
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            chosen = [items[i] for i in batch]
            with policy.decoder(device, precision):  # forward only; backward runs outside autocast
                if cfg.mode == "full":  # one batched encoder pass with gradients
                    encoded = [registry.preprocess(spec, v.image) for v in chosen]
                    with policy.encoder(device, precision):
                        emb_all = sam.image_encoder(torch.cat([x for x, _ in encoded]).to(device)).float()
                    full_calls += len(chosen)
                    pairs = [(emb_all[k:k + 1], m) for k, (_, m) in enumerate(encoded)]
                else:
                    pairs = [cached(v) for v in chosen]
                loss = step_loss(sam, spec, pairs, [v.mask for v in chosen], rng, cfg.click_fraction,
                                 cfg.max_clicks, cfg.box_jitter)
            loss.backward()
            optimizer.step()
            steps += 1
            samples += len(chosen)
            hist["samples"] = hist.get("samples", 0) + len(chosen)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        weights = {n: p.detach().cpu() for n, p in params.items()}
        dice = float("nan")
        if val_views and (cfg.select == "best" or epoch == cfg.epochs):
            embed = fresh if cfg.mode == "full" else cached
            if cfg.mode == "decoder":
                cache.fill(sam, spec, val_views, desc="encode val", progress=cfg.progress)
            dice = val_dice(sam, spec, val_views, embed, device, precision)
        hist["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        hist["val_dice"].append(dice)
        hist["epoch_seconds"].append(time.perf_counter() - t0)
        if cfg.select == "last" and epoch == cfg.epochs:
            select(weights, epoch, dice)
        elif cfg.select == "best" and (dice > hist["best_dice"] or np.isnan(hist["best_dice"])):
            select(weights, epoch, dice)
        files.torch_save(last, {"model": weights, "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "rng": {"torch": torch.get_rng_state()}, "model_name": cfg.model, "mode": cfg.mode, "data_key": key,
                     "config": cfg.plain(), "history": hist})
    return _result(out, hist, cache.encoder_calls - calls0 + full_calls, start, steps, first - 1, samples, precision)


def _result(out: Path, hist: dict, encoder_calls: int, start: float, steps: int, resumed_from: int,
            samples: int, precision: str) -> TrainResult:
    return TrainResult(out=out, last=out / "last.pt", best=out / "best.pt", train_loss=list(hist["train_loss"]),
                       val_dice=list(hist["val_dice"]), val_dice_initial=hist["val_dice_initial"],
                       best_epoch=hist["best_epoch"], encoder_calls=encoder_calls,
                       seconds=time.perf_counter() - start, steps=steps,
                       skipped_empty=hist.get("skipped_empty", 0), resumed_from=resumed_from,
                       samples=hist.get("samples", samples), precision=precision)


def train(cfg: TrainConfig, cache: EmbeddingCache | None = None, resume: bool = False) -> TrainResult:
    """Fine-tune on dataset ``cfg.data`` (its train split for training, val split for model selection)."""
    train_samples = load_samples(cfg.data, "train", cfg.train_limit)
    val_samples = load_samples(cfg.data, "val", cfg.val_limit)
    if not train_samples:
        raise ValueError(f"dataset {cfg.data!r} has no training images; prepare it with `sas-kit data`")
    return train_arrays(cfg, train_samples, val_samples, cache=cache, resume=resume)
