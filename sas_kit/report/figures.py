"""Figures of a reproduction: forest plot of gains, Dice vs target size, learning curves, example overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sas_kit.experiment.evaluate import SIZE_BINS
from sas_kit.models.prompts import PROMPTS
from sas_kit.report import plots
from sas_kit.report.paper import PAPER

ARM_COLORS = {"zero_shot": "#888888", "none": "#1f77b4", "classic": "#2ca02c", "stsnet": "#9467bd",
              "genseg": "#ff7f0e", "sas": "#d62728", "sas_size": "#e377c2"}


def forest(gains: pd.DataFrame, comparison: str = "sas-none", paper: tuple[float, float, float] = (
        PAPER["average_gain"], *PAPER["ci"])):
    """Gain with 95% CI per dataset (rows) and prompt (markers), each training seed's own gain as a small hollow dot
    beside it (the ``seed_gains`` column, where present): the spread the interval has to hold. The paper's average
    as a band."""
    sub = gains[(gains.comparison == comparison) & gains.endpoint.isin(["gain", "gain per dataset"])]
    sub = sub.rename(columns={"scope": "dataset"})
    datasets = list(dict.fromkeys(sub.dataset))
    prompts = list(dict.fromkeys(sub.prompt))
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * max(len(datasets), 2) + 1.2))
    ax.axvspan(paper[1], paper[2], color="orange", alpha=0.25, label=f"paper average +{paper[0]:.2f} (95% CI)")
    ax.axvline(0, color="black", linewidth=0.8)
    for k, prompt in enumerate(prompts):
        rows = sub[sub.prompt == prompt]
        y = np.array([datasets.index(d) for d in rows.dataset]) + (k - (len(prompts) - 1) / 2) * 0.15
        bar = ax.errorbar(rows.gain, y, xerr=[rows.gain - rows.ci_low, rows.ci_high - rows.gain], fmt="o", ms=4,
                          capsize=2, label=prompt)
        for yy, text in zip(y, rows.get("seed_gains", pd.Series([""] * len(rows))).fillna("")):
            values = seed_values(text)
            if values:
                ax.scatter(values, [yy + 0.06] * len(values), s=10, facecolors="none",
                           edgecolors=bar[0].get_color(), linewidths=0.8, zorder=3)
    if "seed_gains" in sub.columns and sub.seed_gains.fillna("").astype(bool).any():
        ax.scatter([], [], s=10, facecolors="none", edgecolors="gray", label="one training seed")
    ax.set_yticks(range(len(datasets)), datasets)
    ax.invert_yaxis()
    ax.set_xlabel(f"Dice gain ({comparison.replace('-', ' − ')})")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def seed_values(text: str) -> list[float]:
    """The gains of a ``seed_gains`` cell ("0:+0.0120 1:-0.0340 ...")."""
    return [float(item.split(":")[1]) for item in str(text).split()] if isinstance(text, str) and text else []


def dice_by_size(sizes: pd.DataFrame, prompt: str = "box"):
    """Mean Dice (95% CI) per target-size bin for each arm."""
    sub = sizes[sizes.prompt == prompt]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for arm, g in sub.groupby("arm", sort=False):
        g = g.set_index("size_bin").reindex([s for s in SIZE_BINS if s in set(g.size_bin)])
        x = [SIZE_BINS.index(s) for s in g.index]
        ax.errorbar(x, g.dice_mean, yerr=[g.dice_mean - g.ci_low, g.ci_high - g.dice_mean], marker="o", capsize=2,
                    label=arm, color=ARM_COLORS.get(arm))
    ax.set_xticks(range(len(SIZE_BINS)), SIZE_BINS)
    ax.set_xlabel("target area / image area")
    ax.set_ylabel(f"Dice ({prompt})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def learning_curves(history: pd.DataFrame):
    """Training loss (Dice + BCE) per epoch, mean over seeds, per arm."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for arm, g in history.groupby("arm", sort=False):
        curve = g.groupby("epoch")["train_loss"].mean()
        ax.plot(curve.index, curve.values, marker="o", label=arm, color=ARM_COLORS.get(arm))
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (Dice + BCE)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def examples(panels: list[tuple]):
    """Rows of (title, image, ground truth, {arm: prediction}) as overlays."""
    arms = list(panels[0][3]) if panels else []
    samples = []
    for title, image, gt, preds in panels:
        samples.append((image, gt, f"{title}: truth"))
        samples += [(image, preds[arm], arm) for arm in arms]
    return plots.contact_sheet(samples, cols=1 + len(arms), size=2.0)


