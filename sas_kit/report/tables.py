"""Tables, gains and figures of a reproduction (results.csv, gains.csv, sizebins.csv, summary.md, PNGs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sas_kit.experiment import stats
from sas_kit.experiment.evaluate import SIZE_BINS, bootstrap_ci
from sas_kit.experiment.low_data import CURVE_ARMS, curve_table
from sas_kit.models.prompts import PROMPTS
from sas_kit.report.paper import PAPER

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
    order = [b for b in SIZE_BINS if b in set(sizes.size_bin)]
    return sizes.pivot_table(index=["prompt", "arm"], columns="size_bin", values="dice_mean")[order]


def noc_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per dataset x arm: images, mean number of clicks to IoU 0.85 / 0.90 (seed-averaged per image) and the share
    of images that never got there within the cap (NoC == cap, RITM's failure count) (noc.csv). Empty without
    NoC columns."""
    cols = [c for c in per_image.columns if c.startswith("noc")]
    if not cols:
        return pd.DataFrame()
    first = per_image.drop_duplicates(["dataset", "arm", "seed", "id"])  # NoC is on every prompt row of an image
    rows = []
    for (dataset, arm), g in first.groupby(["dataset", "arm"], sort=False):
        per = g.groupby("id")[cols + ["max_clicks"]].mean()
        if per[cols].isna().all().all():
            continue
        row = {"dataset": dataset, "arm": arm, "n": len(per), "cap": int(per.max_clicks.max())}
        for c in cols:
            row[f"{c}_mean"] = per[c].mean()
            row[f"{c}_failed"] = float((g[c] >= g.max_clicks).mean())
        rows.append(row)
    return pd.DataFrame(rows)


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


def _where(r) -> str:
    return "above zero" if r.ci_low > 0 else "below zero" if r.ci_high < 0 else "includes zero"


def _seeds(r) -> str:
    """The per-seed gains of a row, as printed beside its pooled interval."""
    text = r.get("seed_gains") if hasattr(r, "get") else None
    return f"; per seed {text}" if isinstance(text, str) and text else ""


def _holm(r) -> str:
    p = r.get("p_holm") if hasattr(r, "get") else None
    return f", Holm p {p:.3f}" if p is not None and pd.notna(p) else ""


def verdict(gains: pd.DataFrame) -> list[str]:
    """Plain sentences for the pre-registered endpoints, whichever way they point (no best-cell headline)."""
    lines = []
    for _, r in gains[gains.kind == "primary"].iterrows():
        lines.append(f"- Primary — external-average gain SAS − none, {r.prompt}: {_fmt(r.gain, r.ci_low, r.ci_high, True)} "
                     f"(95% CI {_where(r)}{_holm(r)}; {r.n_images} images x {r.n_seeds} seeds{_seeds(r)}; paper, over "
                     f"its own external sets: +{PAPER['average_gain']:.2f} [{PAPER['ci'][0]}, {PAPER['ci'][1]}]).")
    box = gains[(gains.endpoint == "gain") & (gains.prompt == "box")]
    for _, r in box.iterrows():
        lines.append(f"- Secondary — box prompts, SAS − none: {_fmt(r.gain, r.ci_low, r.ci_high, True)} (CI {_where(r)}).")
    small = gains[gains.endpoint == "small-target gain"]
    for _, r in small.iterrows():
        lines.append(f"- Small targets ({r.scope}, {r.prompt}): {_fmt(r.gain, r.ci_low, r.ci_high, True)} "
                     f"(CI {_where(r)}{_holm(r)}; n={r.n_images}{_seeds(r)}).")
    large = gains[gains.endpoint.str.contains("large-organ|large-target")]
    for _, r in large.iterrows():
        said = ("SAS LOSES on large targets" if r.ci_high < 0 else "no loss detected" if r.ci_low <= 0 else "SAS gains")
        lines.append(f"- Large-target check (> 20 % of the image, external, {r.prompt}): {_fmt(r.gain, r.ci_low, r.ci_high, True)}"
                     f", n={r.n_images}{_holm(r)} — {said} (paper: {PAPER['large']}).")
    for _, r in gains[gains.endpoint.str.startswith("NoC gain")].iterrows():
        lines.append(f"- Clicks needed, SAS − none ({r.prompt}, external average; negative = fewer clicks): "
                     f"{_fmt(r.gain, r.ci_low, r.ci_high, True)} (CI {_where(r)}).")
    gap = gains[gains.endpoint == "2-click minus box"]  # v1 tables
    for _, r in gap.iterrows():
        lines.append(f"- Two clicks vs box after SAS (external average): {_fmt(r.gain, r.ci_low, r.ci_high, True)} "
                     f"(paper: {PAPER['clicks']}).")
    for r in stats.clicks_to_box(gains).itertuples():
        def k(v):
            return f"> {r.k_max}" if v is None or pd.isna(v) else f"{int(v)}"
        lines.append(f"- Clicks to reach box Dice, arm {r.arm} (external average): {k(r.clicks)} "
                     f"(95% CI from {k(r.clicks_low)} to {k(r.clicks_high)}; paper: {PAPER['clicks']}).")
    forget = gains[gains.endpoint == "box forgetting"]
    if not forget.empty:
        worst = forget.sort_values("gain").iloc[0]
        lines.append(f"- Box forgetting (fine-tuned − zero-shot box, per external set): from {forget.gain.min():+.3f} "
                     f"to {forget.gain.max():+.3f}; lowest {worst.comparison} on {worst.scope}.")
    if not lines:
        lines.append("- No endpoint can be computed from this run: the endpoints compare SAS with none on external "
                     "test sets, and this run has no external set or not both arms (a phantom smoke run scores the "
                     "phantom only; real data: set SAS_KIT_MIRROR or `sas-kit data prepare`).")
    if not gains[gains.kind == "primary"].empty:
        lines.append(f"- What this run can detect: a primary gain of about {stats.detectable(gains):.3f} Dice would be "
                     "found with 80 % power (two-sided, 0.05; from the same standard errors as the intervals).")
    return lines


