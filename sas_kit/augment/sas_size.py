"""SAS by target size (arm ``sas_size``): draw the target's final area fraction, shrink or crop-and-enlarge to it,
then SAS-2 ROI noise. The kit's own exploratory arm (issue 18), not the paper's: docs/sas_parameters.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from sas_kit.augment.geometry import mask_box, resample_pair
from sas_kit.augment.sas import SASParams, inject_noise, simulate_scale

_SAS = SASParams()
# Fields SASSizeParams shares with SASParams (same meaning, same defaults): the shrink source, canvas and noise.
SHARED = ("roi_crop_prob", "roi_crop_margin", "fill", "p_noise", "noise_models", "noise_strength", "roi_mode",
          "roi_margin", "texture_cells")


@dataclass(frozen=True)
class SASSizeParams:
    """Parameters of ``sas_size``. It differs from SAS only in how the size is drawn.

    p_size: probability of the size step (SAS's ``p_scale``). area_range: (lo, hi) of the target's final area
    fraction (target pixels / image pixels), drawn log-uniformly. The default is the 1st and 99th percentile of
    the non-empty targets of the protocol's five external test pools, two significant digits
    (:func:`measure_area_range`; docs/sas_parameters.md, "sas_size").
    Every other field is SASParams' field of the same name (``SHARED``), with its default: ``roi_crop_prob`` and
    ``roi_crop_margin`` choose the shrink source, ``fill`` the canvas, the rest the SAS-2 noise step.
    """

    p_size: float = _SAS.p_scale
    area_range: tuple[float, float] = (0.0054, 0.35)
    roi_crop_prob: float = _SAS.roi_crop_prob
    roi_crop_margin: float = _SAS.roi_crop_margin
    fill: int = _SAS.fill
    p_noise: float = _SAS.p_noise
    noise_models: tuple[str, ...] = _SAS.noise_models
    noise_strength: tuple[float, float] = _SAS.noise_strength
    roi_mode: str = _SAS.roi_mode
    roi_margin: float = _SAS.roi_margin
    texture_cells: tuple[int, int] = _SAS.texture_cells

    def __post_init__(self) -> None:
        for name in ("area_range", "noise_models", "noise_strength", "texture_cells"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON/CLI → tuples
        pair = len(self.area_range) == 2
        if not 0 <= self.p_size <= 1:
            raise ValueError(f"SASSizeParams: expected p_size in [0, 1] (got {self.p_size})")
        if not (pair and 0 < self.area_range[0] <= self.area_range[1] <= 1):
            raise ValueError(f"SASSizeParams: expected area_range=(lo, hi), area fractions with 0 < lo <= hi <= 1 "
                             f"(got {self.area_range})")
        try:
            self.sas()  # the shared fields are checked by SASParams' own checks
        except ValueError as err:
            raise ValueError(str(err).replace("SASParams", "SASSizeParams")) from None

    def sas(self, **changes) -> SASParams:
        """SASParams with the shared fields of these parameters, then ``changes``."""
        return replace(_SAS, **{name: getattr(self, name) for name in SHARED}, **changes)


def draw_fraction(rng: np.random.Generator, area_range: tuple[float, float]) -> float:
    """An area fraction drawn log-uniformly from ``area_range``: every octave of size equally likely."""
    lo, hi = area_range
    return math.exp(math.log(lo) + rng.random() * (math.log(hi) - math.log(lo)))


def enlarge(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, gain: float, box):
    """Crop a window of the image's aspect ratio that holds the whole target ``box``, at a uniformly random allowed
    place, and resize it to the image size: the area fraction grows by ``gain``, or by less where the window
    would cut the box (``capped``). Returns (image, mask, record) or None when the box spans the frame."""
    H, W = mask.shape
    x0, y0, x1, y1 = box
    least = max((x1 - x0) / W, (y1 - y0) / H)  # the smallest window side (relative) that holds the box
    side = max(1 / math.sqrt(gain), least)
    if side >= 1:
        return None
    w, h = side * W, side * H
    cx = rng.uniform(max(0.0, x1 - w), max(0.0, min(x0, W - w)))
    cy = rng.uniform(max(0.0, y1 - h), max(0.0, min(y0, H - h)))
    crop = [cx, cy, cx + w, cy + h]
    out, out_mask = resample_pair(image, mask, crop, (W, H))
    return out, out_mask, {"factor": 1 / side, "capped": side > 1 / math.sqrt(gain), "crop_box": crop}


def unchanged(mask: np.ndarray, fill: int, reason: str) -> dict:
    """The size record of a view left at its size: mode "not applied" and why."""
    H, W = mask.shape
    current = float(mask.mean())
    return {"applied": False, "mode": "not applied", "reason": reason, "drawn_fraction": None,
            "source_fraction": current, "achieved_fraction": current, "factor": 1.0, "paste_box": [0, 0, W, H],
            "fill": fill}


def resize_target(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, params: SASSizeParams):
    """The size step: draw the final area fraction; smaller than the target's: SAS-1 (``simulate_scale``) with the
    linear factor sqrt(drawn / current); larger: :func:`enlarge`. Returns (image, mask, record); the record's
    ``achieved_fraction`` is the output mask's mean and ``paste_box`` is where the image content lies."""
    box = mask_box(mask)
    if box is None:
        return image, mask, unchanged(mask, params.fill, "empty mask")
    current = float(mask.mean())
    drawn = draw_fraction(rng, params.area_range)
    if drawn < current:
        factor = math.sqrt(drawn / current)
        step_params = params.sas(scale_range=(factor, factor), min_target_area=0)
        image, mask, step = simulate_scale(image, mask, rng, step_params)  # its record has the paste box
        mode = "shrink"
    else:
        done = enlarge(image, mask, rng, drawn / current, box)
        if done is None:
            return image, mask, {**unchanged(mask, params.fill, "target box spans the frame"), "drawn_fraction": drawn}
        image, mask, step = done
        mode = "enlarge"
    H, W = mask.shape
    return image, mask, {"applied": True, "mode": mode, "drawn_fraction": drawn, "source_fraction": current,
                         "achieved_fraction": float(mask.mean()), "paste_box": [0, 0, W, H], "fill": params.fill,
                         **step}


class SASSize:
    """The size step (probability ``p_size``) then SAS-2 ROI noise (``p_noise``, clipped to the paste box), as
    ``SAS`` does. Record: {"size": ..., "noise": ...}."""

    def __init__(self, params: SASSizeParams = SASSizeParams()):
        self.params = params
        self.noise_params = params.sas()

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        p = self.params
        if rng.random() < p.p_size:
            image, mask, size = resize_target(image, mask, rng, p)
        else:
            size = unchanged(mask, p.fill, "not drawn")
        if rng.random() < p.p_noise:
            image, noise = inject_noise(image, mask, rng, self.noise_params, limit_box=size["paste_box"])
        else:
            noise = {"applied": False, "reason": "not drawn"}
        return image, mask, {"size": size, "noise": noise}


def measure_area_range(names, percentiles: tuple[float, float] = (1.0, 99.0)) -> dict:
    """The ``percentiles`` of the area fraction of every non-empty target in the pools of datasets ``names`` (every
    split, as the protocol pools an external test set before its draw), all targets pooled; with n and the same
    percentiles per dataset, and the pooled range to two significant digits (``rounded``: SASSizeParams' default
    when ``names`` are the protocol's EXTERNALS). Reads the stored ``area_fraction`` (mask mean, original size)."""
    from sas_kit.data import datasets

    per = {}
    for name in names:
        parts = [datasets.load(name, split).select_columns(["area_fraction", "empty"]) for split in datasets.SPLITS]
        per[name] = np.concatenate([np.asarray(list(p["area_fraction"]), float)[~np.asarray(list(p["empty"]), bool)]
                                    for p in parts])
    pooled = np.concatenate(list(per.values()))
    measured = [float(v) for v in np.percentile(pooled, percentiles)]
    return {"percentiles": list(percentiles), "area_range": measured, "rounded": [float(f"{v:.2g}") for v in measured],
            "n": {name: len(v) for name, v in per.items()}, "n_total": len(pooled),
            "per_dataset": {name: [float(x) for x in np.percentile(v, percentiles)] for name, v in per.items()}}


def area_table(measured: dict) -> str:
    """The Markdown table of a :func:`measure_area_range` result (docs/sas_parameters.md, "sas_size")."""
    lo, hi = (f"p{q:g}" for q in measured["percentiles"])
    rows = [f"| dataset | n | {lo} | {hi} |", "|---|---|---|---|"]
    rows += [f"| {name} | {n} | {measured['per_dataset'][name][0]:.4f} | {measured['per_dataset'][name][1]:.4f} |"
             for name, n in measured["n"].items()]
    pooled = measured["area_range"]
    rows.append(f"| **pooled** | {measured['n_total']} | {pooled[0]:.4f} | {pooled[1]:.4f} |")
    return "\n".join(rows)
