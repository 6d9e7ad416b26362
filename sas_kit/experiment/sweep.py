"""The SAS parameter sweep: train the sas arm per grid point and score it on the INTERNAL VAL split only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sas_kit.experiment.embed_cache import EmbeddingCache
from sas_kit.experiment.evaluate import evaluate
from sas_kit.experiment.executor import train_task
from sas_kit.experiment.protocol import make_plan
from sas_kit.experiment.run import load_samples
from sas_kit.models import registry

GRID = {"scale_range": [(0.15, 1.0), (0.4, 1.0)],
        "noise_models": [("gaussian", "rayleigh", "gamma", "texture"), ("gaussian",)]}


def grid_points(grid: dict = GRID) -> list[dict]:
    """Every combination of the grid's values (the first is the kit's default SAS, docs/sas_parameters.md)."""
    return [{"scale_range": s, "noise_models": n} for s in grid["scale_range"] for n in grid["noise_models"]]


def run_sweep(profile: str = "cpu", model: str = "litemedsam", out: str | Path = "runs/sweep", epochs: int | None = None,
              val_limit: int | None = None, progress: bool = True, datasets_mode: str = "auto") -> Path:
    """Train SAS (seed 0, the profile's views and batch, no val images during training) per grid point, score the
    mean of box and 2-click Dice on the internal val split, write sweep.csv and sas_params.json (the best point, for
    ``reproduce --sas-params``). No test split is read. Returns the JSON path."""
    points = grid_points()
    overrides = {"epochs": epochs} if epochs is not None else {}
    base = make_plan(profile, model, datasets_mode, arms=("sas",), seeds=(0,), select="last", **overrides)
    specs = [base.main_tasks()[0].spec.but(params=params) for params in points]  # all checked before one trains
    out = Path(out)
    val = load_samples(specs[0].data, "val", val_limit)
    items = [(image, mask, {"index": i}) for i, (image, mask) in enumerate(val)]
    cache = EmbeddingCache(specs[0].model, root=True, precision=specs[0].precision, device=specs[0].device)
    rows = []
    for k, (params, spec) in enumerate(zip(points, specs)):
        folder = out / f"p{k}"
        train_task(spec, folder, progress)
        sam = registry.load_model(spec.model, checkpoint=folder / "best.pt", device=spec.device)
        scores = evaluate(sam, spec.model, items, ("box", "2click"), progress=False, embeddings=cache)
        means = scores.groupby("prompt")["dice"].mean()
        rows.append({"scale_range": str(params["scale_range"]), "noise_models": "+".join(params["noise_models"]),
                     "val_box_dice": means["box"], "val_2click_dice": means["2click"], "score": float(means.mean()),
                     "n_val": int(scores.id.nunique()), "params": json.dumps(params)})
    table = pd.DataFrame(rows)
    table.to_csv(out / "sweep.csv", index=False)
    best = table.sort_values("score", ascending=False).iloc[0]
    path = out / "sas_params.json"
    path.write_text(json.dumps({"params": json.loads(best["params"]), "score": float(best["score"]),
                                "scored_on": f"{specs[0].data} val split ({int(best['n_val'])} images), seed 0",
                                "profile": profile, "model": model, "epochs": specs[0].epochs,
                                "table": json.loads(table.drop(columns="params").to_json(orient="records"))}, indent=1))
    return path