SUMMARY_COLUMNS = ["endpoint", "comparison", "prompt", "scope", "n_images", "n_seeds", "gain", "ci_low", "ci_high",
                   "p_holm", "seed_gains"]


def _draw(plan) -> str:
    """How the external test images were drawn, in words."""
    if plan.eval_limit is None:
        return "every non-empty image"
    if getattr(plan, "test_draw", "hash") == "by_size":
        return (f"every target under 1 % and over 20 % of the image, plus the {plan.eval_limit} lowest-hash targets of "
                "each other size bin, per set")
    return f"deterministic draw of up to {plan.eval_limit} non-empty images per set"


def _table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt="+.3f") if not df.empty else "(none)"


def write_report(out: Path, plan, per_image: pd.DataFrame, history: pd.DataFrame, record: dict,
                 panels: list, curve: pd.DataFrame | None = None) -> Path:
    """Write every table and figure of a reproduction into ``out``; return summary.md. ``curve``: the per-image
    rows of the low-data curve (experiment/low_data.py), when it ran."""
    from sas_kit.report import figures

    results, gains, sizes = results_table(per_image), stats.endpoints(per_image), sizebin_table(per_image)
    results.to_csv(out / "results.csv", index=False)
    gains.to_csv(out / "gains.csv", index=False)
    noc = noc_table(per_image)
    if not noc.empty:
        noc.to_csv(out / "noc.csv", index=False)
    sizes.to_csv(out / "sizebins.csv", index=False)
    figs = figures.write_figures(out, plan, per_image, gains, sizes, history, panels)
    low = low_data_section(out, curve) if curve is not None else []
    t = record["timings"]
    cols = [c for c in SUMMARY_COLUMNS if c in gains.columns]
    md = [f"# SAS reproduction — profile `{plan.profile}`, model `{plan.model}`", "",
          f"Data: {plan.data_source}. Internal: `{plan.internal}` ({record['train_images']} training images, whole "
          f"test split scored); external (never trained on, all splits pooled): {_draw(plan)}: "
          f"{', '.join(f'`{e}`' for e in plan.externals) or 'none (phantom smoke run)'}.",
          f"Images scored (non-empty): {', '.join(f'{k} {v}' for k, v in record['n_test'].items())}; empty masks left "
          f"out of the pools: {', '.join(f'{k} {v}' for k, v in record['empty_left_out'].items())}.",
          f"Arms: {', '.join(plan.arms)}; prompts: {', '.join(plan.prompts)} (zero_shot: box); seeds: {list(plan.seeds)}; "
          f"{record['samples_per_arm_seed']} prompted training samples per arm x seed ({plan.epochs} epochs x "
          f"{plan.views} views per image, batch {plan.batch_size}; arm `none` sees {plan.views} copies of the "
          f"original, so every arm takes the same steps); mode {plan.mode}; precision {plan.precision}; model "
          f"selection: {'last epoch' if plan.select == 'last' else 'best val score'}; "
          + (f"views drawn once (seed {plan.view_seed}) and shared by every training seed." if plan.view_seed is not None
             else "views drawn per training seed."),
          "Prompts are simulated per connected component (one box / click session per part, union of the "
          "predictions). CIs: seeds as whole runs (t) plus acquisition groups within each set (cluster-robust), "
          "docs/protocol.md amendment v2; USGRA nerve and vessel are one cluster.",
          f"SAS parameters: {plan.sas_params or 'kit defaults'} — {plan.sas_params_source}.",
          f"Wall time: {t['total_s']:.0f} s (plan and data {t['load_s']:.0f} s, runs {t['runs_wall_s']:.0f} s on "
          f"{t['workers'] or 'no'} worker(s); summed over runs: training {t['train_s']:.0f} s, evaluation "
          f"{t['evaluate_s']:.0f} s); training image-encoder calls: {t['encoder_calls']}.",
          "", "## What the numbers say (endpoints fixed in docs/protocol.md before the run)", "", *verdict(gains), "",
          "## Primary, named and secondary endpoints (paired, 95% CI over seeds and acquisition groups)", "",
          "Holm's adjustment within the primary family and within the named family (p_holm in gains.csv); "
          "per-seed gains are each training run's own estimate (seed:gain).", "",
          _table(gains[gains.kind != "exploratory"][cols]), "",
          "## Exploratory (per dataset, controls; not corrected for multiplicity — no headline)", "",
          _table(gains[gains.kind == "exploratory"][cols]), "",
          "## Dice per dataset and arm (seed-averaged, 95% CI over images)", "", pooled_table(per_image).to_markdown(), "",
          *([f"## Number of clicks to IoU 0.85 / 0.90 (cap {int(noc.cap.max())} click rounds; failed = never "
             "reached within the cap, counted at the cap)", "", noc.to_markdown(index=False, floatfmt='.2f'), ""]
            if not noc.empty else []),
          "## Dice by target size (all datasets pooled, seed-averaged; n images per bin in sizebins.csv)", "",
          size_pivot(sizes).to_markdown(floatfmt=".3f"), "",
          "## Paper, for comparison", "",
          f"Ferreira et al. report an average Dice gain of +{PAPER['average_gain']} [95% CI {PAPER['ci'][0]}, "
          f"{PAPER['ci'][1]}] over external datasets, up to +{PAPER['max_gain']}; {PAPER['clicks']}; "
          f"{PAPER['large']}. Their model, data and SAS parameters are not public; this run uses public data, "
          f"`{plan.model}` and the kit's explicit parameters.", "", *low, "## Figures", ""]
    md += [f"![{name}]({name})" for name in figs + (["low_data.png"] if low else [])]
    path = out / "summary.md"
    path.write_text("\n".join(md) + "\n")
    return path


