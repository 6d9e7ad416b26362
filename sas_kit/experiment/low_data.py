"""GenSeg's signature figure: internal test Dice against the number of real training images, per arm."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from sas_kit.experiment.embed_cache import EmbeddingCache
from sas_kit.experiment.evaluate import bootstrap_ci
from sas_kit.experiment.protocol import Plan, evaluate_arms, train_arms

CURVE_ARMS = ("none", "sas", "genseg")


def curve_sizes(plan: Plan, n_train: int) -> list[int]:
    """The plan's low-data sizes below ``n_train``, then ``n_train`` itself (the main run's point)."""
    return sorted({n for n in plan.low_data if 0 < n < n_train} | {n_train})


def low_data_curve(plan: Plan, train: list, val: list, test: list, cache: EmbeddingCache | None, out: Path,
                   progress: bool = True, scored: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fine-tune the curve's arms (those of ``CURVE_ARMS`` in the plan) on the first n training images for each
    size of :func:`curve_sizes`, first seed only, and score them on the internal ``test`` images.

    Every arm sees the same n images, views, epochs and prompts, so steps grow with n as in GenSeg's figure; the
    GenSeg generator is trained on the same n images for the same epochs (``GenSegParams.epochs``). The full-size
    point reuses the main run's checkpoints in ``out/runs`` (same settings and images), and its scores too when
    ``scored`` (the main run's ``evaluate_arms`` rows) has them; the others live in ``out/low_data/n<N>/``.
    Returns one row per image x prompt x arm x n (column ``n_train``)."""
    arms = tuple(a for a in CURVE_ARMS if a in plan.arms)
    sub_plan = replace(plan, arms=arms, seeds=plan.seeds[:1])
    frames = []
    for n in curve_sizes(plan, len(train)):
        if n == len(train) and scored is not None:
            mine = scored[(scored.dataset == plan.internal) & (scored.seed == plan.seeds[0]) & scored.arm.isin(arms)]
            if set(mine.arm) == set(arms):  # the main run scored these very checkpoints on these images
                frames.append(mine.assign(n_train=n))
                continue
        where = Path(out) if n == len(train) else Path(out) / "low_data" / f"n{n}"
        checkpoints, _, _ = train_arms(sub_plan, train[:n], val, cache, where, progress)
        rows = evaluate_arms(sub_plan, {plan.internal: test}, checkpoints, cache, progress)
        frames.append(rows.assign(n_train=n))
    return pd.concat(frames, ignore_index=True)


def curve_table(per_image: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Mean Dice with a 95 % bootstrap CI over test images (one seed: seed variance is not in these CIs), one
    row per n_train x arm x prompt."""
    rows = []
    for (n, arm, prompt), g in per_image.groupby(["n_train", "arm", "prompt"], sort=True):
        mean, low, high = bootstrap_ci(g["dice"].to_numpy(), n_boot=n_boot)
        rows.append({"n_train": int(n), "arm": arm, "prompt": prompt, "n_images": len(g), "dice": mean,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)
