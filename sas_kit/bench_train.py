"""Training-step cost: seconds per step (decoder / full), embedding-cache speed-up, memory, encoder roofline."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch

from sas_kit import config, models
from sas_kit.embed_cache import EmbeddingCache, build_views
from sas_kit.phantom import PhantomSpec, make_phantom
from sas_kit.train import (TrainConfig, autocast, dice_bce_loss, flush_denormals, make_optimizer, prompted_logits,
                           trainable_parameters)

KEYS = ("measure", "device", "batch", "n", "seconds", "per_item_s", "items_per_s", "speedup", "peak_mem_mib",
        "gflop_per_item", "tflop_per_s", "roofline_frac")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS so far (it never goes down)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _row(measure: str, device: str, batch: int, n: int, seconds: float, **extra) -> dict:
    row = dict.fromkeys(KEYS)
    row.update(measure=measure, device=device, batch=batch, n=n, seconds=round(seconds, 3),
               per_item_s=round(seconds / n, 4), items_per_s=round(n / seconds, 2),
               peak_mem_mib=round(_peak_mib(device)))
    row.update(extra)
    return row


def encoder_gflop(sam, spec) -> float:
    """Image-encoder GFLOPs for one image (torch.utils.flop_counter; a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, spec.img_size, spec.img_size, device=sam.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        sam.image_encoder(x)
    return counter.get_total_flops() / 1e9


def decoder_step_gflop(sam, spec, view, cfg: TrainConfig) -> float:
    """GFLOPs of one box-prompted decoder training step (forward + backward) from a cached embedding."""
    from torch.utils.flop_counter import FlopCounterMode

    trainable_parameters(sam, "decoder")
    embedding = torch.zeros(1, 256, 64, 64, device=sam.device)
    meta = models.preprocess(spec, view.image)[1]
    with FlopCounterMode(display=False) as counter:
        logits, target, _ = prompted_logits(sam, spec, embedding, meta, view.mask, np.random.default_rng(0), cfg)
        dice_bce_loss(logits, torch.from_numpy(target).to(sam.device)[None, None]).backward()
    sam.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def bench_train(model: str = "litemedsam", n: int = 4, batch_size: int = 1, device: str | None = None,
                modes: tuple[str, ...] = ("decoder", "full"), peak_tflops: float | None = None,
                encoder_batch: int = 16, seed: int = 0) -> list[dict]:
    """Rows (see KEYS) timing ``n`` training steps of ``batch_size`` phantom images after one warm-up step:

    - ``encode``: one image-encoder call (no grad) — what the cache saves;
    - ``epoch decoder, cached`` / ``epoch decoder, no cache``: an epoch of n steps from cached embeddings
      vs one that encodes every image at every step; ``speedup`` = no-cache time / cached time (goal ≥ 20;
      bounded by (encoder + step FLOPs) / step FLOPs, see ``gflop_per_item`` of both rows);
    - ``step full``: encoder and decoder trained (batched encoder pass with gradients);
    - CUDA only: ``encoder throughput`` at ``encoder_batch`` images under bf16 autocast, with GFLOP per
      image, achieved TFLOP/s and, given ``peak_tflops`` (bf16 dense peak), the fraction of the roofline.
    Box prompts only, so every step costs the same. Memory: CPU peak RSS (process-wide, monotone) or
    CUDA peak allocated per row."""
    flush_denormals()
    device = config.device(device)
    spec = models.get_spec(model)
    sam = models.load_model(model, device=device)
    cfg = TrainConfig(model=model, click_fraction=0.0, batch_size=batch_size, progress=False, device=device)
    pairs = [(img, m) for img, m, _ in make_phantom(n * batch_size + batch_size, seed=seed, spec=PhantomSpec(256))]
    views = build_views(pairs, "none", 1)
    rng = np.random.default_rng(seed)
    rows = []

    # encoder alone (also fills the cache used below)
    cache = EmbeddingCache(model)
    cache.get(sam, spec, views[-1].image)  # warm-up
    _reset_peak(device)
    t = time.perf_counter()
    with autocast(device):
        cache.fill(sam, spec, views[:-1], progress=False)
    _sync(device)
    rows.append(_row("encode", device, 1, len(views) - 1, time.perf_counter() - t))

    def decoder_epoch(use_cache: bool) -> float:
        params = trainable_parameters(sam, "decoder")
        opt = make_optimizer(list(params.values()), cfg, device)
        batches = [views[i * batch_size:(i + 1) * batch_size] for i in range(n + 1)]
        start = None
        for k, batch in enumerate(batches):
            if k == 1:  # batch 0 is the warm-up
                _sync(device)
                start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast(device):
                total = 0.0
                for v in batch:
                    if use_cache:
                        emb, meta = cache.get(sam, spec, v.image, key=v.key, device=device)
                    else:
                        emb, meta = models.encode(sam, spec, v.image)
                    logits, target, _ = prompted_logits(sam, spec, emb, meta, v.mask, rng, cfg)
                    total = total + dice_bce_loss(logits, torch.from_numpy(target).to(device)[None, None])
            (total / len(batch)).backward()
            opt.step()
        _sync(device)
        return time.perf_counter() - start

    if "decoder" in modes:
        _reset_peak(device)
        cached = decoder_epoch(True)
        rows.append(_row("epoch decoder, cached", device, batch_size, n, cached,
                         gflop_per_item=round(decoder_step_gflop(sam, spec, views[0], cfg) * batch_size, 2)))
        _reset_peak(device)
        uncached = decoder_epoch(False)
        rows.append(_row("epoch decoder, no cache", device, batch_size, n, uncached,
                         speedup=round(uncached / cached, 1)))

    if "full" in modes:
        params = trainable_parameters(sam, "full")
        opt = make_optimizer(list(params.values()), cfg, device)
        _reset_peak(device)
        start = None
        for k in range(n + 1):
            if k == 1:
                _sync(device)
                start = time.perf_counter()
            batch = views[k * batch_size:(k + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            with autocast(device):
                encoded = [models.preprocess(spec, v.image) for v in batch]
                emb = sam.image_encoder(torch.cat([x for x, _ in encoded]).to(device))
                total = 0.0
                for j, v in enumerate(batch):
                    logits, target, _ = prompted_logits(sam, spec, emb[j:j + 1], encoded[j][1], v.mask, rng, cfg)
                    total = total + dice_bce_loss(logits, torch.from_numpy(target).to(device)[None, None])
            (total / len(batch)).backward()
            opt.step()
        _sync(device)
        rows.append(_row("step full", device, batch_size, n, time.perf_counter() - start))

    trainable_parameters(sam, "decoder")
    gflop = encoder_gflop(sam, spec)
    if device.startswith("cuda"):
        x = torch.randn(encoder_batch, 3, spec.img_size, spec.img_size, device=device)
        with torch.no_grad(), autocast(device):
            sam.image_encoder(x)  # warm-up
            _reset_peak(device)
            _sync(device)
            t = time.perf_counter()
            for _ in range(n):
                sam.image_encoder(x)
            _sync(device)
        seconds = time.perf_counter() - t
        tflops = gflop * encoder_batch * n / seconds / 1e3
        rows.append(_row("encoder throughput bf16", device, encoder_batch, n * encoder_batch, seconds,
                         gflop_per_item=round(gflop, 2), tflop_per_s=round(tflops, 2),
                         roofline_frac=round(tflops / peak_tflops, 4) if peak_tflops else None))
    else:
        rows[0]["gflop_per_item"] = round(gflop, 2)
        rows[0]["tflop_per_s"] = round(gflop * rows[0]["items_per_s"] / 1e3, 4)
    return rows


if __name__ == "__main__":
    from sas_kit.commands.bench import print_table

    print_table(bench_train())
