"""Prepared datasets: upstream files → aligned (image, mask) pairs → group-disjoint splits → cached Arrow."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import datasets as hf
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sas_kit import config
from sas_kit.data import adapter_io, adapters, phantom, sources
from sas_kit.data.download import COMPLETE_MARKER, find_local, obtain

ADAPTER_VERSION = 2  # bump when reading rules change: invalidates prepared caches
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
    source: str = ""  # the folder the copy was made from ("" for the phantom)
    note: str = ""  # why a cached copy was used without checking its inputs, if so

    def counts(self) -> dict[str, int]:
        return {split: len(self.splits[split]) for split in SPLITS}


def prepared_dir(name: str) -> Path:
    return config.data_root() / "prepared" / name


def is_prepared(name: str) -> bool:
    return (prepared_dir(name) / "prepare.json").exists()


def available(name: str) -> bool:
    """The one "real data or phantom?" rule: ``name`` can be loaded here without asking the user (the phantom,
    a prepared copy, or a mirror to prepare it from)."""
    return name == "phantom" or is_prepared(name) or config.mirror_dir() is not None


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


def _recipe(name: str) -> str:
    """What besides the input files decides the prepared copy: reading rules and split settings."""
    return f"{name}:{ADAPTER_VERSION}:{FRACTIONS}:{SPLIT_SEED}"


def fingerprint(root: Path | None) -> dict:
    """A fingerprint of every file under ``root``: relative path, size and modification time (ns), hashed.
    Stat-based rather than content hashes so that checking a 10,000-file folder on every ``load`` costs
    milliseconds, not a full read; any edit, replacement, addition or removal changes it (a rewrite that
    keeps both size and mtime is the blind spot: use ``--force`` then)."""
    if root is None:
        return {"root": "", "files": 0, "bytes": 0, "digest": ""}
    digest, count, total = hashlib.sha256(), 0, 0
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != COMPLETE_MARKER:
            st = p.stat()
            digest.update(f"{p.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            count, total = count + 1, total + st.st_size
    return {"root": str(root.resolve()), "files": count, "bytes": total, "digest": digest.hexdigest()[:20]}


def _unusable(src: sources.Source, root: Path, seen: dict, skipped: list[tuple[str, str]]) -> adapter_io.UnusableData:
    lines = [f"{src.name}: no usable image/mask pair under {root}",
             f"seen: {seen['files']} files ({seen['images']} image files); skipped: {len(skipped)}"]
    lines += adapter_io.skip_summary(skipped) or ["no file name matched the expected layout"]
    lines.append(f"expected layout: {src.layout or src.split_rule}")
    lines.append("see data/README.md for where to get the data and which folder to place")
    return adapter_io.UnusableData("\n  ".join(lines))


def _read_items(src: sources.Source, root: Path) -> tuple[list[dict], list[tuple[str, str]], list[str | None]]:
    """Rows, skipped (path, reason) and upstream split hints read from ``root``."""
    adapter = adapters.ADAPTERS[src.adapter]
    items, skipped = adapter(root)
    rows, fixed = [], []
    for item in tqdm(items, desc=f"read {src.name}", unit="img", leave=False):
        try:
            image = adapter_io.read_image(item.image)
            mask = adapter_io.read_mask(item.masks, image.shape, label=item.label, fill=item.fill,
                                      polygons=item.polygons)
        except adapter_io.BadItem as error:
            skipped.append((str(item.image.relative_to(root)), str(error)))
            continue
        rows.append(_row(src, item, image, mask, str(item.image.relative_to(root))))
        fixed.append(item.split)
    if not rows:
        seen = {"files": sum(p.is_file() for p in root.rglob("*")), "images": len(adapters.files(root))}
        raise _unusable(src, root, seen, skipped)
    return rows, skipped, fixed


def _phantom_rows(src: sources.Source) -> tuple[list[dict], list[tuple[str, str]], list[str | None]]:
    rows = []
    for i in range(PHANTOM_COUNT):
        image, mask, _ = phantom.phantom_sample(i, seed=0)
        item = adapters.Item(id=f"phantom_{i:03d}", image=None, group=f"phantom_{i:03d}")
        rows.append(_row(src, item, image, mask, f"phantom:{i}"))
    return rows, [], [None] * len(rows)


def _split_dataset(rows: list[dict]) -> hf.Dataset:
    if not rows:  # a tiny set can leave a split empty; from_list([]) cannot carry the features
        return hf.Dataset.from_dict({k: [] for k in FEATURES}, features=FEATURES)
    return hf.Dataset.from_list(rows, features=FEATURES)


def _cached(name: str, info: dict, note: str = "") -> Prepared:
    return Prepared(name, hf.load_from_disk(str(prepared_dir(name) / "arrow")), [tuple(s) for s in info["skipped"]],
                    cached=True, empty=info["empty"], source=info.get("inputs", {}).get("root", ""), note=note)


def prepare(name: str, mirror: Path | str | None = None, force: bool = False) -> Prepared:
    """Prepare ``name`` (a key of ``sources.SOURCES``) as train/val/test Arrow datasets under the data root.

    The copy records the folder it was read from and a fingerprint of that folder (``fingerprint``).
    A later call locates the inputs configured now (``mirror`` or ``$SAS_KIT_MIRROR``, then ``raw/``) and
    reuses the copy only if folder and fingerprint both match; otherwise it rebuilds, so a copy made from
    another mirror or from since-changed files is never returned. Only when no input is configured or
    placed at all is the existing copy used as is (``Prepared.note`` says so). ``force`` always rebuilds."""
    src = sources.get(name)
    out = prepared_dir(name)
    info = json.loads((out / "prepare.json").read_text()) if is_prepared(name) else None
    if info is not None and (info.get("recipe") != _recipe(name) or force):
        info = None
    if src.adapter == "phantom":
        if info is not None:
            return _cached(name, info)
        inputs, (rows, skipped, fixed) = fingerprint(None), _phantom_rows(src)
    else:
        root = find_local(src, mirror)
        nothing_configured = root is None and mirror is None and config.mirror_dir() is None
        if info is not None and root is None and nothing_configured:
            return _cached(name, info, note=f"inputs not found now; using the copy prepared from "
                                            f"{info['inputs']['root']} ({info['inputs']['files']} files)")
        root = root or obtain(src, mirror)
        inputs = fingerprint(root)  # taken before reading: a change during the read shows up next time
        if info is not None and info.get("inputs") == inputs:
            return _cached(name, info)
        rows, skipped, fixed = _read_items(src, root)
    split_of = assign_splits([r["group"] for r in rows], fixed)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    parts = {s: [rows[i] for i in order if split_of[i] == s] for s in SPLITS}
    dd = hf.DatasetDict({s: _split_dataset(parts[s]) for s in SPLITS})
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # two processes never write into one folder
    shutil.rmtree(tmp, ignore_errors=True)
    hf.disable_progress_bars()  # our own tqdm bar already covers the slow part
    try:
        # an empty split saved with the default 0 shards cannot be loaded back: give it one
        dd.save_to_disk(str(tmp / "arrow"), num_shards={s: 1 for s in SPLITS if not parts[s]})
    finally:
        hf.enable_progress_bars()
    empty = sum(r["empty"] for r in rows)
    info = {"name": name, "recipe": _recipe(name), "inputs": inputs, "counts": {s: len(parts[s]) for s in SPLITS},
            "empty": empty, "skipped": skipped, "adapter_version": ADAPTER_VERSION}
    (tmp / "prepare.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return Prepared(name, hf.load_from_disk(str(out / "arrow")), skipped, cached=False, empty=empty,
                    source=inputs["root"])


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


def overview(names: list[str]):
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