def low_data(table: pd.DataFrame):
    """Dice vs number of real training images (log axis), one panel per prompt, one line per arm, 95% CI bars."""
    prompts = [p for p in PROMPTS if p in set(table.prompt)]
    table = table.assign(order=table.arm.map({a: i for i, a in enumerate(ARM_COLORS)})).sort_values("order")
    fig, axes = plt.subplots(1, len(prompts), figsize=(3.4 * len(prompts), 3.2), sharey=True, squeeze=False)
    for ax, prompt in zip(axes[0], prompts):
        for arm, g in table[table.prompt == prompt].groupby("arm", sort=False):
            g = g.sort_values("n_train")
            ax.errorbar(g.n_train, g.dice, yerr=[g.dice - g.ci_low, g.ci_high - g.dice], marker="o", capsize=3,
                        label=arm, color=ARM_COLORS.get(arm))
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(table.n_train)), [str(n) for n in sorted(set(table.n_train))])
        ax.set_title(prompt)
        ax.set_xlabel("real training images")
    axes[0][0].set_ylabel("Dice (internal test)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def click_curve(per_image: pd.DataFrame):
    """External-average Dice after k clicks (k = 1...5) per fine-tuned arm, with each arm's box Dice as a dashed
    line of the same colour: where the curve meets its line is "clicks to reach box quality". Each external set
    weighs the same (the means of its images over seeds and images); USGRA nerve and vessel are separate sets here."""
    ext = per_image[(per_image.role == "external") & (per_image.arm != "zero_shot")]
    clicks = [p for p in PROMPTS if p != "box" and p in set(ext.prompt)]
    if ext.empty or not clicks:
        raise ValueError("no external click rows")
    means = ext.groupby(["arm", "prompt", "dataset"]).dice.mean().groupby(["arm", "prompt"]).mean()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for arm in [a for a in ARM_COLORS if a in set(ext.arm)]:
        color = ARM_COLORS[arm]
        ax.plot([int(p[0]) for p in clicks], [means[(arm, p)] for p in clicks], "o-", color=color, label=arm)
        if (arm, "box") in means.index:
            ax.axhline(means[(arm, "box")], color=color, linestyle="--", linewidth=0.8)
    ax.set_xticks([int(p[0]) for p in clicks])
    ax.set_xlabel("clicks")
    ax.set_ylabel("Dice (external average)")
    ax.set_title("click curve; dashed: the same arm's box Dice", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> None:
    """Write ``fig`` and free it now: a closed figure's artists form reference cycles that only the cyclic
    collector frees, and the example panels hold full-size images (chapter 05's report phase on real data rose
    ≈ 350 MiB until a collection; docs/notes.md), so collect and hand the heap pages back."""
    import gc

    from sas_kit.models import precision

    fig.savefig(path, dpi=110)
    plt.close(fig)
    gc.collect()
    precision.trim_heap()


def write_figures(out: Path, plan, per_image, gains, sizes, history, panels) -> list[str]:
    """Save the figures that have data; return their file names."""
    made = []
    for name, build in (("forest.png", lambda: forest(gains)), ("dice_by_size.png", lambda: dice_by_size(sizes)),
                        ("click_curve.png", lambda: click_curve(per_image)),
                        ("learning_curves.png", lambda: learning_curves(history)),
                        ("examples.png", lambda: examples(panels))):
        try:
            fig = build()
        except (KeyError, ValueError, IndexError):  # e.g. no SAS arm in a custom run: no such figure
            continue
        save(fig, out / name)
        made.append(name)
    return made
