"""Metrics, size bins, bootstrap CIs, evaluate() over a dataset and the evaluate command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sas_kit.data.phantom import make_phantom
from sas_kit.experiment import evaluate as ev
from sas_kit.models import registry


def test_dice_and_iou():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :4] = True
    b[:, 2:6] = True
    assert ev.dice(a, b) == pytest.approx(0.5)
    assert ev.iou(a, b) == pytest.approx(20 / 60)
    assert ev.dice(a, a) == 1.0 and ev.dice(a, ~a) == 0.0
    assert np.isnan(ev.dice(np.zeros((3, 3)), np.zeros((3, 3))))
    assert ev.dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        ev.iou(a, b[:5])


def test_size_bins():
    assert [ev.size_bin(f) for f in (0.0, 0.0099, 0.01, 0.049, 0.05, 0.19, 0.2, 1.0)] == \
        ["<1%", "<1%", "1-5%", "1-5%", "5-20%", "5-20%", ">20%", ">20%"]


def test_bootstrap_ci_contains_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.uniform(0.5, 1.0, 20)
    large = rng.uniform(0.5, 1.0, 2000)
    m1, lo1, hi1 = ev.bootstrap_ci(small)
    m2, lo2, hi2 = ev.bootstrap_ci(large)
    assert lo1 < m1 < hi1 and lo2 < m2 < hi2
    assert m1 == pytest.approx(small.mean())
    assert (hi2 - lo2) < (hi1 - lo1) / 5
    assert abs(m2 - 0.75) < 0.02
    assert ev.bootstrap_ci(small, seed=3) == ev.bootstrap_ci(small, seed=3)
    assert all(np.isnan(ev.bootstrap_ci([])))
    assert ev.bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)
    with pytest.raises(ValueError, match="NaN"):
        ev.bootstrap_ci([0.5, np.nan])


@pytest.fixture(scope="module")
def lite():
    return registry.load_model("litemedsam")


@pytest.fixture(scope="module")
def data():
    samples = make_phantom(4, seed=0)
    picked = [samples[0], samples[3]]  # targets of 5 % and 18 %
    empty = (picked[0][0], np.zeros_like(picked[0][1]), {"index": 99, "seed": 0})
    return [picked[0], empty, picked[1]]


def test_evaluate_encodes_once_skips_empty_and_reuses_embeddings(lite, data, monkeypatch):
    calls = []
    real = registry.encode
    monkeypatch.setattr(registry, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = {}
    df = ev.evaluate(lite, "litemedsam", data, ["box", "1click"], embeddings=cache, progress=False)
    assert len(calls) == 2 and len(cache) == 2  # two non-empty images, each encoded once for both prompts
    assert df.attrs["skipped_empty"] == 1 and df.attrs["skipped_ids"] == ["phantom-0-99"]
    assert len(df) == 4 and set(df["prompt"]) == {"box", "1click"}
    assert df["dice"].notna().all() and (df.loc[df.prompt == "box", "dice"] > 0.6).all()
    assert set(df["size_bin"]) <= set(ev.SIZE_BINS) and (df["per_component"]).all()
    again = ev.evaluate(lite, "litemedsam", data, ["box"], embeddings=cache, progress=False)
    assert len(calls) == 2  # nothing re-encoded
    np.testing.assert_allclose(again["dice"], df.loc[df.prompt == "box", "dice"])
    summary = ev.summarise(df)
    assert list(summary.columns) == ["dataset", "target", "prompt", "n", "dice_mean", "ci_low", "ci_high", "iou_mean"]
    assert summary["n"].tolist() == [2, 2]
    assert (summary["ci_low"] <= summary["dice_mean"]).all() and (summary["dice_mean"] <= summary["ci_high"]).all()
    with pytest.raises(ValueError, match="unknown prompt"):
        ev.evaluate(lite, "litemedsam", data, ["boxes"], progress=False)


def test_evaluate_command_prints_json(lite, data, monkeypatch, capsys):
    from sas_kit.cli import evaluate as cmd
    from sas_kit.data import datasets

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: lite)
    monkeypatch.setattr(datasets, "load", lambda name, split="test", limit=None: data[:limit])
    assert cmd.main(["--data", "phantom", "--limit", "2", "--prompt", "box", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == "box" and out["n"] == 1 and out["skipped_empty"] == 1 and out["per_component"] is True
    assert out["ci_low"] <= out["dice_mean"] <= out["ci_high"] and out["dice_mean"] > 0.6


def test_evaluate_command_unknown_model_exits_2(capsys):
    from sas_kit.cli import evaluate as cmd

    assert cmd.main(["--model", "nope", "--data", "phantom"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
