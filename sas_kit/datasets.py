"""Prepared datasets: upstream files → aligned (image, mask) pairs → group-disjoint splits → cached Arrow."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import datasets as hf
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sas_kit import adapters, config, phantom, sources
from sas_kit.download import obtain

ADAPTER_VERSION = 1  # bump when reading rules change: invalidates prepared caches
SPLITS = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
SPLIT_SEED = 0
PHANTOM_COUNT = 80

FEATURES = hf.Features({
    "id": hf.Value("string"), "image": hf.Image(), "mask": hf.Image(), "dataset": hf.Value("string"),
    "target": hf.Value("string"), "organ": hf.Value("string"), "group": hf.Value("string"),
    "area_fraction": hf.Value("float32"), "empty": hf.Value("bool"), "height": hf.Value("int32"),
    "width": hf.Value("int32"), "source_file": hf.Value("string"),
})


@dataclass
class Prepared:
    """A prepared dataset: its splits, what was skipped and why, and whether it came from the cache."""

    name: str
    splits: hf.DatasetDict
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cached: bool = False
    empty: int = 0

    def counts(self) -> dict[str, int]:
        return {split: len(self.splits[split]) for split in SPLITS}


def prepared_dir(name: str) -> Path:
    return config.data_root() / "prepared" / name


def is_prepared(name: str) -> bool:
    return (prepared_dir(name) / "prepare.json").exists()


def assign_splits(groups: list[str], fixed: list[str | None] | None = None, seed: int = SPLIT_SEED,
                  fractions: tuple[float, float, float] = FRACTIONS) -> list[str]:
    """A split name per item such that no group spans two splits. Groups are shuffled with ``seed`` and
    filled into train, val, test by item count. Items with a ``fixed`` split (an upstream test folder)
    keep it; the rest fill train and val in the ratio of their fractions."""
    fixed = fixed or [None] * len(groups)
    free = sorted({g for g, f in zip(groups, fixed) if f is None})
    pinned = {g: f for g, f in zip(groups, fixed) if f is not None}
    if any(g in pinned for g in free):
        raise ValueError("a group has items both inside and outside an upstream split")
    rng = np.random.default_rng(seed)
    order = [free[i] for i in rng.permutation(len(free))]
    size = {g: 0 for g in free}
    for g, f in zip(groups, fixed):
        if f is None:
            size[g] += 1
    names = SPLITS if not pinned else SPLITS[:2]
    weights = np.array(fractions[: len(names)]) / sum(fractions[: len(names)])
    bounds = np.cumsum(weights) * sum(size.values())
    chosen, done, k = {}, 0, 0
    for i, g in enumerate(order):
        left = len(order) - i  # keep at least one group for every later split when possible
        while k < len(names) - 1 and (done >= bounds[k] or left <= len(names) - 1 - k and done > 0):
            k += 1
        chosen[g] = names[k]
        done += size[g]
    return [pinned[g] if f is not None else chosen[g] for g, f in zip(groups, fixed)]


def _png(array: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


def _row(src: sources.Source, item: adapters.Item, image: np.ndarray, mask: np.ndarray, source_file: str) -> dict:
    return {
        "id": item.id, "image": _png(image), "mask": _png(mask.astype(np.uint8) * 255), "dataset": src.dataset,
        "target": src.target, "organ": src.organ, "group": item.group, "area_fraction": float(mask.mean()),
        "empty": not bool(mask.any()), "height": image.shape[0], "width": image.shape[1], "source_file": source_file,
    }


def _fingerprint(name: str, root: Path | None, files: list[Path]) -> str:
    digest = hashlib.sha256(f"{name}:{ADAPTER_VERSION}:{FRACTIONS}:{SPLIT_SEED}".encode())
    for p in files:
        digest.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _read_items(src: sources.Source, mirror) -> tuple[list[dict], list[tuple[str, str]], list[str | None], str]:
    """Rows, skipped (path, reason), upstream split hints, and a fingerprint of the inputs."""
    if src.adapter == "phantom":
        rows, fixed = [], []
        for i in range(PHANTOM_COUNT):
            image, mask, _ = phantom.phantom_sample(i, seed=0)
            item = adapters.Item(id=f"phantom_{i:03d}", image=None, group=f"phantom_{i:03d}")
            rows.append(_row(src, item, image, mask, f"phantom:{i}"))
            fixed.append(None)
        return rows, [], fixed, _fingerprint(src.name, None, [])
    root = obtain(src, mirror)
    adapter = adapters.ADAPTERS[src.adapter]
    items, skipped = adapter(root)
    if not items:
        raise adapters.BadItem(f"no {src.name} images found under {root}: expected the upstream layout "
                               f"({src.split_rule}); see data/README.md")
    rows, fixed = [], []
    for item in tqdm(items, desc=f"read {src.name}", unit="img", leave=False):
        try:
            image = adapters.read_image(item.image)
            mask = adapters.read_mask(item.masks, image.shape, label=item.label, fill=item.fill)
        except adapters.BadItem as error:
            skipped.append((str(item.image), str(error)))
            continue
        rows.append(_row(src, item, image, mask, str(item.image.relative_to(root))))
        fixed.append(item.split)
    files = [i.image for i in items] + [m for i in items for m in i.masks]
    return rows, skipped, fixed, _fingerprint(src.name, root, sorted(files))


def prepare(name: str, mirror: Path | str | None = None, force: bool = False) -> Prepared:
    """Prepare ``name`` (a key of ``sources.SOURCES``) as train/val/test Arrow datasets under the data
    root. A second call is a cache hit unless the input files changed or ``force`` is set."""
    src = sources.get(name)
    out = prepared_dir(name)
    if is_prepared(name) and not force:
        info = json.loads((out / "prepare.json").read_text())
        if src.adapter == "phantom" or mirror is None and config.mirror_dir() is None or _same_inputs(src, mirror, info):
            return Prepared(name, hf.load_from_disk(str(out / "arrow")), [tuple(s) for s in info["skipped"]],
                            cached=True, empty=info["empty"])
    rows, skipped, fixed, fingerprint = _read_items(src, mirror)
    split_of = assign_splits([r["group"] for r in rows], fixed)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    parts = {s: [rows[i] for i in order if split_of[i] == s] for s in SPLITS}
    dd = hf.DatasetDict({s: hf.Dataset.from_list(parts[s], features=FEATURES) for s in SPLITS})
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.disable_progress_bars()  # our own tqdm bar already covers the slow part
    try:
        dd.save_to_disk(str(tmp / "arrow"))
    finally:
        hf.enable_progress_bars()
    empty = sum(r["empty"] for r in rows)
    info = {"name": name, "fingerprint": fingerprint, "counts": {s: len(parts[s]) for s in SPLITS},
            "empty": empty, "skipped": skipped, "adapter_version": ADAPTER_VERSION}
    (tmp / "prepare.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return Prepared(name, hf.load_from_disk(str(out / "arrow")), skipped, cached=False, empty=empty)


def _same_inputs(src: sources.Source, mirror, info: dict) -> bool:
    """Whether the located upstream files still match the fingerprint of the prepared copy."""
    try:
        root = obtain(src, mirror)
    except Exception:
        return True  # the inputs are gone but the prepared copy is still valid to use
    adapter = adapters.ADAPTERS[src.adapter]
    items, _ = adapter(root)
    files = [i.image for i in items] + [m for i in items for m in i.masks]
    return _fingerprint(src.name, root, sorted(files)) == info["fingerprint"]


def load(name: str, split: str = "test", limit: int | None = None, mirror: Path | str | None = None) -> hf.Dataset:
    """One split of a prepared dataset (prepared on first use); ``limit`` keeps its first N items."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    ds = prepare(name, mirror).splits[split]
    return ds.select(range(min(limit, len(ds)))) if limit is not None else ds


def to_arrays(example: dict) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxW greyscale image, bool HxW mask) from one dataset example."""
    image = np.asarray(example["image"].convert("L"))
    mask = np.asarray(example["mask"].convert("L")) > 0
    return image, mask


def overview(names: list[str]) -> "pd.DataFrame":
    """One row per dataset: split sizes, skipped and empty counts, and target-size statistics."""
    import pandas as pd

    rows = []
    for name in names:
        prepared = prepare(name)
        fractions = np.concatenate([np.asarray(prepared.splits[s]["area_fraction"]) for s in SPLITS])
        nonzero = fractions[fractions > 0]
        src = sources.get(name)
        rows.append({"dataset": name, "target": src.target, **prepared.counts(), "empty": prepared.empty,
                     "skipped": len(prepared.skipped), "median_area_%": round(100 * float(np.median(nonzero)), 2),
                     "share_under_1%": round(float((nonzero < 0.01).mean()), 3),
                     "share_under_5%": round(float((nonzero < 0.05).mean()), 3)})
    return pd.DataFrame(rows).set_index("dataset")
