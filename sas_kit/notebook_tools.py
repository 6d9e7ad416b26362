"""Keep notebooks in git clean: strip outputs except cells nbval checks (``# NBVAL_CHECK_OUTPUT``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat

CHECK = "# NBVAL_CHECK_OUTPUT"
# The one place that names the kit's repository: every notebook's setup cell is this text (tests check it;
# `python -m sas_kit.notebook_tools --sync-setup notebooks/*.ipynb` rewrites them after a change).
KIT_GIT_URL = "https://github.com/<org>/sas-kit"  # placeholder until the repository is published
SETUP_CELL = f"""# Setup: on Colab install the kit (the GPU is used when the runtime has one); in a checkout use it in place.
import sys

if "google.colab" in sys.modules:
    %pip install --quiet "git+{KIT_GIT_URL}"
    from google.colab import output

    output.enable_custom_widget_manager()  # the kit's widgets (ipywidgets, ipyevents) need it on Colab
try:
    import sas_kit
except ModuleNotFoundError:  # a checkout without `pip install -e .`
    sys.path.insert(0, "..")
    import sas_kit
%matplotlib inline"""


def checked(cell) -> bool:
    return cell.cell_type == "code" and CHECK in cell.source


def strip(nb):
    """Remove outputs and execution counts, keeping outputs of checked cells. nbval only compares cells
    that ran, so a checked cell keeps execution_count 1 (a fixed value: no noise in diffs)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.execution_count = 1 if checked(cell) and cell.outputs else None
        if not checked(cell):
            cell.outputs = []
        for out in cell.outputs:
            if "execution_count" in out:
                out["execution_count"] = cell.execution_count
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    return nb


def setup_cell(nb):
    """The notebook's first code cell (its setup cell)."""
    return next(c for c in nb.cells if c.cell_type == "code")


def problems(nb) -> list[str]:
    """Why a notebook is not clean (empty list when it is)."""
    found = []
    if setup_cell(nb).source != SETUP_CELL:
        found.append("its first code cell is not notebook_tools.SETUP_CELL (run with --sync-setup)")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.execution_count not in (None, 1) or cell.execution_count == 1 and not checked(cell):
            found.append(f"cell {i} has execution_count {cell.execution_count}")
        if cell.outputs and not checked(cell):
            found.append(f"cell {i} has outputs but is not an nbval-checked cell")
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        found.append("no cell tagged 'parameters'")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--strip", action="store_true", help="rewrite the files cleaned")
    parser.add_argument("--refresh", action="store_true", help="re-execute, then keep only nbval-checked outputs")
    parser.add_argument("--sync-setup", action="store_true", help="make the first code cell SETUP_CELL")
    args = parser.parse_args(argv)
    bad = 0
    for path in args.notebooks:
        if args.refresh:
            refresh_checked(path)
        nb = nbformat.read(path, as_version=4)
        if args.sync_setup:
            setup_cell(nb).source = SETUP_CELL
            nbformat.write(nb, path)
        if args.strip:
            nbformat.write(strip(nb), path)
        for problem in problems(nb):
            print(f"{path}: {problem}")
            bad += 1
    return 1 if bad else 0


def refresh_checked(path: Path, timeout: int = 600) -> None:
    """Execute ``path`` in its folder and keep only the outputs nbval checks (for committing)."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(strip(nb), path)


if __name__ == "__main__":
    raise SystemExit(main())