def curve_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """Training images (rows) by prompt and arm (columns): mean Dice [95% CI] as text."""
    text = table.assign(cell=[_fmt(r.dice, r.ci_low, r.ci_high) for r in table.itertuples()])
    wide = text.pivot(index="n_train", columns=["prompt", "arm"], values="cell")
    order = {name: i for i, name in enumerate((*PROMPTS, *CURVE_ARMS))}
    wide = wide[sorted(wide.columns, key=lambda c: (order.get(c[0], 99), order.get(c[1], 99)))]
    wide.columns = [f"{prompt} · {arm}" for prompt, arm in wide.columns]
    return wide


def low_data_section(out: Path, curve: pd.DataFrame) -> list[str]:
    """Write low_data.csv, low_data_table.csv and low_data.png; return the summary's markdown lines."""
    from sas_kit.report import figures

    table = curve_table(curve, n_boot=N_BOOT)
    curve.to_csv(out / "low_data.csv", index=False)
    table.to_csv(out / "low_data_table.csv", index=False)
    figures.save(figures.low_data(table), out / "low_data.png")
    return ["## Low-data curve: internal test Dice vs real training images (first seed; CIs over images only)", "",
            "Every arm trains on the first n training images with the same views, epochs and prompts; the GenSeg "
            "generator is trained on the same n images. Exploratory (GenSeg's figure), not a pre-registered endpoint.",
            "", curve_pivot(table).to_markdown(), ""]
