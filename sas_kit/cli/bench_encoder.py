"""Encoder precision benchmark: seconds per image in fp32 and bf16, and the zero-shot box-Dice change on test sets."""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from sas_kit import config
from sas_kit.data import datasets
from sas_kit.experiment.embed_cache import EmbeddingCache
from sas_kit.experiment.evaluate import evaluate
from sas_kit.experiment.protocol import EXTERNALS, INTERNAL
from sas_kit.models import registry

KEYS = ("dataset", "n", "fp32_s_per_image", "bf16_s_per_image", "speedup", "box_dice_fp32", "box_dice_bf16",
        "delta", "max_abs_image_delta")


def bench_encoder(model: str = "litemedsam", names: tuple[str, ...] | None = None, n: int | None = None,
                  device: str | None = None) -> list[dict]:
    """One row per dataset (test split, first ``n`` images): encoder s/image in each precision (in-memory caches,
    so every image is encoded once per precision) and mean zero-shot box Dice under each full precision policy
    (encoder and decoder), with their difference. The kit keeps bf16 as the default only while ``delta`` stays
    under 0.005 on every set (docs/notes.md). A last row averages the datasets."""
    device = config.device(device)
    names = names or ((INTERNAL, *EXTERNALS) if datasets.available(INTERNAL) else ("phantom",))
    sam = registry.load_model(model, device=device)
    spec = registry.get_spec(model)
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
        rows.append({k: row.get(k) for k in KEYS})
    if len(rows) > 1:
        mean = {k: round(float(np.mean([r[k] for r in rows if r[k] is not None])), 4) for k in KEYS[2:]}
        rows.append({"dataset": "mean", "n": sum(r["n"] for r in rows), **mean})
    return rows
