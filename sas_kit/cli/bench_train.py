"""Training-step cost: prompted samples/s one by one (full-size loss), batched through Meta's decoder and batched
through the fast decode (low-res loss both), GFLOP per sample and the share of a peak, encoder s/image per
precision, full mode, memory."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch

from sas_kit import config
from sas_kit.cli import machine
from sas_kit.data.phantom import PhantomSpec, make_phantom
from sas_kit.experiment.embed_cache import EmbeddingCache, build_views
from sas_kit.experiment.run import RunSpec
from sas_kit.experiment.train import flush_denormals, make_optimizer, trainable_parameters
from sas_kit.experiment.train_step import dice_bce_loss, step_loss
from sas_kit.models import precision as policy
from sas_kit.models import registry

KEYS = ("measure", "device", "batch", "n", "seconds", "per_item_s", "items_per_s", "speedup", "peak_mem_mib",
        "gflop_per_item", "gflop_per_s", "peak_frac", "cpu")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mib(device: str) -> float:
    """CUDA: peak allocated so far. CPU: the process's peak RSS so far (it never goes down)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _row(measure: str, device: str, batch: int, n: int, seconds: float, **extra) -> dict:
    row = dict.fromkeys(KEYS)
    row.update(measure=measure, device=device, batch=batch, n=n, seconds=round(seconds, 3),
               per_item_s=round(seconds / n, 4), items_per_s=round(n / seconds, 2),
               peak_mem_mib=round(_peak_mib(device)),
               cpu=machine.cpu_label())  # every bench table names its CPU
    row.update(extra)
    return row


def _gflop(fn) -> float:
    """GFLOPs of the matmuls and convolutions ``fn`` runs, forward and backward (torch.profiler's count)."""
    from torch.profiler import profile

    with profile(with_flops=True) as prof:
        fn()
    return sum(e.flops or 0 for e in prof.key_averages()) / 1e9


def legacy_loss(sam, spec, pairs, masks, rng, click_fraction: float, max_clicks: int, jitter: float) -> torch.Tensor:
    """The step before batching (kept only to measure against): one decode per sample, upsampled to the original
    size, loss there. Same prompt rules as :func:`sas_kit.experiment.train_step.step_loss`."""
    from sas_kit.models import prompts, segment

    total = 0.0
    for (emb, meta), mask in zip(pairs, masks):
        if rng.random() >= click_fraction:
            _, _, logits = registry.decode(sam, spec, emb, meta, boxes=prompts.box_from_mask(mask, jitter, rng)[None])
        else:
            n = int(rng.integers(1, max_clicks + 1))
            s = segment.click_sessions(sam, spec, [emb], [meta], [mask], [np.zeros_like(mask)], [n])[0]
            _, _, logits = registry.decode(sam, spec, emb, meta, points=np.asarray(s.points, np.float32),
                                         labels=np.asarray(s.labels), mask_input=s.low_res if n > 1 else None)
        total = total + dice_bce_loss(logits, torch.from_numpy(mask).to(logits.device)[None, None])
    return total / len(masks)


