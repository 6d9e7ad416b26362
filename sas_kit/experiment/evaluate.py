"""Evaluation: Dice/IoU per image and prompt, size bins, bootstrap confidence intervals of a mean."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sas_kit.experiment.metrics import dice, iou  # noqa: F401  (re-exported: evaluate.dice / evaluate.iou)
from sas_kit.models import prompts as prompts_mod
from sas_kit.models import registry, segment
from sas_kit.models.prompts import components

SIZE_EDGES = (0.01, 0.05, 0.20)  # target area / image area between the size bins
SIZE_BINS = ("<1%", "1-5%", "5-20%", ">20%")


def size_bin(area_fraction: float) -> str:
    """Target size class by area fraction of the image: "<1%", "1-5%", "5-20%", ">20%" (``SIZE_EDGES``)."""
    return SIZE_BINS[int(np.searchsorted(SIZE_EDGES, area_fraction, side="right"))]


def _finite(values, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(values).any():
        raise ValueError(f"{what} contains NaN ({int(np.isnan(values).sum())} of {values.size}); "
                         "drop undefined scores (empty masks) explicitly before computing a CI")
    return values


def _percentile_boot(values: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float, float]:
    n = values.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if n == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bound memory for large n
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap (1 - alpha) CI of the mean, seeded. NaN triple for no values;
    NaN inside ``values`` is an error (nothing silently dropped)."""
    return _percentile_boot(_finite(values, "values"), n_boot, seed, alpha)


def _examples(dataset) -> Iterable[tuple[str, np.ndarray, np.ndarray, dict]]:
    """(id, image, mask, info) from a datasets.Dataset (fields of sas_kit.data.datasets) or a list of
    (image, mask, record) tuples such as sas_kit.data.phantom.make_phantom returns."""
    for i, example in enumerate(dataset):
        if isinstance(example, dict):
            from sas_kit.data.datasets import to_arrays

            image, mask = to_arrays(example)
            info = {k: example.get(k) for k in ("dataset", "target", "organ", "group")}
            yield str(example.get("id", i)), image, mask, info
        else:
            image, mask, record = example
            record = record or {}
            ident = f"phantom-{record.get('seed', 0)}-{record.get('index', i)}"
            yield ident, np.asarray(image), np.asarray(mask, bool), {"dataset": "phantom", "target": "phantom"}


def _embedding(store, sam, spec, ident: str, image: np.ndarray, precision: str):
    """(embedding, meta) from an EmbeddingCache (pixel-keyed), a legacy id-keyed dict, or one encoder call."""
    from sas_kit.experiment.embed_cache import EmbeddingCache

    if isinstance(store, EmbeddingCache):
        return store.get(sam, spec, image, device=sam.device)
    if store is not None and ident in store:
        return store[ident]
    embedding, meta = registry.encode(sam, spec, image, precision=precision)
    if store is not None:
        store[ident] = (embedding, meta)
    return embedding, meta


