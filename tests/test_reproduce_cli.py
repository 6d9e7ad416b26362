"""`sas-kit reproduce` / `sas-kit sweep` / `sas-kit evaluate --split all` front doors on the phantom."""

from __future__ import annotations

import json

import pytest

from sas_kit.cli import main
from sas_kit.experiment import sweep


@pytest.fixture
def phantom_only(tmp_data_root, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    return tmp_data_root


def test_reproduce_rejects_unknown_arms_and_bad_param_files_without_a_traceback(phantom_only, tmp_path, capsys):
    assert main(["reproduce", "--data", "phantom", "--arms", "none,sass", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown arm" in err and "Traceback" not in err
    bad = tmp_path / "p.json"
    bad.write_text("[1]")
    assert main(["reproduce", "--data", "phantom", "--sas-params", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "sas-kit sweep" in capsys.readouterr().err


def test_sweep_scores_the_val_split_and_writes_params_reproduce_accepts(phantom_only, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "GRID", {"scale_range": [(0.15, 1.0), (0.4, 1.0)], "noise_models": [("gaussian",)]})
    monkeypatch.setattr(sweep, "grid_points", lambda grid=None: [{"scale_range": s, "noise_models": ("gaussian",)}
                                                                  for s in ((0.15, 1.0), (0.4, 1.0))])
    out = tmp_path / "sweep"
    assert main(["sweep", "--profile", "quick", "--out", str(out), "--val-limit", "2"]) == 0
    record = json.loads((out / "sas_params.json").read_text())
    assert set(record["params"]) == {"scale_range", "noise_models"} and "val split" in record["scored_on"]
    assert len(record["table"]) == 2 and all(0 <= r["score"] <= 1 for r in record["table"])
    assert record["score"] == pytest.approx(max(r["score"] for r in record["table"]))  # the best val point is kept
    from sas_kit.experiment.protocol import make_plan

    assert make_plan("quick", sas_params=out / "sas_params.json").sas_params == record["params"]


def test_evaluate_split_all_pools_every_split(phantom_only, capsys):
    assert main(["evaluate", "--data", "phantom", "--split", "all", "--limit", "3", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert row["split"] == "all" and row["n"] + row["skipped_empty"] == 3 and row["precision"] in ("fp32", "bf16")


@pytest.mark.slow
def test_reproduce_with_genseg_writes_its_rows_and_the_low_data_curve(phantom_only, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["reproduce", "--profile", "quick", "--data", "phantom", "--arms", "none,sas,genseg",
                 "--out", str(out)]) == 0
    import pandas as pd

    per_image = pd.read_csv(out / "per_image.csv")
    assert set(per_image.arm) == {"zero_shot", "none", "sas", "genseg"}  # the CLI always scores zero_shot
    curve = pd.read_csv(out / "low_data.csv")
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(set(curve.n_train)) == [*plan["low_data"], plan["train_images"]]  # quick: 3, then all 6
    assert set(curve.arm) == {"none", "sas", "genseg"} and (out / "low_data.png").stat().st_size > 0
    # the full-size point is the main run's internal scores (same checkpoints, same images), not another size's
    key = ["arm", "id", "prompt"]
    main_rows = per_image[(per_image.dataset == plan["internal"]) & per_image.arm.isin(["none", "sas", "genseg"])]
    full = curve[curve.n_train == plan["train_images"]].merge(main_rows, on=key, suffixes=("", "_main"))
    assert len(full) == len(main_rows) > 0 and (full.dice == full.dice_main).all()
    small = curve[curve.n_train == 3].merge(main_rows, on=key, suffixes=("", "_main"))
    assert len(small) == len(main_rows) and not (small.dice == small.dice_main).all()
    summary = (out / "summary.md").read_text()
    assert "## Low-data curve" in summary and "genseg-none" in pd.read_csv(out / "gains.csv").comparison.tolist()
    runs = {p.name.split("-")[0] for p in (out / "runs").iterdir()}
    assert runs == {"zero_shot_seed0", "genseg_seed0", "none_seed0", "sas_seed0"}
    assert len(list((out / "runs").iterdir())) == 7  # main arms, zero-shot, and the n=3 runs of none, sas, genseg
    # a second run reuses every run folder: nothing is trained, no generator is loaded
    capsys.readouterr()
    assert main(["reproduce", "--profile", "quick", "--data", "phantom", "--arms", "none,sas,genseg",
                 "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert log.count("finished run, same key") == 6, log  # main and n=3 (full point: main scores)
    again = json.loads((out / "plan.json").read_text())
    assert again["earlier_calls"] == [plan["timings"]] and plan["earlier_calls"] == []  # the cold call's cost is kept
    assert "genseg generator" not in log and "epoch 1/" not in log
    assert (pd.read_csv(out / "per_image.csv").dice == per_image.dice).all()