def bench_train(model: str = "litemedsam", n: int = 6, batch_size: int = 8, device: str | None = None,
                modes: tuple[str, ...] = ("decoder", "full"), peak_gflops: float | None = None,
                seed: int = 0) -> list[dict]:
    """Rows (see KEYS), on phantom images (256 px), after one warm-up batch each:

    - ``encode fp32`` / ``encode bf16``: one image-encoder call per image (what the embedding cache saves);
      ``speedup`` of bf16 over fp32;
    - ``train before`` / ``train after``: prompted training samples per second of ``n`` optimiser steps of
      ``batch_size`` samples from cached embeddings — half boxes, half 1–3 iterative clicks, as the cpu profile
      trains. Before: one decode per sample and the loss at the original size (the kit's earlier step). After:
      :func:`sas_kit.experiment.train_step.step_loss` (equal prompts decoded together, loss on 256² low-res logits)
      through the fast decode path (:mod:`sas_kit.models.fast_decode`, gradients included); ``train reference
      decode``: the same step through Meta's modules (``SAS_KIT_FAST_DECODE=0``). ``speedup``: over ``train
      before``.
      ``gflop_per_item``: decoder FLOPs per sample (forward + backward, click passes included);
      ``gflop_per_s`` achieved, ``peak_frac`` its share of ``peak_gflops`` when given (this CPU's peak);
    - ``step full``: encoder and decoder trained together (batched encoder pass with gradients).
    Memory: CPU peak RSS so far (process-wide) or CUDA peak allocated."""
    flush_denormals()
    device = config.device(device)
    spec = registry.get_spec(model)
    sam = registry.load_model(model, device=device)
    total = (n + 1) * batch_size
    pairs = [(img, m) for img, m, _ in make_phantom(total, seed=seed, spec=PhantomSpec(256))]
    views = build_views(pairs, "none", 1)
    rows = []
    caches = {}
    for precision in ("fp32", "bf16"):
        cache = caches[precision] = EmbeddingCache(model, precision=precision, device=device)
        cache.get(sam, spec, views[-1].image)  # warm-up
        t = time.perf_counter()
        cache.fill(sam, spec, views[:-1], progress=False)
        _sync(device)
        rows.append(_row(f"encode {precision}", device, 1, len(views) - 1, time.perf_counter() - t))
    rows[1]["speedup"] = round(rows[0]["seconds"] / rows[1]["seconds"], 2)
    cfg = RunSpec.build(model=model, batch_size=batch_size, device=device, data_key="bench")  # lr, weight decay
    prec = policy.resolve(None, device)

    def epoch(loss_fn) -> tuple[float, float]:
        params = trainable_parameters(sam, "decoder")
        opt = make_optimizer(list(params.values()), cfg, device)
        rng = np.random.default_rng(seed)
        batches = [views[i * batch_size:(i + 1) * batch_size] for i in range(n + 1)]
        start, flops = None, 0.0
        for k, batch in enumerate(batches):
            if k == 1:  # batch 0 is the warm-up
                _sync(device)
                start = time.perf_counter()
            p = [caches[prec].get(sam, spec, v.image, key=v.key, device=device) for v in batch]
            opt.zero_grad(set_to_none=True)

            def run():
                with policy.decoder(device, prec):
                    loss = loss_fn(sam, spec, p, [v.mask for v in batch], rng, 0.5, 3, 0.05)
                loss.backward()

            if k == 0:
                flops = _gflop(run)
            else:
                run()
            opt.step()
        _sync(device)
        return time.perf_counter() - start, flops / batch_size

    if "decoder" in modes:
        for name, fn, fast in (("train before", legacy_loss, False), ("train reference decode", step_loss, False),
                               ("train after", step_loss, True)):
            previous = registry.set_fast_decode(fast)
            try:
                seconds, gflop = epoch(fn)
            finally:
                registry.set_fast_decode(previous)
            rate = gflop * n * batch_size / seconds
            rows.append(_row(name, device, batch_size, n * batch_size, seconds, gflop_per_item=round(gflop, 2),
                             gflop_per_s=round(rate, 1), peak_frac=round(rate / peak_gflops, 3) if peak_gflops else None))
        for row in rows[-2:]:
            row["speedup"] = round(rows[-3]["seconds"] / row["seconds"], 2)  # over the one-by-one step

    if "full" in modes:
        params = trainable_parameters(sam, "full")
        opt = make_optimizer(list(params.values()), cfg, device)
        rng = np.random.default_rng(seed)
        start = None
        steps = min(n, 2)
        for k in range(steps + 1):
            if k == 1:
                _sync(device)
                start = time.perf_counter()
            batch = views[k * 2:(k + 1) * 2]
            opt.zero_grad(set_to_none=True)
            with policy.decoder(device, prec):
                encoded = [registry.preprocess(spec, v.image) for v in batch]
                with policy.encoder(device, prec):
                    emb = sam.image_encoder(torch.cat([x for x, _ in encoded]).to(device)).float()
                loss = step_loss(sam, spec, [(emb[j:j + 1], e[1]) for j, e in enumerate(encoded)],
                                 [v.mask for v in batch], rng)
            loss.backward()
            opt.step()
        _sync(device)
        rows.append(_row("step full", device, 2, steps * 2, time.perf_counter() - start))
    trainable_parameters(sam, "decoder")
    return rows
