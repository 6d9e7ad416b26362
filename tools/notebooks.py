"""Notebook hygiene for contributors (not part of the library): strip outputs with nbstripout, check structure.

    python tools/notebooks.py --strip notebooks/*.ipynb      # what `make clean-notebooks` runs
    python tools/notebooks.py --sync-setup notebooks/*.ipynb # rewrite every setup cell from SETUP_CELL
    python tools/notebooks.py notebooks/*.ipynb              # list problems, exit 1 if any
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
import tomllib
from nbstripout import strip_output

ROOT = Path(__file__).resolve().parent.parent
CHECK = "# NBVAL_CHECK_OUTPUT"  # nbval compares these cells' committed outputs (nbstripout keeps them)
# The repository's URL lives in one place, pyproject.toml [project.urls]; setup cells and badges are checked against it.
KIT_GIT_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
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
OPENING = ("**What you will learn**", "**Prerequisites:**", "**Time:**")


def strip(nb):
    """nbstripout, keeping the outputs of ``# NBVAL_CHECK_OUTPUT`` cells (cell metadata ``keep_output``). nbval
    skips a reference cell whose execution_count is None, so a kept cell's count is set to 1 (a fixed value)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and CHECK in cell.source:
            cell.metadata["keep_output"] = True
    nb = strip_output(nb, keep_output=False, keep_count=False, keep_id=True)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("keep_output") and cell.outputs:
            cell.execution_count = 1
            for out in cell.outputs:
                if "execution_count" in out:
                    out["execution_count"] = 1
    return nb


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def parameter_names(cell) -> list[str]:
    return re.findall(r"^([A-Za-z_]\w*)\s*=", cell.source, flags=re.M)


def structure_problems(nb, path: Path) -> list[str]:
    """What a chapter lacks: the common opening, a parameters cell whose names are all used, a summary with a
    correct next link, and outputs stripped except nbval-checked cells."""
    found = []
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown" or not first.source.startswith(f"# {path.name[:2]} · "):
        found.append(f"the first cell is not a markdown title '# {path.name[:2]} · ...'")
    else:
        found += [f"the opening lacks {part}" for part in OPENING if part not in first.source]
    code = code_cells(nb)
    if not code or code[0].source != SETUP_CELL:
        found.append("its first code cell is not tools/notebooks.SETUP_CELL (run with --sync-setup)")
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    if len(params) != 1 or len(code) < 2 or code[1] is not params[0]:
        found.append("the second code cell is not the one cell tagged 'parameters'")
    else:
        later = "\n".join(c.source for c in code[2:])
        found += [f"parameter {n} is never used" for n in parameter_names(params[0])
                  if not re.search(rf"\b{n}\b", later)]
    last = nb.cells[-1] if nb.cells else None
    if last is None or last.cell_type != "markdown" or not last.source.startswith("## Summary"):
        found.append("the last cell is not a markdown '## Summary'")
    else:
        chapters = sorted(path.parent.glob("[0-9][0-9]_*.ipynb"))
        later = [p for p in chapters if p.name > path.name]
        if later:
            link = f"[`{later[0].stem}`]({later[0].name})"
            if f"Next: {link}" not in last.source:
                found.append(f"the summary does not end with 'Next: {link}'")
        elif "Next:" in last.source:
            found.append("the last chapter's summary names a next chapter")
    if nbformat.writes(strip(copy.deepcopy(nb))) != nbformat.writes(nb):
        found.append("outputs or execution counts not stripped (run `make clean-notebooks`)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--strip", action="store_true", help="rewrite the files stripped")
    parser.add_argument("--sync-setup", action="store_true", help="make the first code cell SETUP_CELL")
    args = parser.parse_args(argv)
    bad = 0
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if args.sync_setup:
            code_cells(nb)[0].source = SETUP_CELL
        if args.strip or args.sync_setup:
            nb = strip(nb)
            nbformat.write(nb, path)
        for problem in structure_problems(nb, path):
            print(f"{path}: {problem}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
