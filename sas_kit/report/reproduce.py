"""``run_protocol``: a finished plan, its runs (serial or on workers), then this stage's report files."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sas_kit.data import datasets
from sas_kit.experiment import executor
from sas_kit.experiment.low_data import curve_rows
from sas_kit.experiment.protocol import Plan, load_tests, make_plan
from sas_kit.report import tables


def run_protocol(profile: str = "quick", model: str = "litemedsam", out: str | Path = "runs/reproduce",
                 datasets_mode: str = "auto", progress: bool = True, arms=None, sas_params=None, workers: int = 0,
                 cluster: str | None = None, threads: int | None = None, **overrides) -> Path:
    """Plan (:func:`make_plan`; every setting checked before anything trains), run and report the protocol;
    return the path of summary.md."""
    start = time.perf_counter()
    plan = make_plan(profile, model, datasets_mode, arms=arms, sas_params=sas_params, **overrides)
    return run_and_report(plan, out, workers, cluster, progress, threads, plan_s=time.perf_counter() - start)


def run_and_report(plan: Plan, out: str | Path, workers: int = 0, cluster: str | None = None, progress: bool = True,
                   threads: int | None = None, plan_s: float = 0.0) -> Path:
    """Run ``plan``'s tasks into ``out/runs`` (:func:`executor.run_plan`), then write results.csv, gains.csv,
    sizebins.csv, training.csv, per_image.csv, plan.json, summary.md and figures into ``out`` (with the genseg arm
    also low_data.csv, low_data_table.csv and low_data.png), all read back from the run folders."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = executor.run_plan(plan, out, workers=workers, cluster=cluster, progress=progress, threads=threads)
    for r in records:
        if r["reused"] and progress:
            print(f"reused {r['name']}: {r['reused']}")
    runs_s = time.perf_counter() - t0
    per_image = executor.collect(plan, out)
    history = executor.history(plan, out)
    curve = curve_rows(plan, executor.collect(plan, out, curve=True), per_image) if plan.curve_tasks() else None
    main = [r for r in records if not r["curve"]]
    timings = {"load_s": plan_s, "runs_wall_s": runs_s, "workers": workers or (cluster and "cluster") or 0, "threads": records[0]["threads"] if records else None,
               "train_s": sum(r["train_s"] for r in main), "evaluate_s": sum(r["score_s"] for r in main),
               "low_data_s": sum(r["train_s"] + r["score_s"] for r in records if r["curve"]),
               "encoder_calls": sum(r["encoder_calls"] for r in records)}
    timings["total_s"] = plan_s + runs_s
    timings["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # tells calls apart in earlier_calls
    per_image.to_csv(out / "per_image.csv", index=False)
    history.to_csv(out / "training.csv", index=False)
    samples = [r["samples"] for r in main if r["arm"] != "zero_shot"]
    record = {**plan.record(), "samples_per_arm_seed": min(samples) if samples else 0,
              "n_test": {name: int(per_image[per_image.dataset == name].id.nunique()) for name in plan.tests},
              "empty_left_out": plan.empty, "timings": timings}
    record["earlier_calls"] = earlier_calls(out / "plan.json", record)
    (out / "plan.json").write_text(json.dumps(record, indent=1))
    return tables.write_report(out, plan, per_image, history, record, example_panels(plan, out), curve)


def earlier_calls(path: str | Path, record: dict) -> list[dict]:
    """The ``timings`` of the earlier calls into the same ``--out`` with the same runs (names and keys), oldest
    first, read from the plan.json there: a warm rerun no longer hides what the cold call cost. A plan.json of other
    runs (other settings or training code), or none, starts the list afresh; an unreadable one is named."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"note: {path} could not be read ({err}); its earlier timings are not carried over")
        return []
    if previous.get("runs") != record.get("runs") or "timings" not in previous:
        return []
    return [*previous.get("earlier_calls", []), previous["timings"]]


def example_panels(plan: Plan, out: str | Path, n: int = 4) -> list[tuple]:
    """Box-prompt predictions of zero-shot, none and SAS (first seed) on the smallest test targets."""
    from sas_kit.experiment.embed_cache import EmbeddingCache
    from sas_kit.models import precision as policy
    from sas_kit.models import registry, segment

    tasks = {t.spec.arm: t for t in plan.main_tasks() if t.spec.seed == plan.seeds[0]}
    arms = [a for a in ("zero_shot", "none", "sas") if a in tasks]
    examples = load_tests(plan.tests, plan.internal)
    picks = sorted(((ex["area_fraction"], name, ex) for name, items in examples.items() for ex in items),
                   key=lambda t: t[0])[:n]
    from sas_kit.report.try_model import load_models

    base = registry.load_model(plan.model, device=plan.device)
    # decoder-only checkpoints share the base encoder (one encoder in memory, not one per arm)
    loaded = load_models(plan.model, {arm: executor.run_folder(out, tasks[arm].spec) / "best.pt" for arm in arms
                                      if tasks[arm].spec.trains}, device=plan.device, base=base)
    sams = {arm: loaded[arm] if tasks[arm].spec.trains else base for arm in arms}
    cache = EmbeddingCache(plan.model, root=True, precision=plan.precision, device=plan.device)
    spec = registry.get_spec(plan.model)
    panels = []
    for area, name, example in picks:
        image, gt = datasets.to_arrays(example)
        preds = {}
        for arm, sam in sams.items():
            full = plan.mode == "full" and arm != "zero_shot"  # a fine-tuned encoder: encode afresh
            emb, meta = (registry.encode(sam, spec, image, precision=plan.precision) if full
                         else cache.get(sam, spec, image, device=sam.device))
            with policy.decoder(sam.device, plan.precision):
                preds[arm] = segment.predict(sam, spec, image, gt, "box", embedding=emb, meta=meta)
        panels.append((f"{name} {100 * area:.1f}%", image, gt, preds))
    return panels
