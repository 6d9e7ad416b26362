"""Report tables: paired gains, the external average, size bins and the README block."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sas_kit import report
from sas_kit.reproduce import make_plan


def _per_image(shift: dict[str, float], n: int = 40, seeds=(0, 1)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for dataset, role in (("int", "internal"), ("ext1", "external"), ("ext2", "external")):
        base = rng.uniform(0.3, 0.8, n)
        area = np.exp(rng.uniform(np.log(0.001), np.log(0.4), n))
        for arm in ("zero_shot", "none", "sas"):
            for seed in (seeds[:1] if arm == "zero_shot" else seeds):
                for prompt in ("box", "2click"):
                    dice = np.clip(base + shift.get((arm, dataset), 0.0) + rng.normal(0, 0.01, n), 0, 1)
                    for i in range(n):
                        rows.append({"dataset": dataset, "target": "t", "role": role, "arm": arm, "seed": seed,
                                     "prompt": prompt, "id": f"{dataset}{i}", "dice": dice[i], "iou": dice[i],
                                     "area_fraction": area[i], "size_bin": "<1%" if area[i] < 0.01 else ">20%"})
    return pd.DataFrame(rows)


def test_gains_recover_a_known_shift_and_average_externals_equally():
    per_image = _per_image({("sas", "ext1"): 0.10, ("sas", "ext2"): 0.30})
    gains = report.gains_table(per_image)
    main = gains[(gains.comparison == "sas-none") & (gains.prompt == "box")].set_index("dataset")
    assert main.loc["ext1", "gain"] == pytest.approx(0.10, abs=0.01)
    assert main.loc["ext2", "gain"] == pytest.approx(0.30, abs=0.01)
    assert main.loc["int", "gain"] == pytest.approx(0.0, abs=0.01)
    avg = main.loc["external average"]
    assert avg.gain == pytest.approx(0.20, abs=0.01) and avg.ci_low < avg.gain < avg.ci_high
    assert avg.ci_low > 0.15  # clearly positive, clearly not the internal set's zero
    assert any("above zero" in line for line in report.verdict(gains))


def test_no_gain_is_reported_as_such():
    gains = report.gains_table(_per_image({}))
    avg = gains[(gains.dataset == "external average") & (gains.comparison == "sas-none")].iloc[0]
    assert avg.ci_low < 0 < avg.ci_high
    assert any("includes zero" in line for line in report.verdict(gains))


def test_results_and_size_tables_have_the_promised_columns():
    per_image = _per_image({})
    results = report.results_table(per_image)
    assert list(results.columns) == ["dataset", "target", "arm", "prompt", "seed", "n", "dice_mean", "ci_low", "ci_high"]
    assert (results.ci_low <= results.dice_mean).all() and (results.dice_mean <= results.ci_high).all()
    sizes = report.sizebin_table(per_image)
    assert set(sizes.size_bin) == {"<1%", ">20%"} and sizes.n.sum() == 3 * 40 * 3 * 2
    assert list(report.size_pivot(sizes).columns) == ["<1%", ">20%"]


def test_readme_block_is_generated_from_the_run(tmp_path):
    per_image = _per_image({("sas", "ext1"): 0.10})
    report.gains_table(per_image).to_csv(tmp_path / "gains.csv", index=False)
    (tmp_path / "plan.json").write_text(json.dumps({"profile": "cpu", "model": "m", "seeds": [0], "epochs": 1,
                                                    "train_limit": 1, "eval_limit": 1, "timings": {"total_s": 5}}))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:start -->\nSTALE-TEXT\n<!-- results:end -->\nb\n")
    report.update_readme(readme, tmp_path, "sas-kit reproduce --profile cpu")
    text = readme.read_text()
    assert "STALE-TEXT" not in text and "+0.100" in text and text.startswith("a\n") and text.endswith("b\n")


def test_plan_falls_back_to_the_phantom_without_real_data(tmp_data_root, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    plan = make_plan("quick")
    assert plan.internal == "phantom" and plan.externals == () and not plan.sweep
    assert make_plan("cpu", data="real").externals == ("busi", "hc18", "carotid_cca", "usgra_nerve", "usgra_vessel")
