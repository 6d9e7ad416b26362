"""Encoder precision benchmark: seconds per image in fp32 and bf16, and the zero-shot box-Dice change on test sets."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from sas_kit import config
from sas_kit.data import datasets
from sas_kit.experiment.embed_cache import EmbeddingCache
from sas_kit.experiment.evaluate import evaluate
from sas_kit.experiment.protocol import EXTERNALS, INTERNAL
from sas_kit.models import registry

KEYS = ("dataset", "n", "fp32_s_per_image", "bf16_s_per_image", "speedup", "box_dice_fp32", "box_dice_bf16",
        "delta", "max_abs_image_delta", "fp32_gflops", "fp32_peak_gflops", "bf16_gflops", "bf16_peak_gflops")


def encoder_gflop(sam, spec) -> float:
    """GFLOP of one image-encoder forward (matmuls and convolutions, counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, spec.img_size, spec.img_size, device=sam.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        sam.image_encoder(x)
    return counter.get_total_flops() / 1e9


def matmul_peak_gflops(dtype: torch.dtype, device: str = "cpu", size: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` GFLOP/s of one ``size`` x ``size`` torch.matmul in ``dtype``: the CPU's (or GPU's)
    practical matmul peak with torch's threads, to put the encoder's achieved GFLOP/s beside."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.matmul(a, b)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best / 1e9


def bench_encoder(model: str = "litemedsam", names: tuple[str, ...] | None = None, n: int | None = None,
                  device: str | None = None) -> list[dict]:
    """One row per dataset (test split, first ``n`` images): encoder s/image in each precision (in-memory caches,
    so every image is encoded once per precision) and mean zero-shot box Dice under each full precision policy
    (encoder and decoder), with their difference. The kit keeps bf16 as the default only while ``delta`` stays
    under 0.005 on every set (docs/notes.md). A last row averages the datasets. ``<precision>_gflops`` is the
    encoder's achieved GFLOP/s (:func:`encoder_gflop` / s per image), ``<precision>_peak_gflops`` the measured
    matmul peak of the machine in that dtype (:func:`matmul_peak_gflops`; on a loaded machine both are lower)."""
    device = config.device(device)
    names = names or ((INTERNAL, *EXTERNALS) if datasets.available(INTERNAL) else ("phantom",))
    sam = registry.load_model(model, device=device)
    spec = registry.get_spec(model)
    gflop = encoder_gflop(sam, spec)
    peaks = {p: matmul_peak_gflops(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in ("fp32", "bf16")}
    rows = []
    caches = {p: EmbeddingCache(model, precision=p, device=device) for p in ("fp32", "bf16")}  # USGRA shares images
    for name in tqdm(names, desc="bench encoder"):
        items = list(datasets.load(name, "test", n))
        row = {"dataset": name}
        scores = {}
        for precision, cache in caches.items():
            images = [datasets.to_arrays(ex)[0] for ex in items]
            cache.get(sam, spec, images[0])  # warm-up (not timed)
            t = time.perf_counter()
            calls = cache.fill(sam, spec, images[1:], progress=False)
            row[f"{precision}_s_per_image"] = round((time.perf_counter() - t) / calls, 3) if calls else None
            scores[precision] = evaluate(sam, spec, items, ["box"], embeddings=cache, progress=False)
        a, b = scores["fp32"].dice.to_numpy(), scores["bf16"].dice.to_numpy()
        fast = row["fp32_s_per_image"] and row["bf16_s_per_image"]
        row.update(n=len(a), speedup=round(row["fp32_s_per_image"] / row["bf16_s_per_image"], 2) if fast else None,
                   box_dice_fp32=round(float(a.mean()), 4), box_dice_bf16=round(float(b.mean()), 4),
                   delta=round(float(b.mean() - a.mean()), 4), max_abs_image_delta=round(float(np.abs(b - a).max()), 4))
        for p in ("fp32", "bf16"):
            seconds = row[f"{p}_s_per_image"]
            row[f"{p}_gflops"] = round(gflop / seconds, 1) if seconds else None
            row[f"{p}_peak_gflops"] = round(peaks[p], 1)
        rows.append({k: row.get(k) for k in KEYS})
    if len(rows) > 1:
        mean = {k: round(float(np.mean([r[k] for r in rows if r[k] is not None])), 4) for k in KEYS[2:]}
        rows.append({"dataset": "mean", "n": sum(r["n"] for r in rows), **mean})
    return rows
