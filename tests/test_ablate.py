"""The factorial ablation (issue 18): its design, its cells' specs, and main effects recovered from known gains."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sas_kit.experiment import ablate


def test_half_fraction_is_the_defining_relation_and_balanced():
    cells = ablate.design()
    assert len(cells) == 8 and len({ablate.cell_name(c) for c in cells}) == 8
    assert all(c["D"] == c["A"] * c["B"] * c["C"] for c in cells)
    for f in "ABCD":  # each level of each factor in half the cells; main effects orthogonal
        assert sum(c[f] for c in cells) == 0
        for g in "ABCD":
            if g != f:
                assert sum(c[f] * c[g] for c in cells) == 0
    # aliasing: the A column equals the BCD column, AB equals CD
    assert all(c["A"] == c["B"] * c["C"] * c["D"] for c in cells)
    assert all(c["A"] * c["B"] == c["C"] * c["D"] for c in cells)
    assert {"A": -1, "B": -1, "C": -1, "D": -1} in cells  # the baseline (the kit's configuration) is a cell
    full = ablate.design(full=True)
    assert len(full) == 16 and len({ablate.cell_name(c) for c in full}) == 16


def test_cell_specs_change_exactly_their_factors():
    from sas_kit.experiment.run import RunSpec

    none = RunSpec.build("litemedsam", "phantom", "none", 0, data_key="k", train_limit=2)
    sas = RunSpec.build("litemedsam", "phantom", "sas", 0, data_key="k", train_limit=2)
    low = {"A": -1, "B": -1, "C": -1, "D": -1}
    high = {"A": 1, "B": 1, "C": 1, "D": 1}
    lo_none, hi_none = ablate.cell_spec(none, low), ablate.cell_spec(none, high)
    assert (lo_none.views, lo_none.max_clicks, lo_none.loss_size) == (2, 3, "low")
    assert (hi_none.views, hi_none.max_clicks, hi_none.loss_size) == (3, 5, "full")
    assert ablate.cell_spec(none, {**high, "D": -1}).key == hi_none.key  # D does not touch the none arm
    assert ablate.cell_spec(sas, high).params.p_noise == 0.0  # scale simulation alone
    assert ablate.cell_spec(sas, low).params == sas.params  # the kit's scale + noise: the baseline is the headline
    assert ablate.cell_spec(sas, high).params.scale_range == sas.params.scale_range


def _scores(cells, gain_of, seeds=(0, 1, 2), n=60, seed=0):
    """Per-image rows for each cell: none Dice ~ U(0.3, 0.7) per image, sas = none + gain_of(cell) + noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.7, n)
    area = np.where(np.arange(n) % 3 == 0, 0.005, np.where(np.arange(n) % 3 == 1, 0.1, 0.3))
    out = {}
    for c in cells:
        rows = []
        for s in seeds:
            for arm in ("none", "sas"):
                noise = rng.normal(0, 0.01, n) if arm == "sas" else 0.0
                dice = base + (gain_of(c) + noise if arm == "sas" else 0.0)
                for prompt in ablate.PROMPTS:
                    rows.append(pd.DataFrame({"id": [f"i{k}" for k in range(n)], "dataset": ["busi", "hc18"] * (n // 2),
                                              "group": [f"g{k // 2}" for k in range(n)], "role": "external",
                                              "arm": arm, "seed": s, "prompt": prompt, "dice": dice,
                                              "area_fraction": area}))
        frame = pd.concat(rows, ignore_index=True)
        out[(ablate.cell_name(c), "selected")] = frame
        out[(ablate.cell_name(c), "last")] = frame
    return out


def test_effects_recover_a_known_main_effect():
    cells = ablate.design()
    study = ablate.Ablation(base=None, cells=tuple(cells), full=False)
    table = ablate.effects(_scores(cells, lambda c: 0.02 + 0.05 * c["B"]), study)
    main = table[(table.kind == "main effect") & (table.checkpoint == "selected") & (table.prompt == "2click")
                 & (table.scope == "external average")].set_index("factor")
    assert main.loc["B", "effect"] == pytest.approx(0.10, abs=0.01)  # +0.05 at high minus -0.05 at low
    assert main.loc["B", "ci_low"] > 0.05 and main.loc["B", "p_holm"] < 0.05
    family = table[table.p_holm.notna()]
    assert len(family) == 4 * 2 and set(family.prompt) == {"1click", "2click"}  # 4 factors x 2 primary prompts
    for f in "ACD":
        assert abs(main.loc[f, "effect"]) < 0.01 and main.loc[f, "ci_low"] < 0 < main.loc[f, "ci_high"]
    cell = table[(table.kind == "cell") & (table.prompt == "1click") & (table.scope == "external average")]
    assert len(cell) == 2 * 8  # per checkpoint
    small = table[(table.kind == "main effect") & (table.scope == "external <1%")]
    assert set(small.n_images) == {20}  # the size bins are the evaluation's


def test_effects_table_one_row_per_factor_and_prompt():
    from sas_kit.report.ablation import effects_table

    cells = ablate.design()
    study = ablate.Ablation(base=None, cells=tuple(cells), full=False)
    wide = effects_table(ablate.effects(_scores(cells, lambda c: 0.0), study))
    assert len(wide) == 4 * len(ablate.PROMPTS) and set(wide.factor) == set("ABCD")
    assert any(c.startswith("external <1% (n=") for c in wide.columns)


def test_ablation_plan_on_the_phantom_trains_each_run_once_and_scores_two_checkpoints():
    study = ablate.ablation("quick", data="phantom")
    selected, last = study.tasks("selected"), study.tasks("last")
    assert list(selected) == [ablate.cell_name(c) for c in ablate.design()]
    base = selected[ablate.cell_name(ablate.BASELINE)]
    assert sorted(t.spec.arm for t in base) == ["none", "sas", "sas_size"]  # the exploratory arm: baseline only
    assert all(sorted(t.spec.arm for t in ts) == ["none", "sas"] for n, ts in selected.items()
               if n != ablate.cell_name(ablate.BASELINE))
    assert all(t.spec.select == "best" and t.noc == () and t.prompts == ablate.PROMPTS for ts in selected.values() for t in ts)
    keys = [t.spec.key for ts in selected.values() for t in ts]
    assert len(keys) == len(set(keys)) == 8 * 2 + 1  # the half fraction shares no run
    assert [t.spec.key for ts in last.values() for t in ts] == keys  # the same runs, other weights
    assert {t.checkpoint for ts in last.values() for t in ts} == {"last"}
    from sas_kit.experiment import executor

    plan = study.plan("last")
    paths = {executor.score_path("/o", t, plan.tests) for t in plan.tasks}
    assert not paths & {executor.score_path("/o", t, plan.tests) for t in study.plan("selected").tasks}


def test_without_external_sets_the_effects_are_read_on_the_internal_test_split():
    """The phantom (no external sets): one scope, the internal test split by its dataset's name, so the live
    quick study of chapter 07 shows its table and figure; no row of it is in the Holm family."""
    from sas_kit.report.ablation import effects_table

    cells = ablate.design()
    study = ablate.Ablation(base=None, cells=tuple(cells), full=False)
    scores = {k: v.assign(role="internal", dataset="phantom")
              for k, v in _scores(cells, lambda c: 0.02 + 0.05 * c["B"], seeds=(0,)).items()}
    table = ablate.effects(scores, study)
    assert set(table.scope) == {"phantom"} and table.p_holm.isna().all()
    main = table[(table.kind == "main effect") & (table.checkpoint == "selected") & (table.prompt == "2click")]
    assert main.set_index("factor").loc["B", "effect"] == pytest.approx(0.10, abs=0.01)
    wide = effects_table(table)
    assert len(wide) == 4 * len(ablate.PROMPTS) and list(wide.columns[3:]) == ["phantom (n=60)"]
    import matplotlib.pyplot as plt

    fig = ablate.main_effects_figure(table)
    assert [ax.get_title() for ax in fig.axes] == ["phantom"]
    plt.close(fig)
