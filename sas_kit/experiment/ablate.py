"""A factorial sensitivity study of the SAS − none gain (issue 18; docs/protocol.md, amendment v3).

Four two-level factors, each a change of the run spec that the kit's own configurations have differed in:

- A, SAS share of the views: 2 views per image (1 SAS view) / 3 views (2 SAS views);
- B, maximum training clicks: 3 / 5;
- C, loss resolution: the 256x256 logits / the original image size (``RunSpec.loss_size``);
- D, SAS steps: scale simulation + ROI noise (the kit's defaults) / scale simulation alone (``p_noise = 0``).

The first level of each factor is the kit's v2 ``cpu`` configuration, so the all-first-levels cell (in both designs)
is the headline run's configuration: the study's baseline. A cell is one combination of levels; in it ``none`` and ``sas`` train with the same seeds, views, steps and prompts
(``none`` is untouched by D). The design is the full 2^4 or the half fraction 2^(4−1) with D = ABC (resolution IV:
a main effect is aliased with a three-factor interaction, two-factor interactions with each other in pairs:
AB = CD, AC = BD, AD = BC). A factor's main effect on the gain is the mean gain of the cells at its high level minus
that of the cells at its low level; its interval is the v2 interval (:mod:`sas_kit.experiment.stats`) of that
contrast taken per image and seed, so seed and acquisition-group variance are in it. Every run is trained once
with model selection on the val split (``select="best"``) and scored twice: the selected weights and the last
epoch's, so selection is compared without retraining.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sas_kit.experiment import stats
from sas_kit.experiment.evaluate import size_bin
from sas_kit.experiment.protocol import CHECKPOINTS, Plan, Task, make_plan
from sas_kit.experiment.run import RunSpec


@dataclass(frozen=True)
class Factor:
    """One two-level factor: ``field`` of the run spec (or ``sas_steps``) at ``low`` (level −1) and ``high`` (+1)."""

    letter: str
    name: str
    field: str
    low: object
    high: object

    def value(self, level: int):
        return self.high if level > 0 else self.low


FACTORS = (Factor("A", "SAS share of the views", "views", 2, 3),
           Factor("B", "maximum training clicks", "max_clicks", 3, 5),
           Factor("C", "loss resolution", "loss_size", "low", "full"),
           Factor("D", "SAS steps", "sas_steps", "scale+noise", "scale"))
BASELINE = {f.letter: -1 for f in FACTORS}  # every factor at its first level: the v2 cpu configuration
EXTRA_ARMS = ("sas_size",)  # exploratory (amendment v3): trained in the baseline cell only
SAS_STEPS = {"scale": {"p_noise": 0.0}, "scale+noise": {}}  # overrides of the sas arm's parameters
PROMPTS = ("box", "1click", "2click")
SCOPES = ("external average", "external <1%", "external >20%")
ALIASES = {"A": "BCD", "B": "ACD", "C": "ABD", "D": "ABC"}  # of the half fraction D = ABC (I = ABCD)


def design(full: bool = False) -> list[dict[str, int]]:
    """The cells as {letter: ±1}: the full 2^4 (16 cells) or the half fraction D = ABC (8 cells), in standard order."""
    cells = []
    for levels in itertools.product((-1, 1), repeat=3 if not full else 4):
        cell = dict(zip("ABCD", reversed(levels)))  # A changes fastest (Yates order)
        if not full:
            cell["D"] = cell["A"] * cell["B"] * cell["C"]
        cells.append(cell)
    return cells


def cell_name(cell: dict[str, int]) -> str:
    return "".join(f"{k}{'+' if v > 0 else '-'}" for k, v in sorted(cell.items()))


def cell_spec(spec: RunSpec, cell: dict[str, int]) -> RunSpec:
    """``spec`` (a ``none`` or ``sas`` run of the base plan) at the cell's levels; D changes the sas arm only."""
    changes = {f.field: f.value(cell[f.letter]) for f in FACTORS if f.field != "sas_steps"}
    if spec.arm == "sas":
        changes["params"] = replace(spec.params, **SAS_STEPS[FACTORS[3].value(cell["D"])])
    return spec.but(**changes)


