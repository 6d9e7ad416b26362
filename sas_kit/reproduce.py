"""The paper's protocol on public data: arms x datasets x prompts x seeds → results.csv, gains.csv, summary.md."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sas_kit import config, datasets, models, sources
from sas_kit.embed_cache import EmbeddingCache
from sas_kit.evaluate import evaluate
from sas_kit.train import TrainConfig, load_samples, train_arrays

ARMS = ("zero_shot", "none", "classic", "stsnet", "sas")
PROMPTS = ("box", "1click", "2click", "3click")
INTERNAL = "bus_bra"
EXTERNALS = ("busi", "hc18", "carotid_cca", "usgra_nerve", "usgra_vessel")
# The SAS sweep (scale range x noise model) is scored on the INTERNAL VAL split only, never on a test split.
# The first point is the kit's default SAS (docs/sas_parameters.md), so its views are shared with the sas arm.
SWEEP_GRID = {"scale_range": [(0.15, 1.0), (0.4, 1.0)],
              "noise_models": [("gaussian", "rayleigh", "gamma", "texture"), ("gaussian",)]}


@dataclass
class Plan:
    """What one reproduction runs: resolved from a profile, a model and the data available."""

    profile: str
    model: str
    internal: str
    externals: tuple[str, ...]
    arms: tuple[str, ...] = ARMS
    prompts: tuple[str, ...] = PROMPTS
    seeds: tuple[int, ...] = (0,)
    epochs: int = 1
    views: int = 3
    mode: str = "decoder"
    view_seed: int | None = None
    sweep_epochs: int = 1
    train_limit: int | None = None
    eval_limit: int | None = None
    sweep: bool = False
    sas_params: dict = field(default_factory=dict)
    data_source: str = "phantom"


def make_plan(profile: str = "quick", model: str = "litemedsam", data: str = "auto", sweep: bool | None = None,
              **overrides) -> Plan:
    """Real data (bus_bra internal, five externals) when a mirror or prepared copies exist, else the phantom."""
    prof = config.PROFILES[profile]
    if data == "auto":
        data = "real" if config.mirror_dir() is not None or all(
            datasets.is_prepared(n) for n in (INTERNAL, *EXTERNALS)) else "phantom"
    internal, externals = (INTERNAL, EXTERNALS) if data == "real" else ("phantom", ())
    plan = Plan(profile=profile, model=model, internal=internal, externals=tuple(externals), seeds=prof.seeds,
                epochs=prof.epochs, views=prof.views, mode=prof.mode, train_limit=prof.train_limit,
                view_seed=prof.view_seed, sweep_epochs=prof.sweep_epochs,
                eval_limit=prof.eval_limit, sweep=(profile != "quick") if sweep is None else sweep,
                data_source="real: " + str(config.mirror_dir() or config.data_root()) if data == "real" else "phantom")
    for key, value in overrides.items():
        setattr(plan, key, tuple(value) if isinstance(value, list) else value)
    return plan


def test_sets(plan: Plan) -> dict[str, list]:
    """The test split of every dataset of the plan (first ``eval_limit`` items), as lists of examples."""
    return {name: list(datasets.load(name, "test", plan.eval_limit)) for name in (plan.internal, *plan.externals)}


def sweep_sas(plan: Plan, train, val, cache: EmbeddingCache, out: Path, progress: bool = True) -> pd.DataFrame:
    """Train the SAS arm (seed 0) for each grid point and score it on the internal val split: mean Dice
    of box and 2-click prompts (box Dice alone barely moves; SAS's claimed effect is on clicks)."""
    rows = []
    grid = [{"scale_range": s, "noise_models": n} for s in SWEEP_GRID["scale_range"] for n in SWEEP_GRID["noise_models"]]
    items = [(image, mask, {"index": i}) for i, (image, mask) in enumerate(val)]
    shared = {} if plan.mode == "decoder" else None
    for k, params in enumerate(grid):
        cfg = TrainConfig(model=plan.model, data=plan.internal, policy="sas", policy_params=params, mode=plan.mode,
                          epochs=plan.sweep_epochs, views=plan.views, seed=0, view_seed=plan.view_seed,
                          out=str(out / "sweep" / f"p{k}"), progress=progress)
        result = train_arrays(cfg, train, val, cache=cache if plan.mode == "decoder" else None)
        sam = models.load_model(plan.model, checkpoint=result.best, device=config.device())
        scores = evaluate(sam, plan.model, items, ("box", "2click"), progress=False, embeddings=shared)
        means = scores.groupby("prompt")["dice"].mean()
        rows.append({"scale_range": str(params["scale_range"]), "noise_models": "+".join(params["noise_models"]),
                     "val_box_dice": means["box"], "val_2click_dice": means["2click"],
                     "score": float(means.mean()), "params": json.dumps(params)})
    return pd.DataFrame(rows)


def run_protocol(profile: str = "quick", model: str = "litemedsam", out: str | Path = "runs/reproduce",
                 datasets_mode: str = "auto", progress: bool = True, sweep: bool | None = None, **overrides) -> Path:
    """Run the whole protocol; write results.csv, gains.csv, sizebins.csv, training.csv, per_image.csv,
    summary.md and figures into ``out``; return the path of summary.md."""
    from sas_kit import report  # report formats what this module computed

    start = time.perf_counter()
    plan = make_plan(profile, model, datasets_mode, sweep=sweep, **overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = models.get_spec(plan.model)
    cache = EmbeddingCache(plan.model, root=True)
    train = load_samples(plan.internal, "train", plan.train_limit)
    val = load_samples(plan.internal, "val", plan.eval_limit)
    timings = {}
    sweep_table = None
    if plan.sweep and "sas" in plan.arms:
        t0 = time.perf_counter()
        sweep_table = sweep_sas(plan, train, val, cache, out, progress)
        sweep_table.to_csv(out / "sweep.csv", index=False)
        plan.sas_params = json.loads(sweep_table.sort_values("score", ascending=False).iloc[0]["params"])
        timings["sweep_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    checkpoints, history = {}, []
    for seed in plan.seeds:
        for arm in plan.arms:
            if arm == "zero_shot":
                continue
            cfg = TrainConfig(model=plan.model, data=plan.internal, policy=arm, mode=plan.mode, epochs=plan.epochs,
                              views=plan.views, seed=seed, view_seed=plan.view_seed,  # none: K copies of the original = same steps, no extra encodes
                              policy_params=plan.sas_params if arm == "sas" else {},
                              out=str(out / "runs" / f"{arm}_seed{seed}"), progress=progress)
            result = train_arrays(cfg, train, val, cache=cache if plan.mode == "decoder" else None)
            checkpoints[(arm, seed)] = result.best
            for epoch, (loss, dice) in enumerate(zip(result.train_loss, result.val_dice), start=1):
                history.append({"arm": arm, "seed": seed, "epoch": epoch, "train_loss": loss, "val_dice": dice,
                                "val_dice_initial": result.val_dice_initial, "best_epoch": result.best_epoch})
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tests = test_sets(plan)
    shared = {name: {} for name in tests} if plan.mode == "decoder" else None
    frames, skipped = [], {}
    for arm in plan.arms:
        for seed in (plan.seeds[:1] if arm == "zero_shot" else plan.seeds):
            sam = models.load_model(plan.model, checkpoint=checkpoints.get((arm, seed)), device=config.device())
            for name, items in tests.items():
                df = evaluate(sam, spec, items, plan.prompts, seed=seed, progress=progress,
                              embeddings=shared[name] if shared is not None else None)
                skipped[name] = df.attrs["skipped_empty"]
                frames.append(df.assign(dataset=name, target=sources.get(name).target, arm=arm, seed=seed,
                                        role="internal" if name == plan.internal else "external"))
    per_image = pd.concat(frames, ignore_index=True)
    timings["evaluate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    timings["encoder_calls_cached"] = cache.encoder_calls
    per_image.to_csv(out / "per_image.csv", index=False)
    pd.DataFrame(history).to_csv(out / "training.csv", index=False)
    (out / "plan.json").write_text(json.dumps({**asdict(plan), "timings": timings, "skipped_empty": skipped}, indent=1))
    panels = example_panels(plan, tests, checkpoints, shared)
    return report.write_report(out, plan, per_image, pd.DataFrame(history), timings, skipped, sweep_table, panels)


def example_panels(plan: Plan, tests: dict, checkpoints: dict, shared: dict | None, n: int = 4) -> list[tuple]:
    """Box-prompt predictions of zero-shot and SAS (seed 0) on the smallest test targets, for the figure."""
    from sas_kit import segment

    arms = [a for a in ("zero_shot", "none", "sas") if a == "zero_shot" or (a, plan.seeds[0]) in checkpoints]
    spec = models.get_spec(plan.model)
    picks = []
    for name, items in tests.items():
        for example in items:
            if not example["empty"]:
                picks.append((example["area_fraction"], name, example))
    picks = sorted(picks, key=lambda t: t[0])[:n]
    sams = {arm: models.load_model(plan.model, checkpoint=checkpoints.get((arm, plan.seeds[0])), device=config.device())
            for arm in arms}
    panels = []
    for area, name, example in picks:
        image, gt = datasets.to_arrays(example)
        emb = shared[name].get(example["id"]) if shared is not None else None
        preds = {arm: segment.predict(sam, spec, image, gt, "box", embedding=emb[0] if emb else None,
                                      meta=emb[1] if emb else None) for arm, sam in sams.items()}
        panels.append((f"{name} {100 * area:.1f}%", image, gt, preds))
    return panels
