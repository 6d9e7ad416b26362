"""Every notebook executes under papermill with the quick profile; each opens and ends the same way and is clean."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from tools.notebooks import KIT_GIT_URL, SETUP_CELL, strip, structure_problems

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
QUICK = yaml.safe_load((NOTEBOOKS[0].parent / "profiles" / "quick.yaml").read_text())


def test_the_chapters_are_numbered_without_gaps():
    assert [int(p.name[:2]) for p in NOTEBOOKS] == list(range(1, len(NOTEBOOKS) + 1))
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_and_ends_like_every_chapter_and_is_clean(path):
    assert structure_problems(nbformat.read(path, as_version=4), path) == []


def _without(nb, keep):
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if keep(c)]
    return nb


def test_the_structure_check_fails_when_a_chapter_loses_a_part():
    path = NOTEBOOKS[0]
    nb = nbformat.read(path, as_version=4)
    no_params = _without(nb, lambda c: "parameters" not in c.metadata.get("tags", []))
    assert "the second code cell is not the one cell tagged 'parameters'" in structure_problems(no_params, path)
    no_summary = _without(nb, lambda c: not c.source.startswith("## Summary"))
    assert "the last cell is not a markdown '## Summary'" in structure_problems(no_summary, path)
    wrong_next = copy.deepcopy(nb)
    wrong_next.cells[-1].source = wrong_next.cells[-1].source.replace("02_sas", "03_sas")
    assert any("Next:" in p for p in structure_problems(wrong_next, path))
    unused = copy.deepcopy(nb)
    next(c for c in unused.cells if "parameters" in c.metadata.get("tags", [])).source += "\nUNUSED_KNOB = 3"
    assert "parameter UNUSED_KNOB is never used" in structure_problems(unused, path)
    dirty = copy.deepcopy(nb)
    cell = next(c for c in dirty.cells if c.cell_type == "code" and "NBVAL" not in c.source)
    cell.outputs, cell.execution_count = [nbformat.v4.new_output("stream", text="hi")], 3
    assert any("not stripped" in p for p in structure_problems(dirty, path))


def test_stripping_keeps_only_the_nbval_checked_outputs():
    nb = strip(nbformat.read(NOTEBOOKS[0], as_version=4))
    kept = [c for c in nb.cells if c.cell_type == "code" and c.outputs]
    assert kept and all("# NBVAL_CHECK_OUTPUT" in c.source and c.execution_count == 1 for c in kept)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_with_papermill(path, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters=QUICK, cwd=str(path.parent), kernel_name="python3",
                               progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_setup_cells_and_badges_use_the_one_repository_url():
    for path in NOTEBOOKS:
        setup = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert setup.source == SETUP_CELL and f'"git+{KIT_GIT_URL}"' in setup.source
    readme = (NOTEBOOKS[0].parent.parent / "README.md").read_text()
    slug = KIT_GIT_URL.removeprefix("https://github.com/")
    badges = re.findall(r"(?:mybinder\.org/v2/gh|colab\.research\.google\.com/github)/([^/]+/[^/]+)/", readme)
    assert badges and set(badges) == {slug}
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in readme, f"README's notebook table lacks {path.name}"


def test_binder_follows_repo2docker_conventions():
    binder = NOTEBOOKS[0].parent.parent / "binder"
    post = binder / "postBuild"
    assert post.stat().st_mode & 0o111 and post.read_text().startswith("#!/bin/bash")
    assert 'pip install --no-cache-dir -e ".[lab]"' in post.read_text()
    requirements = (binder / "requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" in requirements and "torch" in requirements
    assert (binder / "runtime.txt").read_text().strip().startswith("python-3.")
    assert not (binder / "Dockerfile").exists() and not (binder / "environment.yml").exists()  # would override
    from sas_kit.models.precision import BINDER_MMAP_THRESHOLD

    start = binder / "start"  # Binder's heap setting: the configuration `sas-kit bench memory` measures
    assert start.stat().st_mode & 0o111 and start.read_text().rstrip().endswith('exec "$@"')
    assert f"export SAS_KIT_MMAP_THRESHOLD={BINDER_MMAP_THRESHOLD}" in start.read_text()