@dataclass(frozen=True)
class Ablation:
    """The study: the base plan (its settings and test sets), the cells, and one plan per checkpoint scored whose
    tasks are every cell's runs (a run shared by two cells, e.g. ``none`` across D in the full design, is one)."""

    base: Plan
    cells: tuple[dict, ...]
    full: bool

    def tasks(self, checkpoint: str = "selected") -> dict[str, list[Task]]:
        """Cell name → its tasks (``none`` and ``sas`` x seeds) scoring ``checkpoint``; the baseline cell also
        trains the exploratory arm ``sas_size`` with the sas runs' seeds, views, steps and prompts."""
        out = {}
        for c in self.cells:
            tasks = [replace(t, spec=cell_spec(t.spec, c), checkpoint=checkpoint) for t in self.base.main_tasks()]
            if c == BASELINE:
                tasks += [replace(t, spec=t.spec.but(arm=arm, params={})) for arm in EXTRA_ARMS
                          for t in list(tasks) if t.spec.arm == "sas"]
            out[cell_name(c)] = tasks
        return out

    def plan(self, checkpoint: str = "selected") -> Plan:
        return replace(self.base, tasks=tuple(t for ts in self.tasks(checkpoint).values() for t in ts))

    def record(self) -> dict:
        return {"design": "2^4" if self.full else "2^(4-1), D = ABC",
                "factors": [vars(f) for f in FACTORS], "aliases": {} if self.full else ALIASES,
                "cells": [cell_name(c) for c in self.cells], "plan": self.base.record(),
                "runs": {name: [t.spec.name for t in ts] for name, ts in self.tasks().items()}}


def ablation(profile: str = "quick", model: str = "litemedsam", data: str = "auto", seeds=None, full: bool = False,
             **overrides) -> Ablation:
    """The study on the profile's data and training size, arms ``none`` and ``sas``, with model selection on the
    val split and the prompts box, 1 and 2 clicks (no number-of-clicks sessions). ``seeds``: by default the
    profile's first three (the quick profile has one). Every cell's specs are built and validated now."""
    from sas_kit import config

    seeds = tuple(seeds) if seeds is not None else tuple(config.PROFILES[profile].seeds[:3])
    base = make_plan(profile, model, data, arms=("none", "sas"), seeds=seeds, prompts=PROMPTS, noc=(),
                     select="best", **overrides)
    study = Ablation(base, tuple(design(full)), full)
    for checkpoint in CHECKPOINTS:
        study.tasks(checkpoint)  # every spec validated before anything trains
    return study


def _diffs(per_image: pd.DataFrame, prompt: str, scope: str, arm: str = "sas", ref: str = "none") -> pd.DataFrame:
    if scope not in SCOPES:  # a dataset's name: its own test images (the phantom's internal split)
        return stats._matrix(per_image[per_image.dataset == scope], arm, ref, prompt)
    ext = per_image[per_image.role == "external"]
    if scope != "external average":
        ext = ext[ext.area_fraction.map(size_bin) == scope.split(" ", 1)[1]]
    return stats._matrix(ext, arm, ref, prompt)


def _scopes(frames) -> tuple[str, ...]:
    """SCOPES when the scores hold external sets; else (the phantom) the internal test split alone, named by its
    dataset, so a run without external data still shows the machinery (no claim: it is outside the Holm family)."""
    frames = list(frames)
    if any((f.role == "external").any() for f in frames):
        return SCOPES
    return tuple(sorted(set().union(*(set(f.dataset[f.role == "internal"]) for f in frames))))


def effects(scores: dict[tuple[str, str], pd.DataFrame], study: Ablation) -> pd.DataFrame:
    """Each factor's main effect on the SAS − none gain, per checkpoint, prompt and scope, with its v2 interval;
    and each cell's own gain (``factor`` = the cell name). ``scores``: (cell, checkpoint) → per-image rows.
    Scopes: :data:`SCOPES`; without external sets (the phantom) the internal test split (:func:`_scopes`)."""
    names = [cell_name(c) for c in study.cells]
    scopes = _scopes(scores.values())
    rows = []
    for checkpoint in CHECKPOINTS:
        for prompt in PROMPTS:
            for scope in scopes:
                diffs = {n: _diffs(scores[(n, checkpoint)], prompt, scope) for n in names}
                if any(d.empty for d in diffs.values()):
                    continue
                index = sorted(set.intersection(*(set(d.index) for d in diffs.values())))
                seeds = sorted(set.intersection(*(set(d.columns) for d in diffs.values())))
                if not index or not seeds:
                    continue
                aligned = {n: d.loc[index, seeds] for n, d in diffs.items()}
                by_size = scope == "external average"
                for n in names:  # each cell's own gain, for the table of cells
                    rows.append(_effect_row(n, "cell", checkpoint, prompt, scope, aligned[n], by_size))
                for f in FACTORS:
                    signs = {n: c[f.letter] for n, c in zip(names, study.cells)}
                    contrast = sum(signs[n] * aligned[n] for n in names) / (len(names) / 2)
                    rows.append(_effect_row(f.letter, "main effect", checkpoint, prompt, scope, contrast, by_size))
                base = scores.get((cell_name(BASELINE), checkpoint))
                for arm in (a for a in EXTRA_ARMS if base is not None and a in set(base.arm)):
                    for ref in ("none", "sas"):
                        rows.append(_effect_row(f"{arm}-{ref}", "exploratory arm", checkpoint, prompt, scope,
                                                _diffs(base, prompt, scope, arm, ref), by_size))
    return _holm(pd.DataFrame(rows))


