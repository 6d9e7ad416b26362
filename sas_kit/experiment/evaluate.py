"""Evaluation: Dice/IoU per image and prompt, size bins, bootstrap confidence intervals of a mean."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sas_kit.experiment.metrics import clicks_to_reach
from sas_kit.experiment.metrics import dice, iou  # noqa: F401  (re-exported: evaluate.dice / evaluate.iou)
from sas_kit.models import prompts as prompts_mod
from sas_kit.models import registry, segment
from sas_kit.models.prompts import components

SIZE_EDGES = (0.01, 0.05, 0.20)  # target area / image area between the size bins
SIZE_BINS = ("<1%", "1-5%", "5-20%", ">20%")
NOC_THRESHOLDS = (0.85, 0.90)  # the IoU targets RITM/SimpleClick report NoC at
NOC_MAX_CLICKS = 10  # default cap of the NoC click sessions: see evaluate()


def noc_column(threshold: float) -> str:
    """Column name of NoC at an IoU ``threshold``: 0.85 → "noc85", 0.9 → "noc90"."""
    return f"noc{threshold * 100:g}"


def _noc_thresholds(noc) -> tuple[float, ...]:
    thresholds = (float(noc),) if isinstance(noc, (int, float)) else tuple(float(t) for t in noc)
    if not thresholds or not all(0 < t <= 1 for t in thresholds):
        raise ValueError(f"noc thresholds must be IoU values in (0, 1], got {noc!r}")
    if len({noc_column(t) for t in thresholds}) != len(thresholds):
        raise ValueError(f"noc thresholds {thresholds} give duplicate column names")
    return thresholds


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
             precision: str = "fp32", batch_size: int = 16, noc: Sequence[float] | float | None = None,
             max_clicks: int = NOC_MAX_CLICKS, desc: str | None = None) -> pd.DataFrame:
    """One row per image × prompt: id, dataset, target, prompt, dice, iou, area_fraction, size_bin,
    n_components, model, per_component (with ``noc``, also noc85, noc90, max_clicks: see below).

    Each image is encoded once (under ``precision``) and its embedding reused for every prompt. ``embeddings``
    is an :class:`~sas_kit.experiment.embed_cache.EmbeddingCache` (keyed by pixels, shared across arms, datasets and runs;
    its precision wins) or a dict id → (embedding, meta) that is filled as it goes. Images with an empty mask
    are excluded (Dice undefined): their number is ``df.attrs["skipped_empty"]`` and their ids
    ``df.attrs["skipped_ids"]``. Prompts follow :func:`segment.predict` (per connected component with union by
    default; docs/notes.md); box jitter is seeded per image from ``seed``; click sessions of ``batch_size``
    parts from several images are decoded together (:func:`segment.click_sessions`).

    Number of clicks (off by default; then the output is exactly as above): ``noc=(0.85, 0.90)`` (or
    ``NOC_THRESHOLDS``) adds the columns ``noc85``, ``noc90`` (:func:`noc_column`) and ``max_clicks`` to EVERY
    row of an image (computed once per image, the same value on its box and click rows, so each prompt's rows
    still average per image): the number of click ROUNDS after which the union of the parts' predictions first
    has IoU ≥ the threshold with the ground truth. A round gives one corrective click to every part whose
    session is still open (parts' sessions run side by side, as the k-click prompts do: "3click" = 3 rounds),
    so with one part NoC is the click count of RITM/SimpleClick, with several it counts rounds, not clicks.
    A miss within ``max_clicks`` rounds counts as ``max_clicks`` (RITM's convention: NoC ≤ cap; failures
    are the rows with NoC == ``max_clicks``, as RITM counts them). The sessions are the k-click prompts' own,
    run further (k-click rows are unchanged prefixes); an image stops once every threshold is reached and the
    largest k-click prompt is done. ``df.attrs["click_iou"]`` maps id → the union IoU after each round run.

    Why ``max_clicks`` = 10, not RITM's 20: every round is one mask-decoder call per open part (plus postprocess
    and the next click), and most ultrasound sessions never reach IoU 0.90 (zero-shot clicks barely work,
    docs/notes.md), so they run to the cap and the cost is linear in it. Measured with LiteMedSAM on the shared
    2-core CPU (16 phantom images, cached embeddings, all 5 prompts): 0.9 s per target without NoC, 3.1 s with
    a cap of 10, 5.6 s with 20; for ~877 targets x ~11 arm-seeds (≈ 9,600 targets) that is ≈ +5.5 h of CPU for
    10 against ≈ +12.5 h for 20. NoC values below 10 are the same under both caps; pass ``max_clicks=20`` to
    match RITM's tables where a GPU makes it cheap.

    ``desc`` names the progress bar (default "evaluate <model>"): callers say what they score.
    """
    from sas_kit.models import precision as policy

    spec = registry.get_spec(spec)
    prompts = list(prompts)
    for p in prompts:
        segment.n_clicks(p)  # validates names before any encoding
    thresholds = _noc_thresholds(noc) if noc is not None else ()
    if thresholds and max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    if embeddings is not None and hasattr(embeddings, "precision"):
        precision = embeddings.precision
    rows, skipped, curves = [], [], {}
    items = list(dataset) if limit is None else [x for _, x in zip(range(limit), dataset)]
    clicks = max([segment.n_clicks(p) for p in prompts] + [0])
    rounds = max(clicks, max_clicks) if thresholds else clicks
    bar = tqdm(total=len(items), desc=desc or f"evaluate {spec.name}", disable=not progress)
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
            members = {c[0]: [j for j, o in enumerate(owners) if o[0] == c[0]] for c in chunk}
            curve = {c[0]: [] for c in chunk}  # union IoU after each round, per image (NoC only)
            unfinished = {c[0]: c[3] for c in chunk}  # image index -> gt mask, until its NoC is known

            def stop(r, sessions, unfinished=unfinished, members=members, curve=curve):
                """After round r: record each unfinished image's union IoU; close it once its NoC is known."""
                closed = []
                for i, gt in list(unfinished.items()):
                    union = np.logical_or.reduce([sessions[j].preds[-1] for j in members[i]])
                    curve[i].append(iou(union, gt))
                    best = max(curve[i])
                    if r >= clicks and (r >= max_clicks or all(best >= t for t in thresholds)):
                        del unfinished[i]
                        closed += members[i]
                return closed

            sessions = segment.click_sessions(
                sam, spec, [c[5] for c in owners], [c[6] for c in owners], parts,
                [c[3] & ~p for c, p in zip(owners, parts)], [rounds] * len(parts), batch_size=batch_size,
                stop=stop if thresholds else None) if rounds else []
            boxes = {}
            for k, prompt in enumerate(prompts):
                if prompt == "box":  # per image, one seeded stream draws the jitter of each part in turn
                    rngs = {c[0]: np.random.default_rng([seed, c[0], k]) for c in chunk}
                    drawn = [prompts_mod.box_from_mask(p, jitter=jitter, rng=rngs[c[0]]) for c, p in zip(owners, parts)]
                    boxes[k] = segment.box_predictions(sam, spec, [c[5] for c in owners], [c[6] for c in owners], drawn,
                                                       batch_size)
            for i, ident, image, mask, info, embedding, meta, own in chunk:
                mine = members[i]
                area = float(mask.mean())
                extra = {}
                if thresholds:
                    curves[ident] = curve[i]
                    extra = {**{noc_column(t): clicks_to_reach(curve[i], t, max_clicks) for t in thresholds},
                             "max_clicks": max_clicks}
                for k, prompt in enumerate(prompts):
                    if prompt == "box":
                        pred = np.logical_or.reduce([boxes[k][j] for j in mine])
                    else:  # k-click results are prefixes of one deterministic session per part
                        pred = np.logical_or.reduce([sessions[j].preds[segment.n_clicks(prompt) - 1] for j in mine])
                    rows.append({"id": ident, "dataset": info.get("dataset"), "target": info.get("target"),
                                 "prompt": prompt, "dice": dice(pred, mask), "iou": iou(pred, mask),
                                 "area_fraction": area, "size_bin": size_bin(area), "n_components": len(own),
                                 "model": spec.name, "per_component": per_component, **extra})
            bar.update(len(examples[start:start + batch_size]))
            policy.trim_heap()  # the chunk's decoder activations and masks are freed: return their heap pages
    bar.close()
    columns = ["id", "dataset", "target", "prompt", "dice", "iou", "area_fraction", "size_bin", "n_components",
               "model", "per_component"]
    if thresholds:
        columns += [noc_column(t) for t in thresholds] + ["max_clicks"]
    df = pd.DataFrame(rows, columns=columns)
    df.attrs["skipped_empty"] = len(skipped)
    df.attrs["skipped_ids"] = skipped
    if thresholds:
        df.attrs["click_iou"] = curves
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
