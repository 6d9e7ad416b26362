"""GenSeg's signature figure: internal test Dice against the number of real training images, per arm."""

from __future__ import annotations

import pandas as pd

from sas_kit.experiment.evaluate import bootstrap_ci
from sas_kit.experiment.protocol import CURVE_ARMS, Plan  # noqa: F401  (CURVE_ARMS re-exported for reports)


def curve_sizes(plan: Plan) -> list[int]:
    """The curve's training-set sizes: the plan's smaller runs, then the main runs' size."""
    return sorted({t.spec.train_limit for t in plan.curve_tasks()} | {plan.train_images})


def curve_rows(plan: Plan, smaller: pd.DataFrame, main: pd.DataFrame) -> pd.DataFrame:
    """The curve's per-image rows (column ``n_train``): the smaller runs' scores, and for the full size the main
    runs' own internal scores of the first seed (the same checkpoints on the same images: not scored twice).

    Every arm of a size sees the same n images, views, epochs and prompts, so steps grow with n as in GenSeg's
    figure; the GenSeg generator is trained on the same n images for the same epochs (``GenSegParams.epochs``)."""
    arms = [a for a in CURVE_ARMS if a in plan.arms]
    full = main[(main.dataset == plan.internal) & (main.seed == plan.seeds[0]) & main.arm.isin(arms)]
    return pd.concat([smaller, full.assign(n_train=plan.train_images)], ignore_index=True)


def curve_table(per_image: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Mean Dice with a 95 % bootstrap CI over test images (one seed: seed variance is not in these CIs), one
    row per n_train x arm x prompt."""
    rows = []
    for (n, arm, prompt), g in per_image.groupby(["n_train", "arm", "prompt"], sort=True):
        mean, low, high = bootstrap_ci(g["dice"].to_numpy(), n_boot=n_boot)
        rows.append({"n_train": int(n), "arm": arm, "prompt": prompt, "n_images": len(g), "dice": mean,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)
