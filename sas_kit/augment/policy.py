"""The policy interface: ``make_policy(name)`` returns a seeded callable ``(image, mask, rng) -> (image, mask, record)``."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Callable

import numpy as np

from sas_kit.augment.baselines import Classic, ClassicParams, StsNet, StsNetParams, identity
from sas_kit.augment.geometry import as_rng, check_pair
from sas_kit.augment.sas import SAS, SASParams
from sas_kit.augment.sas_size import SASSize, SASSizeParams

POLICIES = ("none", "classic", "sas", "stsnet", "sas_size")


class Policy:
    """A named augmentation: ``policy(image, mask, rng=None) -> (image, mask, record)``. Without ``rng`` it
    uses its own generator (seeded by ``seed``). The record is JSON-serialisable and always has ``policy``,
    ``input_hw``, ``channels``, ``empty_mask``, ``source_mask_area`` and ``mask_area`` (pixels).

    In a PyTorch Dataset pass a per-item stream, e.g. ``rng=np.random.default_rng([seed, epoch, index])``:
    DataLoader workers copy the policy, so its own generator would repeat across workers."""

    def __init__(self, name: str, fn: Callable, params: dict, seed: int | None = None):
        self.name, self.fn = name, fn
        self.params = json.loads(json.dumps(params))  # plain JSON types (tuples → lists) for records
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | int | None = None):
        image, mask = check_pair(image, mask)
        rng = self.rng if rng is None else as_rng(rng)
        area = int(mask.sum())
        out, out_mask, applied = self.fn(image, mask, rng)
        record = {"policy": self.name, "input_hw": list(mask.shape), "channels": 1 if image.ndim == 2 else 3,
                  "empty_mask": area == 0, "source_mask_area": area, **applied, "mask_area": int(out_mask.sum())}
        return out, out_mask, record

    def __repr__(self) -> str:
        return f"Policy({self.name!r}, {self.params})"


def _params(cls, name: str, given: dict):
    valid = {f.name for f in fields(cls)}
    unknown = set(given) - valid
    if unknown:
        raise ValueError(f"policy {name!r}: unknown parameter(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return cls(**given)


def make_policy(name: str, seed: int | None = None, **params) -> Policy:
    """The augmentation ``name`` ∈ POLICIES as a callable ``policy(image, mask, rng) -> (image, mask, record)``;
    ``params`` are the fields of SASParams / baselines.ClassicParams / baselines.StsNetParams / SASSizeParams."""
    if name == "none":
        if params:
            raise ValueError(f"policy 'none' takes no parameters (got {sorted(params)})")
        return Policy(name, identity, {}, seed)
    if name == "sas":
        p = _params(SASParams, name, params)
        return Policy(name, SAS(p), asdict(p), seed)
    if name == "classic":
        p = _params(ClassicParams, name, params)
        return Policy(name, Classic(p), asdict(p), seed)
    if name == "stsnet":
        p = _params(StsNetParams, name, params)
        return Policy(name, StsNet(p), asdict(p), seed)
    if name == "sas_size":
        p = _params(SASSizeParams, name, params)
        return Policy(name, SASSize(p), asdict(p), seed)
    raise ValueError(f"unknown augmentation policy {name!r}; choose one of {POLICIES}")
