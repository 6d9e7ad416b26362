"""Report tables: paired gains, the external average, size bins and the README block."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sas_kit.experiment import stats
from sas_kit.experiment.protocol import make_plan
from sas_kit.report import readme as readme_mod
from sas_kit.report import tables


def _per_image(shift: dict, n: int = 40, seeds=(0, 1), seed_effect: float = 0.0,
               datasets=(("int", "internal"), ("ext1", "external"), ("ext2", "external"))) -> pd.DataFrame:
    """Synthetic per-image Dice: ``shift[(arm, dataset)]`` added to the arm; ``seed_effect`` x seed added to sas."""
    rng = np.random.default_rng(0)
    rows = []
    for dataset, role in datasets:
        base = rng.uniform(0.3, 0.8, n)
        area = np.exp(rng.uniform(np.log(0.001), np.log(0.4), n))
        for arm in ("zero_shot", "none", "sas"):
            for seed in (seeds[:1] if arm == "zero_shot" else seeds):
                for prompt in ("box", "2click"):
                    extra = shift.get((arm, dataset), 0.0) + (seed_effect * seed if arm == "sas" else 0.0)
                    dice = np.clip(base + extra + rng.normal(0, 0.01, n), 0, 1)
                    for i in range(n):
                        rows.append({"dataset": dataset, "target": "t", "role": role, "arm": arm, "seed": seed,
                                     "prompt": prompt, "id": f"img{i}", "dice": dice[i], "iou": dice[i],
                                     "area_fraction": area[i], "size_bin": "<1%" if area[i] < 0.01 else ">20%"})
    return pd.DataFrame(rows)


def _gain(gains, endpoint="gain", prompt="2click", scope="external average"):
    return gains[(gains.endpoint == endpoint) & (gains.prompt == prompt) & (gains.scope == scope)].iloc[0]


def test_primary_endpoint_recovers_a_known_shift_and_weights_datasets_equally():
    gains = stats.endpoints(_per_image({("sas", "ext1"): 0.10, ("sas", "ext2"): 0.30}), n_boot=500)
    avg = _gain(gains)
    assert avg.kind == "primary" and avg.n_images == 80 and avg.n_seeds == 2
    assert avg.gain == pytest.approx(0.20, abs=0.01) and avg.ci_low < avg.gain < avg.ci_high and avg.ci_low > 0.15
    assert _gain(gains, "gain per dataset", scope="int").gain == pytest.approx(0.0, abs=0.01)
    assert _gain(gains, "gain", prompt="box").kind == "secondary"
    assert any("above zero" in line for line in tables.verdict(gains))


def test_no_gain_is_reported_as_such():
    gains = stats.endpoints(_per_image({}), n_boot=500)
    avg = _gain(gains)
    assert avg.ci_low < 0 < avg.ci_high
    assert any("includes zero" in line for line in tables.verdict(gains))


def test_ci_includes_seed_variance():
    """Two seeds that disagree (sas seed 1 is 0.2 better than seed 0) must widen the CI far beyond the image noise."""
    calm = _gain(stats.endpoints(_per_image({("sas", "ext1"): 0.1}), n_boot=500))
    noisy = _gain(stats.endpoints(_per_image({("sas", "ext1"): 0.1}, seed_effect=0.2), n_boot=500))
    assert (noisy.ci_high - noisy.ci_low) > 3 * (calm.ci_high - calm.ci_low)


def test_usgra_nerve_and_vessel_are_one_cluster():
    data = _per_image({("sas", "usgra_nerve"): 0.2, ("sas", "usgra_vessel"): 0.2},
                      datasets=(("ext1", "external"), ("usgra_nerve", "external"), ("usgra_vessel", "external")))
    avg = _gain(stats.endpoints(data, n_boot=300))
    # clusters ext1 (gain 0) and usgra (gain 0.2) weigh one half each: 0.1, not the 0.133 of three equal datasets
    assert avg.gain == pytest.approx(0.10, abs=0.01)


def test_size_bins_forgetting_and_two_click_gap_are_reported():
    gains = stats.endpoints(_per_image({("sas", "ext1"): 0.1, ("none", "ext2"): -0.05}), n_boot=200)
    assert {"small-target gain", "large-target check", "box forgetting", "k-click minus box"} <= set(gains.endpoint)
    sizes = gains[gains.endpoint.isin(["gain by size", "small-target gain", "large-target check"])]
    assert set(sizes.scope) == {f"external {b}" for b in ("<1%", "1-5%", "5-20%", ">20%")}  # external rows only
    assert sizes.n_images.sum() == 80 * 2  # every external image in exactly one bin, per prompt (box, 2click)
    named = gains[gains.kind == "named"]  # v2's named endpoints: < 1 % / 1-5 % at 2 clicks, > 20 % at box, 2 clicks
    assert set(zip(named.scope, named.prompt)) == {("external <1%", "2click"), ("external 1-5%", "2click"),
                                                   ("external >20%", "box"), ("external >20%", "2click")}
    assert named.p_holm.notna().all() and (named.p_holm >= named.p - 1e-12).all()
    forget = gains[(gains.endpoint == "box forgetting") & (gains.comparison == "none-zero_shot")].set_index("scope")
    assert forget.loc["ext2", "gain"] == pytest.approx(-0.05, abs=0.01) and forget.loc["ext1", "gain"] == pytest.approx(0, abs=0.01)
    assert stats.detectable(gains) > 0


def test_results_and_size_tables_have_the_promised_columns():
    per_image = _per_image({})
    results = tables.results_table(per_image)
    assert list(results.columns) == ["dataset", "target", "arm", "prompt", "seed", "n", "dice_mean", "ci_low", "ci_high"]
    assert (results.ci_low <= results.dice_mean).all() and (results.dice_mean <= results.ci_high).all()
    sizes = tables.sizebin_table(per_image)
    assert set(sizes.size_bin) == {"<1%", ">20%"} and sizes.n.sum() == 3 * 40 * 3 * 2
    assert list(tables.size_pivot(sizes).columns) == ["<1%", ">20%"]


def test_readme_block_is_generated_from_the_run(tmp_path):
    per_image = _per_image({("sas", "ext1"): 0.10})
    stats.endpoints(per_image, n_boot=200).to_csv(tmp_path / "gains.csv", index=False)
    (tmp_path / "plan.json").write_text(json.dumps({"profile": "cpu", "model": "m", "seeds": [0], "arms": ["none", "sas"],
                                                    "train_images": 1, "samples_per_arm_seed": 4, "n_test": {"ext1": 40},
                                                    "precision": "fp32", "timings": {"total_s": 5}}))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:start -->\nSTALE-TEXT\n<!-- results:end -->\nb\n")
    readme_mod.update_readme(readme, tmp_path, "sas-kit reproduce --profile cpu")
    text = readme.read_text()
    assert "STALE-TEXT" not in text and "+0.100" in text and text.startswith("a\n") and text.endswith("b\n")


def test_plan_falls_back_to_the_phantom_without_real_data(tmp_data_root, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    plan = make_plan("quick")
    assert plan.internal == "phantom" and plan.externals == () and plan.arms == ("zero_shot", "none", "sas")
    from sas_kit.data.download import DataUnavailable

    with pytest.raises(DataUnavailable, match="bus_bra"):  # asking for real data without it says how to get it
        make_plan("cpu", data="real")


def test_plan_reads_sas_params_from_a_sweep_file_and_rejects_bad_ones(tmp_path, tmp_data_root, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    good = tmp_path / "sas_params.json"
    good.write_text(json.dumps({"params": {"scale_range": [0.4, 1.0]}, "score": 0.5}))
    plan = make_plan("quick", sas_params=good)
    assert plan.sas_params == {"scale_range": [0.4, 1.0]} and str(good) in plan.sas_params_source
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="sas-kit sweep"):
        make_plan("quick", sas_params=bad)
    with pytest.raises(ValueError, match="unknown arm"):
        make_plan("quick", arms=["none", "sass"])


def test_earlier_calls_keep_the_cold_timings_of_the_same_runs_only(tmp_path, capsys):
    from sas_kit.report.reproduce import earlier_calls

    path = tmp_path / "plan.json"
    runs = [{"name": "none_seed0", "key": "abc"}]
    assert earlier_calls(path, {"runs": runs}) == []  # no earlier call
    path.write_text(json.dumps({"runs": runs, "timings": {"total_s": 3000}, "earlier_calls": []}))
    assert earlier_calls(path, {"runs": runs}) == [{"total_s": 3000}]
    path.write_text(json.dumps({"runs": runs, "timings": {"total_s": 24}, "earlier_calls": [{"total_s": 3000}]}))
    assert earlier_calls(path, {"runs": runs}) == [{"total_s": 3000}, {"total_s": 24}]  # oldest first
    assert earlier_calls(path, {"runs": [{"name": "none_seed0", "key": "other code"}]}) == []  # other runs: afresh
    path.write_text("{not json")
    assert earlier_calls(path, {"runs": runs}) == [] and "could not be read" in capsys.readouterr().out
