"""Augmented samples drawn from a prepared dataset, and writing them to disk (what ``sas-kit augment`` does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from sas_kit.augment.policy import Policy, make_policy


def source_pairs(data: str, split: str = "train", limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, uint8 HxW image, bool HxW mask) for the first ``limit`` items of a prepared dataset split."""
    from sas_kit.data import datasets

    ds = datasets.load(data, split=split, limit=limit)
    if len(ds) == 0:
        raise ValueError(f"dataset {data!r} split {split!r} has no images; try another --split "
                         f"(`sas-kit data prepare {data}` lists the counts)")
    return [(ex["id"], *datasets.to_arrays(ex)) for ex in ds]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of sample ``index``: each sample can be regenerated on its own."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def generate(pairs: list[tuple[str, np.ndarray, np.ndarray]], policy: Policy, n: int, seed: int = 0) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict]]:
    """``n`` augmented samples (sample_id, image, mask, record), cycling over ``pairs``; sample i uses
    :func:`sample_rng` (seed, i), so the output depends only on (pairs, policy, seed), not on order."""
    if not pairs:
        raise ValueError("no source images to augment")
    for i in range(n):
        source_id, image, mask = pairs[i % len(pairs)]
        out, out_mask, record = policy(image, mask, sample_rng(seed, i))
        sample_id = f"{i:04d}_{source_id}"
        record = {"id": sample_id, "source_id": source_id, "index": i, "seed": seed, **record, "params": policy.params}
        yield sample_id, out, out_mask, record


def write_sample(out_dir: Path, sample_id: str, image: np.ndarray, mask: np.ndarray, record: dict) -> None:
    """``<id>_image.png``, ``<id>_mask.png`` (0/255) and ``<id>.json`` (the record) in ``out_dir``."""
    Image.fromarray(image).save(out_dir / f"{sample_id}_image.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / f"{sample_id}_mask.png")
    (out_dir / f"{sample_id}.json").write_text(json.dumps(record, indent=1))


def augment_to_dir(data: str, policy: str, n: int, seed: int, out: str | Path, split: str = "train",
                   limit: int | None = None, **params) -> list[dict]:
    """Draw ``n`` samples of ``policy`` from ``data``/``split`` (its first ``limit`` images, default ``n``)
    and write them to ``out``; returns the records (each with ``source_mask_area`` and ``mask_area``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = source_pairs(data, split, limit if limit is not None else n)
    fn = make_policy(policy, seed=seed, **params)
    records = []
    for sample_id, image, mask, record in generate(pairs, fn, n, seed):
        record.update(dataset=data, split=split)
        write_sample(out_dir, sample_id, image, mask, record)
        records.append(record)
    return records


def area_fractions(records: list[dict]) -> tuple[list[float], list[float]]:
    """(before, after): target area / image area of each record's source and augmented mask."""
    before = [r["source_mask_area"] / (r["input_hw"][0] * r["input_hw"][1]) for r in records]
    after = [r["mask_area"] / (r["input_hw"][0] * r["input_hw"][1]) for r in records]
    return before, after


def dataset_or_phantom(name: str) -> str:
    """``name`` if its data can be used here (prepared already, or a mirror is set), else ``"phantom"``
    with a printed note: notebooks run everywhere and say when they fell back."""
    from sas_kit.data import datasets

    if datasets.available(name):
        return name
    print(f"{name} needs the real data (set SAS_KIT_MIRROR to a folder of dataset copies, or run "
          f"`sas-kit data prepare {name}`); using the offline phantom instead")
    return "phantom"
