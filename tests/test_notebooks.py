"""Every notebook executes under papermill with the quick profile, and the committed notebooks are clean."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

from sas_kit.notebook_tools import problems

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
QUICK = yaml.safe_load((NOTEBOOKS[0].parent / "profiles" / "quick.yaml").read_text())


def test_the_five_chapters_exist():
    assert [p.name[:2] for p in NOTEBOOKS][:5] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    assert problems(nbformat.read(path, as_version=4)) == []


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


def test_setup_cells_install_from_the_one_repository_url():
    from sas_kit.notebook_tools import KIT_GIT_URL, SETUP_CELL

    for path in NOTEBOOKS:
        setup = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert setup.source == SETUP_CELL and f'"git+{KIT_GIT_URL}"' in setup.source


def test_binder_follows_repo2docker_conventions():
    binder = NOTEBOOKS[0].parent.parent / "binder"
    post = binder / "postBuild"
    assert post.stat().st_mode & 0o111 and post.read_text().startswith("#!/bin/bash")
    assert 'pip install --no-cache-dir -e ".[lab]"' in post.read_text()
    requirements = (binder / "requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" in requirements and "torch" in requirements
    assert (binder / "runtime.txt").read_text().strip().startswith("python-3.")
    assert not (binder / "Dockerfile").exists() and not (binder / "environment.yml").exists()  # would override
