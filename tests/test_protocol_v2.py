"""Amendment v2 of the protocol: seeds with their own views, the by-size test draw, NoC in the scores, named
endpoints with Holm's adjustment, per-seed gains, clicks to box quality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sas_kit import config
from sas_kit.experiment import executor, protocol, stats
from sas_kit.experiment.protocol import draw_tests, make_plan
from sas_kit.report import figures, tables


@pytest.fixture
def phantom_only(tmp_data_root, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    return tmp_data_root


def test_cpu_profile_has_five_seeds_with_their_own_views_and_the_click_metrics():
    cpu = config.PROFILES["cpu"]
    assert len(cpu.seeds) >= 5 and cpu.view_seed is None
    assert cpu.test_draw == "by_size" and cpu.noc == (0.85, 0.90) and cpu.max_clicks == 5  # amendment v5
    assert [p for p in cpu.prompts if p != "box"] == ["1click", "2click", "3click", "4click", "5click"]


def test_each_seed_draws_its_own_views_and_noc_reaches_the_tasks(phantom_only):
    plan = make_plan("quick", arms=("zero_shot", "none", "sas"), seeds=(0, 1), view_seed=None, noc=(0.85, 0.9),
                     max_clicks=4)
    sas = [t for t in plan.tasks if t.spec.arm == "sas"]
    assert [t.spec.view_seed for t in sas] == [0, 1]  # not one shared draw
    assert all(t.noc == (0.85, 0.9) and t.max_clicks == 4 for t in plan.tasks if t.spec.arm != "zero_shot")
    assert plan.tasks[0].spec.arm == "zero_shot" and plan.tasks[0].noc == ()  # zero-shot clicks are not scored
    record = plan.record()
    assert record["seeds"] == [0, 1] and record["n_test"] == {"phantom": len(plan.tests["phantom"])}
    # the scores file is keyed by the NoC settings: other settings, other file
    other = make_plan("quick", arms=("none",), seeds=(0,), view_seed=None, noc=(0.85, 0.9), max_clicks=6)
    mine = next(t for t in plan.tasks if t.spec.arm == "none" and t.spec.seed == 0)
    assert executor.score_path("o", mine, plan.tests) != executor.score_path("o", other.tasks[0], other.tests)


def test_by_size_draw_keeps_every_small_and_large_target(monkeypatch):
    rng = np.random.default_rng(0)
    areas = np.concatenate([rng.uniform(0.001, 0.009, 7), rng.uniform(0.011, 0.049, 60),
                            rng.uniform(0.051, 0.19, 30), rng.uniform(0.21, 0.6, 9)])
    pool = [{"id": f"x{i}", "empty": False, "area_fraction": a} for i, a in enumerate(areas)]
    pool += [{"id": "e", "empty": True, "area_fraction": 0.0}]
    monkeypatch.setattr(protocol, "load_pool", lambda name, internal, limit=None: [] if internal else pool)
    sets, empty = draw_tests("int", ("ext",), 20, None, "by_size")
    kept = {ex["id"]: ex["area_fraction"] for ex in pool if ex["id"] in set(sets["ext"])}
    bins = pd.Series(kept).map(protocol.__dict__.get("size_bin") or __import__(
        "sas_kit.experiment.evaluate", fromlist=["size_bin"]).size_bin).value_counts().to_dict()
    assert bins == {"<1%": 7, "1-5%": 20, "5-20%": 20, ">20%": 9} and empty == {"int": 0, "ext": 1}
    # deterministic, and the hash draw is unchanged: first 20 by hash
    assert draw_tests("int", ("ext",), 20, None, "by_size") == (sets, empty)
    assert len(draw_tests("int", ("ext",), 20, None, "hash")[0]["ext"]) == 20
    assert len(draw_tests("int", ("ext",), None, None, "by_size")[0]["ext"]) == 106  # None: every non-empty image
    with pytest.raises(ValueError, match="test_draw"):
        draw_tests("int", ("ext",), 20, None, "by_sise")


def _per_image(n=30, seeds=(0, 1, 2, 3, 4), gain=0.05, seed_sd=0.02, box=0.8):
    """Synthetic scores with NoC columns: sas = none + gain at every click count; clicks climb towards box."""
    rng = np.random.default_rng(1)
    rows = []
    for dataset in ("e1", "e2"):
        area = np.exp(rng.uniform(np.log(0.002), np.log(0.5), n))
        base = rng.uniform(0.4, 0.6, n)
        for arm in ("none", "sas"):
            for s in seeds:
                shift = (gain + rng.normal(0, seed_sd)) if arm == "sas" else 0.0
                noc = np.clip(np.round(rng.uniform(2, 9, n) - (2 if arm == "sas" else 0)), 1, 10)
                for prompt in ("box", "1click", "2click", "3click", "4click", "5click"):
                    k = 0 if prompt == "box" else int(prompt[0])
                    level = box if k == 0 else base + 0.1 * k + shift  # k-click Dice rises past box at k = 3
                    d = np.clip(level + rng.normal(0, 0.02, n), 0, 1)
                    for i in range(n):
                        rows.append({"dataset": dataset, "role": "external", "arm": arm, "seed": s, "prompt": prompt,
                                     "id": f"{dataset}{i}", "dice": d[i], "area_fraction": area[i],
                                     "noc85": noc[i], "noc90": min(10, noc[i] + 1), "max_clicks": 10})
    return pd.DataFrame(rows)


def test_v2_gains_carry_named_endpoints_holm_seed_gains_noc_and_clicks_to_box():
    gains = stats.endpoints(_per_image())
    assert {"primary", "named", "secondary", "exploratory"} <= set(gains.kind)
    prim = gains[gains.kind == "primary"]
    # Holm with 2 endpoints: the smaller p doubled, the larger at least that, never above 1
    p = prim.p.sort_values().to_numpy()
    holm = prim.set_index("p").loc[p, "p_holm"].to_numpy()
    assert holm[0] == pytest.approx(min(1, 2 * p[0])) and holm[1] == pytest.approx(max(holm[0], p[1]))
    assert gains[~gains.kind.isin(stats.FAMILIES)].p_holm.isna().all()
    # per-seed gains: five runs whose mean is the pooled estimate
    row = prim.iloc[0]
    values = figures.seed_values(row.seed_gains)
    assert len(values) == 5 and np.mean(values) == pytest.approx(row.gain, abs=1e-4)
    noc = gains[gains.endpoint.str.startswith("NoC gain")].set_index("prompt")
    assert set(noc.index) == {"noc85", "noc90"} and noc.loc["noc85", "gain"] < -1  # sas needs ~2 fewer clicks
    reach = stats.clicks_to_box(gains).set_index("arm")
    assert reach.loc["none", "clicks"] == 3 and reach.loc["sas", "clicks"] == 3  # 0.5 + 0.3 (+0.05) vs box 0.8
    assert reach.loc["none", "clicks_low"] <= 3 <= (reach.loc["none", "clicks_high"] or 99)


def test_report_writes_noc_table_click_curve_and_forest_with_seed_dots(tmp_path):
    per_image = _per_image()
    noc = tables.noc_table(per_image)
    assert set(noc.arm) == {"none", "sas"} and (noc.n == 30).all() and (noc.cap == 10).all()
    fig = figures.forest(stats.endpoints(per_image))
    dots = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] == 5]
    assert dots, "each seed's gain is drawn as a dot"
    figures.save(figures.click_curve(per_image), tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    lines = tables.verdict(stats.endpoints(per_image))
    assert any("Clicks to reach box Dice, arm sas" in line for line in lines)
    assert any("per seed 0:" in line for line in lines)


def test_a_run_without_external_sets_says_why_it_has_no_endpoint():
    gains = stats.endpoints(_per_image().assign(role="internal"))
    lines = tables.verdict(gains)
    assert len(lines) == 1 and "No endpoint can be computed" in lines[0]
