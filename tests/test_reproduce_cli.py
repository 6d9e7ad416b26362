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
