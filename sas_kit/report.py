"""Tables, gains and figures of a reproduction (results.csv, gains.csv, sizebins.csv, summary.md, PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sas_kit.evaluate import bootstrap_ci, paired_gain

PAPER = {"average_gain": 0.16, "ci": (0.132, 0.188), "max_gain": 0.35,
         "clicks": "two clicks reach box-prompt quality", "large": "large organs do not lose"}
N_BOOT = 2000


def results_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per dataset x arm x prompt x seed: n, mean Dice and bootstrap 95% CI (results.csv)."""
    rows = []
    keys = ["dataset", "target", "arm", "prompt", "seed"]
    for key, g in per_image.groupby(keys, sort=False):
        mean, lo, hi = bootstrap_ci(g["dice"].to_numpy(), n_boot=N_BOOT, seed=0)
        rows.append({**dict(zip(keys, key)), "n": len(g), "dice_mean": mean, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def seed_mean(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per-image Dice averaged over seeds (one row per dataset x arm x prompt x image)."""
    cols = ["dataset", "target", "role", "arm", "prompt", "id", "area_fraction", "size_bin"]
    return per_image.groupby(cols, as_index=False, sort=False)["dice"].mean()


def _pair(means: pd.DataFrame, dataset: str, prompt: str, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    sub = means[(means.dataset == dataset) & (means.prompt == prompt)]
    pivot = sub.pivot_table(index="id", columns="arm", values="dice")
    pivot = pivot.dropna(subset=[a, b])
    return pivot[a].to_numpy(), pivot[b].to_numpy()


def gains_table(per_image: pd.DataFrame, comparisons=(("sas", "none"), ("sas", "zero_shot"))) -> pd.DataFrame:
    """Paired per-image gains (seed-averaged Dice) with bootstrap CIs, per dataset and prompt, plus the
    average over external datasets (each dataset weighted equally; stratified bootstrap) (gains.csv)."""
    means = seed_mean(per_image)
    arms = set(means.arm)
    rows = []
    for a, b in comparisons:
        if a not in arms or b not in arms:
            continue
        for prompt in means.prompt.unique():
            diffs = {}
            for dataset in means.dataset.unique():
                xa, xb = _pair(means, dataset, prompt, a, b)
                if len(xa) == 0:
                    continue
                gain, lo, hi = paired_gain(xb, xa, n_boot=N_BOOT, seed=0)  # gain of arm a over arm b
                role = means[means.dataset == dataset].role.iloc[0]
                rows.append({"dataset": dataset, "role": role, "comparison": f"{a}-{b}", "prompt": prompt,
                             "n": len(xa), "gain": gain, "ci_low": lo, "ci_high": hi})
                if role == "external":
                    diffs[dataset] = xa - xb
            if diffs:
                gain, lo, hi = average_gain(list(diffs.values()))
                rows.append({"dataset": "external average", "role": "external", "comparison": f"{a}-{b}",
                             "prompt": prompt, "n": sum(len(d) for d in diffs.values()), "gain": gain,
                             "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["dataset", "role", "comparison", "prompt", "n", "gain", "ci_low", "ci_high"])


def average_gain(diffs: list[np.ndarray], n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """Mean over datasets of the mean per-image gain; CI by resampling images within each dataset."""
    rng = np.random.default_rng(seed)
    point = float(np.mean([d.mean() for d in diffs]))
    boots = np.mean([d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1) for d in diffs], axis=0)
    return point, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def sizebin_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """Seed-averaged Dice by target size bin, per arm and prompt (all datasets pooled) (sizebins.csv)."""
    means = seed_mean(per_image)
    rows = []
    for (arm, prompt, size), g in means.groupby(["arm", "prompt", "size_bin"], sort=True):
        mean, lo, hi = bootstrap_ci(g["dice"].to_numpy(), n_boot=N_BOOT, seed=0)
        rows.append({"arm": arm, "prompt": prompt, "size_bin": size, "n": len(g), "dice_mean": mean,
                     "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def size_pivot(sizes: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice with arms x prompts as rows and size bins as columns (the compact view of sizebins.csv)."""
    order = [b for b in ["<1%", "1-5%", "5-20%", ">20%"] if b in set(sizes.size_bin)]
    return sizes.pivot_table(index=["prompt", "arm"], columns="size_bin", values="dice_mean")[order]


def _fmt(mean, lo, hi, signed=False) -> str:
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" if signed else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def pooled_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """Dataset x arm (rows) by prompt (columns): seed-averaged mean Dice with 95% CI as text."""
    means = seed_mean(per_image)
    cells = {}
    for (dataset, arm, prompt), g in means.groupby(["dataset", "arm", "prompt"], sort=False):
        cells.setdefault((dataset, arm), {})[prompt] = _fmt(*bootstrap_ci(g["dice"].to_numpy(), n_boot=N_BOOT))
        cells[(dataset, arm)]["n"] = len(g)
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["dataset", "arm"])
    return table


def verdict(gains: pd.DataFrame) -> list[str]:
    """Plain sentences that say what the numbers say, whichever way they point."""
    lines = []
    sub = gains[(gains.comparison == "sas-none") & (gains.dataset == "external average")]
    for _, r in sub.iterrows():
        where = "above zero" if r.ci_low > 0 else "below zero" if r.ci_high < 0 else "includes zero"
        lines.append(f"- External average gain SAS − none, {r.prompt}: {_fmt(r.gain, r.ci_low, r.ci_high, True)} "
                     f"(95% CI {where}; paper: +{PAPER['average_gain']:.2f} [{PAPER['ci'][0]}, {PAPER['ci'][1]}]).")
    if sub.empty:
        internal = gains[(gains.comparison == "sas-none")]
        for _, r in internal.iterrows():
            lines.append(f"- {r.dataset} ({r.role}) gain SAS − none, {r.prompt}: {_fmt(r.gain, r.ci_low, r.ci_high, True)}.")
    best = gains[gains.comparison == "sas-none"].sort_values("gain", ascending=False).head(1)
    for _, r in best.iterrows():
        lines.append(f"- Largest gain: {r.dataset}, {r.prompt}: {r.gain:+.3f} (paper: up to +{PAPER['max_gain']:.2f}).")
    return lines


def write_report(out: Path, plan, per_image: pd.DataFrame, history: pd.DataFrame, timings: dict, skipped: dict,
                 sweep: pd.DataFrame | None, panels: list) -> Path:
    """Write every table and figure of a reproduction into ``out``; return summary.md."""
    from sas_kit import figures

    results, gains, sizes = results_table(per_image), gains_table(per_image), sizebin_table(per_image)
    results.to_csv(out / "results.csv", index=False)
    gains.to_csv(out / "gains.csv", index=False)
    sizes.to_csv(out / "sizebins.csv", index=False)
    figs = figures.write_figures(out, plan, per_image, gains, sizes, history, panels)
    md = [f"# SAS reproduction — profile `{plan.profile}`, model `{plan.model}`", "",
          f"Data: {plan.data_source}. Internal: `{plan.internal}` (train/val/test); external: "
          f"{', '.join(f'`{e}`' for e in plan.externals) or 'none (phantom smoke run)'}.",
          f"Arms: {', '.join(plan.arms)}; prompts: {', '.join(plan.prompts)}; seeds: {list(plan.seeds)}; "
          f"epochs: {plan.epochs}; views per image: {plan.views} (arm `none`: {plan.views} copies of the original, so every arm takes the same steps); mode: {plan.mode}; "
          f"train limit: {plan.train_limit}; test limit per dataset: {plan.eval_limit}; "
          + (f"views drawn once with seed {plan.view_seed} and shared by every training seed (seeds vary order and "
             f"prompts)." if plan.view_seed is not None else "views drawn per training seed."),
          "Prompts are simulated per connected component (one box / click sequence per part, union of the "
          "predictions). Empty masks are excluded from Dice: " + ", ".join(f"{k} {v}" for k, v in skipped.items()) + ".",
          f"SAS parameters: {plan.sas_params or 'kit defaults (docs/sas_parameters.md)'}"
          + (" — chosen on the internal val split by the sweep below." if sweep is not None else "."),
          f"Wall time: {timings['total_s']:.0f} s (training {timings['train_s']:.0f} s, evaluation "
          f"{timings['evaluate_s']:.0f} s); image-encoder calls for training views: {timings['encoder_calls_cached']}.",
          "", "## What the numbers say", "", *verdict(gains), "",
          "## Gains (paired per image, seed-averaged, 95% bootstrap CI)", "",
          gains.to_markdown(index=False, floatfmt="+.3f"), "",
          "## Dice per dataset and arm (seed-averaged, 95% CI)", "", pooled_table(per_image).to_markdown(), "",
          "## Dice by target size (all datasets pooled, seed-averaged; n images per bin in sizebins.csv)", "",
          size_pivot(sizes).to_markdown(floatfmt=".3f"), ""]
    if sweep is not None:
        md += ["## SAS parameter sweep (internal val split, seed 0; score = mean of box and 2-click Dice)", "",
               sweep.drop(columns="params").to_markdown(index=False, floatfmt=".3f"), ""]
    md += ["## Paper, for comparison", "",
           f"Ferreira et al. report an average Dice gain of +{PAPER['average_gain']} [95% CI {PAPER['ci'][0]}, "
           f"{PAPER['ci'][1]}] over external datasets, up to +{PAPER['max_gain']}; {PAPER['clicks']}; "
           f"{PAPER['large']}. Their model, data and SAS parameters are not public; this run uses public data, "
           f"`{plan.model}` and the kit's explicit parameters.", "", "## Figures", ""]
    md += [f"![{name}]({name})" for name in figs]
    path = out / "summary.md"
    path.write_text("\n".join(md) + "\n")
    return path


def readme_block(out: Path, command: str) -> str:
    """The README's results section, generated from a reproduction's files."""
    import json

    plan = json.loads((Path(out) / "plan.json").read_text())
    gains = pd.read_csv(Path(out) / "gains.csv")
    main = gains[gains.comparison == "sas-none"]
    lines = [f"Generated by `{command}` (profile `{plan['profile']}`, model `{plan['model']}`, seeds "
             f"{plan['seeds']}, {plan['epochs']} epochs, train limit {plan['train_limit']}, test limit "
             f"{plan['eval_limit']} per dataset, wall time {plan['timings']['total_s']:.0f} s on this machine).",
             "", "Paired Dice gain SAS − none (per image, seed-averaged, 95% bootstrap CI):", "",
             main.pivot_table(index="dataset", columns="prompt", values="gain").to_markdown(floatfmt="+.3f"), "",
             "With CIs:", "", main.to_markdown(index=False, floatfmt="+.3f"), "", *verdict(gains), "",
             f"Full tables, Dice per arm and size bin, and figures: `{Path(out).name}/summary.md`."]
    return "\n".join(lines)


def update_readme(readme: Path, out: Path, command: str) -> None:
    """Replace the text between the README's results markers with :func:`readme_block`."""
    text = Path(readme).read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    Path(readme).write_text(f"{head}{start}\n{readme_block(out, command)}\n{end}{tail}")