def _holm(table: pd.DataFrame) -> pd.DataFrame:
    """``p`` (two-sided t with the row's SE and df) and ``p_holm``: Holm within the pre-registered family, the main
    effects of the selected weights at 1 and 2 clicks on the external average (amendment v3); NaN elsewhere."""
    from scipy import stats as st

    if table.empty:
        return table
    out = table.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        out["p"] = 2 * st.t.sf(np.abs(out.effect / out.se), out.df)
    out["p_holm"] = np.nan
    family = out.p[(out.kind == "main effect") & (out.checkpoint == "selected") & (out.scope == "external average")
                   & out.prompt.isin(stats.PRIMARY_PROMPTS) & out.p.notna()]
    out.loc[family.index, "p_holm"] = stats.holm(family)
    return out


def _effect_row(factor: str, kind: str, checkpoint: str, prompt: str, scope: str, diff: pd.DataFrame,
                by_dataset: bool) -> dict:
    r = stats._interval(diff, by_dataset=by_dataset)
    meaning = next((f"{f.name}: {f.high} vs {f.low}" for f in FACTORS if f.letter == factor),
                   "cell gain SAS − none" if kind == "cell" else f"{factor.replace('-', ' − ')}, baseline cell")
    return {"factor": factor, "kind": kind, "meaning": meaning, "checkpoint": checkpoint, "prompt": prompt,
            "scope": scope, "n_images": r["n_images"], "n_seeds": r["n_seeds"], "effect": r["gain"],
            "ci_low": r["ci_low"], "ci_high": r["ci_high"], "se": r["se"], "df": r["df"],
            "seed_effects": r["seed_gains"], "method": r["method"]}


def run_ablation(study: Ablation, out: str | Path, workers: int = 0, cluster: str | None = None,
                 threads: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every cell's runs (resumable: finished runs and scores are reused), score the selected and the last
    weights, write ``ablation.json``, ``effects.csv`` and ``main_effects.png`` into ``out``; return the effects.
    The selected weights are scored with the training (one task per run), the last epoch's after every run has
    finished (so two workers never train one run)."""
    import json

    from sas_kit import files
    from sas_kit.experiment import executor

    out, start = Path(out), time.perf_counter()
    record = study.record()
    files.write_text(out / "ablation.json", json.dumps(record, indent=1))
    scores = {}
    for checkpoint in CHECKPOINTS:
        plan = study.plan(checkpoint)
        executor.run_plan(plan, out, workers=workers, cluster=cluster, progress=progress, threads=threads)
        for name, tasks in study.tasks(checkpoint).items():
            frames = [pd.read_csv(executor.score_path(out, t, plan.tests), dtype={"id": str}) for t in tasks]
            scores[(name, checkpoint)] = pd.concat(frames, ignore_index=True)
    table = effects(scores, study)
    table.to_csv(out / "effects.csv", index=False)
    files.write_text(out / "ablation.json", json.dumps({**record, "seconds": round(time.perf_counter() - start)},
                                                       indent=1))
    if not table.empty:
        import matplotlib.pyplot as plt

        fig = main_effects_figure(table)
        fig.savefig(out / "main_effects.png", dpi=120, bbox_inches="tight")
        plt.close(fig)  # written, not shown (a notebook shows main_effects_figure itself)
    return table


def main_effects_figure(table: pd.DataFrame, checkpoint: str = "selected"):
    """One panel per scope: each factor's main effect at 1 and 2 clicks with its 95 % CI."""
    import matplotlib.pyplot as plt

    sub = table[(table.kind == "main effect") & (table.checkpoint == checkpoint) & table.prompt.isin(["1click", "2click"])]
    scopes = [s for s in SCOPES if s in set(sub.scope)] or sorted(set(sub.scope))  # the phantom: its one scope
    fig, axes = plt.subplots(1, max(1, len(scopes)), figsize=(max(6.5, 4 * len(scopes)), 3.2), sharey=True,
                             squeeze=False, layout="constrained")  # constrained: the suptitle clears the panels
    letters = [f.letter for f in FACTORS]
    for ax, scope in zip(axes[0], scopes):
        for k, prompt in enumerate(["1click", "2click"]):
            rows = sub[(sub.scope == scope) & (sub.prompt == prompt)].set_index("factor").reindex(letters)
            y = np.arange(len(letters)) + (k - 0.5) * 0.25
            ax.errorbar(rows.effect, y, xerr=[rows.effect - rows.ci_low, rows.ci_high - rows.effect], fmt="o",
                        capsize=3, label=prompt)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(letters)), [f"{f.letter}: {f.name}" for f in FACTORS])
        ax.set_title(scope)
        ax.set_xlabel("main effect on the SAS − none Dice gain")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Main effects ({checkpoint} weights; 95 % CIs over seeds and acquisition groups)", fontsize=10)
    return fig
