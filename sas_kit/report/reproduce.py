"""``run_protocol``: the experiment stage's plan, training and scoring, then this stage's report files."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from sas_kit import config
from sas_kit.experiment.embed_cache import EmbeddingCache
from sas_kit.experiment.low_data import low_data_curve
from sas_kit.experiment.protocol import evaluate_arms, example_panels, make_plan, test_pools, train_arms
from sas_kit.experiment.train import load_samples
from sas_kit.models import precision as policy
from sas_kit.report import tables


def run_protocol(profile: str = "quick", model: str = "litemedsam", out: str | Path = "runs/reproduce",
                 datasets_mode: str = "auto", progress: bool = True, arms=None, sas_params=None,
                 **overrides) -> Path:
    """Run the whole protocol; write results.csv, gains.csv, sizebins.csv, training.csv, per_image.csv,
    plan.json, summary.md and figures into ``out`` (with the genseg arm also low_data.csv, low_data_table.csv and
    low_data.png); return the path of summary.md."""
    start = time.perf_counter()
    plan = make_plan(profile, model, datasets_mode, arms=arms, sas_params=sas_params, **overrides)
    plan.precision = policy.resolve(plan.precision, config.device())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(plan.model, root=True, precision=plan.precision) if plan.mode == "decoder" else None
    timings = {}
    t0 = time.perf_counter()
    train = load_samples(plan.internal, "train", plan.train_limit)
    val = load_samples(plan.internal, "val", plan.eval_limit) if plan.select == "best" else []
    tests, empty = test_pools(plan)
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    checkpoints, history, samples = train_arms(plan, train, val, cache, out, progress)
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_image = evaluate_arms(plan, tests, checkpoints, cache, progress)
    timings["evaluate_s"] = time.perf_counter() - t0
    curve = None
    if "genseg" in plan.arms and plan.low_data:  # GenSeg's own figure: Dice vs number of real training images
        t0 = time.perf_counter()
        curve = low_data_curve(plan, train, val, tests[plan.internal], cache, out, progress, scored=per_image)
        timings["low_data_s"] = time.perf_counter() - t0
    timings["encoder_calls"] = cache.encoder_calls if cache else None
    timings["total_s"] = time.perf_counter() - start
    per_image.to_csv(out / "per_image.csv", index=False)
    pd.DataFrame(history).to_csv(out / "training.csv", index=False)
    n_test = {name: int(per_image[per_image.dataset == name].id.nunique()) for name in tests}
    record = {**asdict(plan), "train_images": len(train),
              "samples_per_arm_seed": min(samples.values()) if samples else 0,
              "n_test": n_test, "empty_left_out": empty, "timings": timings}
    (out / "plan.json").write_text(json.dumps(record, indent=1))
    panels = example_panels(plan, tests, checkpoints, cache)
    return tables.write_report(out, plan, per_image, pd.DataFrame(history), record, panels, curve)
