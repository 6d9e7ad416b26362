"""Scoring benchmark: seconds per target of :func:`evaluate` (box, 1-5 clicks and NoC) with the reference decoder
and with the fast decode path (:func:`sas_kit.models.registry.set_fast_decode`), with glibc's default heap and the
engine's (:func:`sas_kit.models.precision.fast_heap`), and the Dice/NoC changes."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from sas_kit import config
from sas_kit.cli import machine
from sas_kit.data import datasets
from sas_kit.experiment.embed_cache import EmbeddingCache
from sas_kit.experiment.evaluate import evaluate
from sas_kit.models import precision as precision_policy
from sas_kit.models import prompts as prompt_names
from sas_kit.models import fast_decode, registry

WAYS = ("reference", "fast-chunk16", "fast-chunk1", "fast", "fast-1thread", "fast-heap")
NOC = (0.85, 0.90)
def cpu_flags(way: str | None = None) -> str:
    """The CPU's SIMD flags that matter for bf16/fp32 matmuls, and the thread count ``way`` ran with (torch's, or 1
    for ``fast-1thread``, which :func:`_way` limits to one thread)."""
    return machine.cpu_label(1 if way == "fast-1thread" else None)


def _items(names, n):
    out = []
    for name in names:
        if name == "phantom" or datasets.available(name):
            out += list(datasets.load(name, "test", n))
    return out


def _rows_per_decode(way: str) -> int:
    """Rows per decoder call of a way: N for ``fast-chunkN``, the kit's CHUNK for the other fast ways, and
    evaluate's batch of 16 for Meta's decoder (which is not chunked)."""
    if way.startswith("fast-chunk"):
        return int(way[len("fast-chunk"):])
    return fast_decode.CHUNK if way.startswith("fast") else 16


@contextlib.contextmanager
def _way(way: str):
    """``reference``: Meta's decoder (the fast path off). ``reference-nhwc``: the same with the summed image
    embedding handed over channels-last, a layout-only change that shows how far bf16 results move when nothing
    but memory order changes (the noise floor of any re-ordered decoder). ``fast``: the fast no-grad path.
    ``fast-1thread``: the same with torch limited to one thread (on a loaded 2-core machine each parallel op
    waits for a descheduled thread). ``fast-heap``: the fast path with the experiment engine's heap settings
    (:func:`sas_kit.models.precision.fast_heap`, process-wide and not undone: :func:`bench_score` measures it after
    every other way). ``fast-chunkN``: the fast path decoding N rows at a time instead of
    :data:`fast_decode.CHUNK` (``fast-chunk16``: evaluate's whole batches of 16 parts, the path before chunking)."""
    previous = registry.set_fast_decode(way.startswith("fast"))
    threads, chunk = torch.get_num_threads(), fast_decode.CHUNK
    original = registry._predict_masks
    if way.startswith("fast"):
        fast_decode.CHUNK = _rows_per_decode(way)
    if way == "reference-nhwc":
        def nhwc(decoder, image_embeddings, image_pe, sparse, dense):
            src = (image_embeddings + dense).contiguous(memory_format=torch.channels_last)
            return original(decoder, src, image_pe, sparse, torch.zeros_like(dense[:1, :, :1, :1]))
        registry._predict_masks = nhwc
    if way == "fast-1thread":
        torch.set_num_threads(1)
    if way == "fast-heap" and not precision_policy.fast_heap():
        raise ValueError("fast-heap: the heap settings are not available here (not glibc, SAS_KIT_HEAP=default or "
                         "a memory-bounded process); leave this way out")
    try:
        yield
    finally:
        registry._predict_masks = original
        fast_decode.CHUNK = chunk
        torch.set_num_threads(threads)
        registry.set_fast_decode(previous)


def _score(sam, spec, items, cache, way: str, max_clicks: int):
    with _way(way):
        t = time.perf_counter()
        df = evaluate(sam, spec, items, prompt_names.PROMPTS, embeddings=cache, noc=NOC, max_clicks=max_clicks,
                      progress=False)
        return time.perf_counter() - t, df


def bench_score(model: str = "litemedsam", names: tuple[str, ...] | None = None, n: int | None = None,
                reps: int = 1, max_clicks: int = 10, device: str | None = None, precision: str | None = None,
                ways: tuple[str, ...] = WAYS) -> list[dict]:
    """One row per way (:func:`_way`; reference decode, fast decode, ...): seconds per target of a full scoring pass (box, 1-5
    clicks, NoC at 0.85/0.90 up to ``max_clicks``) over the first ``n`` test images of each set (default BUSI
    and the USGRA nerve, 8 each; the phantom without data), timed A B A B ... ``reps`` times in this one process
    on cached embeddings (encoding is not timed); the best time per way counts. Accuracy columns compare each way
    with the reference: mean |ΔDice| per prompt (``d_<prompt>``), the largest per-image |ΔDice| over all prompts
    and how many images' NoC differ."""
    device = config.device(device)
    precision = precision_policy.resolve(precision, device)
    names = names or (("busi", "usgra_nerve") if datasets.available("busi") else ("phantom",))
    items = _items(names, 8 if n is None else n)
    if not items:
        raise ValueError(f"no test images in {names}")
    sam = registry.load_model(model, device=device)
    spec = registry.get_spec(model)
    cache = EmbeddingCache(model, root=True, precision=precision, device=device)
    cache.fill(sam, spec, [datasets.to_arrays(ex)[0] for ex in items], progress=False)
    _score(sam, spec, items[:1], cache, "fast", 1)  # warm-up: weight conversion, allocator
    heap = [w for w in ways if w == "fast-heap"]  # last: the engine's heap cannot be undone in this process
    ways = ("reference", *[w for w in ways if w not in ("reference", "fast-heap")], *heap)
    times = {w: [] for w in ways}
    frames = {}
    for batch in (ways[:len(ways) - len(heap)], heap):
        for _ in range(max(1, reps)):
            for way in batch:
                seconds, frames[way] = _score(sam, spec, items, cache, way, max_clicks)
                times[way].append(seconds)
    ref = frames["reference"].set_index(["id", "prompt"]).sort_index()
    targets = ref.reset_index()["id"].nunique()
    rows = []
    for way in ways:
        df = frames[way].set_index(["id", "prompt"]).sort_index()
        delta = (df["dice"] - ref["dice"]).abs()
        per_prompt = delta.groupby(level="prompt").mean()
        noc_cols = [c for c in df.columns if c.startswith("noc")]
        noc_diff = int((df[noc_cols].xs("box", level="prompt") != ref[noc_cols].xs("box", level="prompt"))
                       .any(axis=1).sum())
        best = min(times[way])
        rows.append({"way": way, "chunk": _rows_per_decode(way), "precision": precision,
                     "heap": "engine" if way == "fast-heap" else "default",
                     "targets": targets,
                     "s_per_target": round(best / targets, 3),
                     "speedup": round(min(times["reference"]) / best, 2),
                     **{f"d_{p}": round(float(per_prompt.get(p, np.nan)), 4) for p in prompt_names.PROMPTS},
                     "max_image_d": round(float(delta.max()), 4), "noc_differ": noc_diff, "cpu": cpu_flags(way)})
    return rows
