"""Chapter 07 (what drives the SAS effect) shows code that is what the library runs, and reads its results honestly.

(a) The main-effect contrast the chapter writes out (``main_effect``, taken from the notebook's own cell and
    executed without the rest of the cell) equals the library's (``ablate.effects``) on synthetic per-image scores:
    every factor, checkpoint, prompt and scope, in the half fraction and the full design. The chapter's own check
    cells (the synthetic study, the aliasing columns) run as written and their asserts pass.
(b) Section 1 reads the committed headline run's seed spread from the files as they are (v1: no ``seed_gains``
    column) and from files of the v2 layout (a ``seed_gains`` column, five seeds), the number of seeds read from them.
(c) Section 4 works both ways: no committed cpu study (it says so and how to run it) and a committed one (its table).
(d) The chapter runs the study through the library (``ablate.ablation``, ``run_ablation``, ``effects_table``,
    ``main_effects_figure``), never hard-codes a run folder, and its text states the live study's cut as the
    parameter cell sets it.
No test here trains a model; tests/test_notebooks.py executes the chapter.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest

from sas_kit import config
from sas_kit.experiment import ablate, stats
from sas_kit.report import figures
from sas_kit.report.ablation import effects_table

matplotlib.use("Agg")
CH07 = Path(__file__).resolve().parent.parent / "notebooks" / "07_what_drives_sas.ipynb"


def _python(source: str) -> str:
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _cells(kind: str = "code") -> list:
    return [c for c in nbformat.read(CH07, as_version=4).cells if c.cell_type == kind]


def _cell(contains: str):
    return next(c for c in _cells() if contains in c.source)


def _definitions(defines: str, namespace: dict | None = None) -> dict:
    """Execute only the imports and function definitions of the cell that defines ``defines``."""
    tree = ast.parse(_python(_cell(f"def {defines}(").source))
    tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
    ns = dict(namespace or {})
    exec(compile(tree, f"{CH07.name}:{defines}", "exec"), ns)
    return ns


def _run(contains: str, ns: dict) -> dict:
    """Execute the whole cell that contains ``contains`` in ``ns`` (its display calls print nothing here)."""
    ns.setdefault("display", lambda *a, **k: None)
    source = _python(_cell(contains).source).replace("from IPython.display import display\n", "")
    exec(compile(source, f"{CH07.name}:{contains}", "exec"), ns)
    return ns


def _code() -> str:
    return "\n".join(c.source for c in _cells())


def _markdown() -> str:
    return "\n".join(c.source for c in _cells("markdown"))


def _parameters() -> dict:
    ns: dict = {}
    exec(next(c for c in _cells() if "parameters" in c.metadata.get("tags", [])).source, ns)
    return ns


SETS = {"busi": 5, "hc18": 6, "carotid_cca": 6, "usgra_nerve": 4, "usgra_vessel": 4}


def _scores(cells, seeds, seed=0, sets=SETS, role="external"):
    """Per-image rows for each cell and checkpoint: a random gain per cell, prompt and seed plus per-image noise;
    the USGRA sets share their images, carotid frames come in recordings of three, targets of every size bin."""
    rng = np.random.default_rng(seed)
    images = []
    for name, n in sets.items():
        for i in range(n):
            ident = f"u{i}" if name.startswith("usgra") else f"{name}-{i}"
            images.append({"dataset": name, "id": ident, "group": f"rec{i // 3}" if name == "carotid_cca" else ident,
                           "area_fraction": [0.004, 0.03, 0.1, 0.3][i % 4], "role": role})
    images = pd.DataFrame(images)
    base = rng.uniform(0.3, 0.9, len(images))
    out = {}
    for c in cells:
        for checkpoint in ablate.CHECKPOINTS:
            rows = []
            for s in seeds:
                for prompt in ablate.PROMPTS:
                    gain = rng.normal(0, 0.05)
                    for arm in ("none", "sas"):
                        dice = base + (gain + rng.normal(0, 0.03, len(images)) if arm == "sas" else 0.0)
                        rows.append(images.assign(arm=arm, seed=s, prompt=prompt, dice=dice))
            out[(ablate.cell_name(c), checkpoint)] = pd.concat(rows, ignore_index=True)
    return out


# ------------------------------------------------------------------ (a) the contrast written out


@pytest.mark.parametrize("full,seeds", [(False, (0,)), (False, (0, 1, 2)), (True, (0, 1))],
                         ids=["half-1-seed", "half-3-seeds", "full-2-seeds"])
def test_written_out_main_effect_equals_the_library(full, seeds):
    ns = _definitions("main_effect", {"np": np})
    cells = ablate.design(full=full)
    table = ablate.effects(_scores(cells, seeds, seed=len(seeds) + full),
                           ablate.Ablation(base=None, cells=tuple(cells), full=full))
    assert set(table.scope) == set(ablate.SCOPES)
    checked = 0
    for (checkpoint, prompt, scope), rows in table.groupby(["checkpoint", "prompt", "scope"]):
        gain = rows[rows.kind == "cell"].set_index("factor").effect
        main = rows[rows.kind == "main effect"].set_index("factor").effect
        for f in ablate.FACTORS:
            mine = ns["main_effect"]([gain[ablate.cell_name(c)] for c in cells], cells, f.letter)
            assert np.isclose(mine, main[f.letter], rtol=0, atol=1e-12), (checkpoint, prompt, scope, f.letter)
            checked += 1
    assert checked == len(ablate.CHECKPOINTS) * len(ablate.PROMPTS) * len(ablate.SCOPES) * len(ablate.FACTORS)


def test_the_chapters_synthetic_check_and_aliasing_cells_run_as_written():
    ns = _run("cells = ablate.design()", {"SEED": 0, "np": np, "pd": pd})  # the factors and the design (section 2)
    ns = _run("def main_effect(", ns)  # the synthetic study: raises if the written-out contrast differs
    for f in ablate.FACTORS:  # and it recovers the truth it was given, within the library's CI
        assert ns["one"].ci_low[f.letter] <= ns["main_effect"]([ns["truth"](c) for c in ns["cells"]], ns["cells"],
                                                               f.letter) <= ns["one"].ci_high[f.letter]
    _run("ablate.ALIASES.items()", ns)  # raises if a column is not its aliases' product
    check = _cell("ablate.ALIASES.items()").source
    assert "design(full=True)" in check and "0.02 * c[\"A\"] * c[\"B\"] * c[\"C\"]" in check
    half = [0.02 * c["A"] * c["B"] * c["C"] for c in ablate.design()]
    assert ns["main_effect"](half, ablate.design(), "D") == pytest.approx(0.04)  # what the text says it shows
    full = ablate.design(full=True)
    assert ns["main_effect"]([0.02 * c["A"] * c["B"] * c["C"] for c in full], full, "D") == pytest.approx(0.0)


def test_the_live_check_compares_every_factor_prompt_and_scope_with_the_library():
    check = _cell("selected = table[").source
    assert "main_effect(" in check and "assert np.isclose(" in check and 'kind == "cell"' in check
    cells = ablate.design()
    study = ablate.Ablation(base=None, cells=tuple(cells), full=False)
    # the phantom's scores (internal only): the cell runs on them as on the live table
    scores = _scores(cells, (0,), sets={"phantom": 6}, role="internal")
    ns = _definitions("main_effect", {"np": np})
    ns.update(table=ablate.effects(scores, study), study=study, ablate=ablate, np=np, pd=pd)
    _run("selected = table[", ns)


# ------------------------------------------------------------------ (b) the seed spread of the committed run


def test_seed_gains_helper_reads_what_the_library_reads():
    ns = _definitions("seed_gains", {"stats": stats})
    for text in ("0:+0.0123 1:-0.0456", "0:-0.0100 1:+0.0200 2:+0.0000 3:-0.0310 4:+0.0500"):
        assert list(ns["seed_gains"](text).values()) == figures.seed_values(text)
        assert list(ns["seed_gains"](text)) == list(range(len(text.split())))


def test_section1_reads_the_committed_headline_run_as_it_is():
    ns = _run("def seed_gains(", {})
    plan = json.loads((config.REPO_ROOT / "docs" / "results" / "cpu_headline" / "plan.json").read_text())
    assert ns["n_seeds"] == len(plan["seeds"]) and list(ns["per_seed"].columns) == plan["seeds"]
    assert list(ns["per_seed"].index) == list(ns["primary"].index) == ["1click", "2click"]


def _v2_root(tmp_path: Path, seeds=(0, 1, 2, 3, 4)) -> Path:
    """A repository root whose docs/results/cpu_headline holds v2-layout files: gains.csv with seed_gains."""
    from tests.test_chapters_456 import _per_image

    folder = tmp_path / "docs" / "results" / "cpu_headline"
    folder.mkdir(parents=True)
    stats.endpoints(_per_image(seeds=seeds, seed=7)).to_csv(folder / "gains.csv", index=False)
    (folder / "plan.json").write_text(json.dumps({"profile": "cpu", "seeds": list(seeds),
                                                  "externals": ["busi", "hc18", "carotid_cca", "usgra_nerve",
                                                                "usgra_vessel"]}))
    return tmp_path


def test_section1_reads_v2_files_with_their_number_of_seeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "REPO_ROOT", _v2_root(tmp_path))
    ns = _run("def seed_gains(", {})
    assert ns["n_seeds"] == 5 and "seed_gains" in ns["source"]
    assert "the committed headline run (5 seeds" in capsys.readouterr().out
    _run("if headline is not None:", ns)  # the figure: one dot per seed
    fig = matplotlib.pyplot.gcf()
    assert "(5 seeds)" in fig.axes[0].get_title()
    matplotlib.pyplot.close("all")


# ------------------------------------------------------------------ (c) the committed cpu study, both ways


def test_section4_says_the_cpu_study_has_not_been_run_when_its_files_are_absent(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path)
    ns = _run('COMMITTED = config.REPO_ROOT', {"config": config, "json": json, "pd": pd, "ablate": ablate,
                                               "effects_table": effects_table})
    _run("def reading(", ns)
    out = capsys.readouterr().out
    assert ns["committed"] is None and "The cpu study has not been run yet" in out
    assert "sas-kit ablate --profile cpu --workers 2 --out runs/ablate_cpu" in out and "amendment v3" in out


def test_section4_shows_a_committed_cpu_study(tmp_path, monkeypatch, capsys):
    import matplotlib.pyplot as plt

    cells = ablate.design()
    study = ablate.Ablation(base=None, cells=tuple(cells), full=False)
    folder = tmp_path / "docs" / "results" / "ablation_cpu"
    folder.mkdir(parents=True)
    ablate.effects(_scores(cells, (0, 1, 2)), study).to_csv(folder / "effects.csv", index=False)
    (folder / "ablation.json").write_text(json.dumps({
        "design": "2^(4-1), D = ABC", "cells": [ablate.cell_name(c) for c in cells], "seconds": 5400,
        "plan": {"profile": "cpu", "seeds": [0, 1, 2], "train_images": 100}}))
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path)
    shown = []
    ns = _run('COMMITTED = config.REPO_ROOT', {"config": config, "json": json, "pd": pd, "ablate": ablate, "plt": plt,
                                               "effects_table": effects_table, "display": shown.append})
    _run("def reading(", ns)
    out = capsys.readouterr().out
    assert ns["committed"] is not None and "COMMITTED: docs/results/ablation_cpu" in out
    assert len(shown) == 1 and len(shown[0]) == 4 * len(ablate.PROMPTS)  # effects_table: factor x prompt
    assert out.count("p_holm") == 8  # the family: 4 factors x 1 and 2 clicks
    plt.close("all")


# ------------------------------------------------------------------ (d) the library runs the study; no run folders


def test_the_chapter_runs_the_study_through_the_library_and_names_no_run_folder():
    code = _code()
    for call in ("ablate.ablation(PROFILE, MODEL, data=DATA, **LIVE)", "ablate.run_ablation(study, OUT)",
                 "effects_table(table)", "ablate.main_effects_figure(table)", "effects_table(committed)",
                 "ablate.main_effects_figure(committed)", "ablate.design()", "ablate.ALIASES",
                 'make_policy("sas")', 'make_policy("sas_size")', '["achieved_fraction"]',
                 'config.REPO_ROOT / "docs" / "results" / "ablation_cpu"',
                 'config.REPO_ROOT / "docs" / "results" / "cpu_headline"'):
        assert call in code, call
    for hard_coded in ("_seed0", "scores-", "best.pt", "last.pt", "done.json", "spec.json", "/tmp/"):
        assert hard_coded not in code, hard_coded
    assert not re.search(r"_seed\d|-[0-9a-f]{10}\b", code)  # a run folder's name: arm, seed and key hash
    params = next(c for c in _cells() if "parameters" in c.metadata.get("tags", []))
    outside = code.replace(params.source, "")
    assert "../runs" not in outside  # the live folder is OUT, set once in the parameter cell


def test_the_text_states_the_live_cut_as_the_parameter_cell_sets_it():
    params = _parameters()
    text = _markdown()
    assert f"`LIVE_TRAIN_IMAGES = {params['LIVE_TRAIN_IMAGES']}` keeps the profile's training size" in text
    assert config.PROFILES["quick"].train_limit == 6 and "one seed each, 6 training images" in text
    assert config.PROFILES["quick"].seeds == (0,) and len(ablate.design()) * 2 + len(ablate.EXTRA_ARMS) == 17
    assert "cannot show\na real effect" in text or "cannot show a real effect" in text
    assert params["PROFILE"] == "quick" and params["DATA"] == "auto"
    summary = _cells("markdown")[-1].source
    assert summary.startswith("## Summary") and "when `docs/results/ablation_cpu/` holds them" in summary


def test_section6_shows_sas_and_sas_size_with_their_area_fractions(tmp_data_root):
    import matplotlib.pyplot as plt

    ns = {"DATA": "phantom", "DATASET": "bus_bra", "N_SHOW": 2, "SEED": 0, "plt": plt, "np": np}
    _run('make_policy("sas_size")', ns)
    titles = [ax.get_title() for ax in plt.gcf().axes]
    assert len(titles) == 6 and all("%" in t for t in titles)
    assert [t.split(":")[0].split("\n")[-1] for t in titles[:3]] == ["original", "sas", "sas_size"]
    _run("views = {", ns)
    assert len(ns["views"]["sas_size"]) == 2 * 50
    lo, hi = ns["sas_size"].params["area_range"]
    applied = [v for v in ns["views"]["sas_size"] if v not in set(ns["originals"])]
    assert applied and all(0.5 * lo <= v <= 1.5 * hi for v in applied)
    plt.close("all")