def evaluate(sam, spec, dataset, prompts: Iterable[str], seed: int = 0, limit: int | None = None,
             embeddings=None, per_component: bool = True, jitter: float = 0.0, progress: bool = True,
             precision: str = "fp32", batch_size: int = 16) -> pd.DataFrame:
    """One row per image × prompt: id, dataset, target, prompt, dice, iou, area_fraction, size_bin,
    n_components, model, per_component.

    Each image is encoded once (under ``precision``) and its embedding reused for every prompt. ``embeddings``
    is an :class:`~sas_kit.experiment.embed_cache.EmbeddingCache` (keyed by pixels, shared across arms, datasets and runs;
    its precision wins) or a dict id → (embedding, meta) that is filled as it goes. Images with an empty mask
    are excluded (Dice undefined): their number is ``df.attrs["skipped_empty"]`` and their ids
    ``df.attrs["skipped_ids"]``. Prompts follow :func:`segment.predict` (per connected component with union by
    default; docs/notes.md); box jitter is seeded per image from ``seed``; click sessions of ``batch_size``
    parts from several images are decoded together (:func:`segment.click_sessions`).
    """
    from sas_kit.models import precision as policy

    spec = registry.get_spec(spec)
    prompts = list(prompts)
    for p in prompts:
        segment.n_clicks(p)  # validates names before any encoding
    if embeddings is not None and hasattr(embeddings, "precision"):
        precision = embeddings.precision
    rows, skipped = [], []
    items = list(dataset) if limit is None else [x for _, x in zip(range(limit), dataset)]
    clicks = max([segment.n_clicks(p) for p in prompts] + [0])
    bar = tqdm(total=len(items), desc=f"evaluate {spec.name}", disable=not progress)
    examples = list(_examples(items))
    with policy.decoder(sam.device, precision):
        for start in range(0, len(examples), batch_size):
            chunk = []
            for i, (ident, image, mask, info) in enumerate(examples[start:start + batch_size], start=start):
                if not mask.any():
                    skipped.append(ident)
                    continue
                embedding, meta = _embedding(embeddings, sam, spec, ident, image, precision)
                parts = components(mask) if per_component else [mask]
                chunk.append((i, ident, image, mask, info, embedding, meta, parts))
            owners = [c for c in chunk for _ in c[7]]
            parts = [p for c in chunk for p in c[7]]
            sessions = segment.click_sessions(
                sam, spec, [c[5] for c in owners], [c[6] for c in owners], parts,
                [c[3] & ~p for c, p in zip(owners, parts)], [clicks] * len(parts), batch_size=batch_size) if clicks else []
            boxes = {}
            for k, prompt in enumerate(prompts):
                if prompt == "box":  # per image, one seeded stream draws the jitter of each part in turn
                    rngs = {c[0]: np.random.default_rng([seed, c[0], k]) for c in chunk}
                    drawn = [prompts_mod.box_from_mask(p, jitter=jitter, rng=rngs[c[0]]) for c, p in zip(owners, parts)]
                    boxes[k] = segment.box_predictions(sam, spec, [c[5] for c in owners], [c[6] for c in owners], drawn,
                                                       batch_size)
            for i, ident, image, mask, info, embedding, meta, own in chunk:
                mine = [j for j, c in enumerate(owners) if c[0] == i]
                area = float(mask.mean())
                for k, prompt in enumerate(prompts):
                    if prompt == "box":
                        pred = np.logical_or.reduce([boxes[k][j] for j in mine])
                    else:  # k-click results are prefixes of one deterministic session per part
                        pred = np.logical_or.reduce([sessions[j].preds[segment.n_clicks(prompt) - 1] for j in mine])
                    rows.append({"id": ident, "dataset": info.get("dataset"), "target": info.get("target"),
                                 "prompt": prompt, "dice": dice(pred, mask), "iou": iou(pred, mask),
                                 "area_fraction": area, "size_bin": size_bin(area), "n_components": len(own),
                                 "model": spec.name, "per_component": per_component})
            bar.update(len(examples[start:start + batch_size]))
    bar.close()
    df = pd.DataFrame(rows, columns=["id", "dataset", "target", "prompt", "dice", "iou", "area_fraction", "size_bin",
                                     "n_components", "model", "per_component"])
    df.attrs["skipped_empty"] = len(skipped)
    df.attrs["skipped_ids"] = skipped
    return df


def summarise(df: pd.DataFrame, seed: int = 0, by: Iterable[str] = ("dataset", "target", "prompt"),
              n_boot: int = 2000) -> pd.DataFrame:
    """Per group (default dataset, target, prompt): n, dice_mean, ci_low, ci_high (bootstrap 95%), iou_mean."""
    by = [c for c in by if c in df.columns]
    out = []
    for key, group in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, lo, hi = bootstrap_ci(group["dice"].to_numpy(), n_boot=n_boot, seed=seed)
        out.append({**dict(zip(by, key)), "n": len(group), "dice_mean": mean, "ci_low": lo, "ci_high": hi,
                    "iou_mean": float(group["iou"].mean())})
    return pd.DataFrame(out, columns=[*by, "n", "dice_mean", "ci_low", "ci_high", "iou_mean"])
