"""Chapters 02 and 03 show code that is what the library runs, and chapter 02's figures do not depend on cell order.

(a) The written-out SAS steps (chapter 02) and click rule (chapter 03) are taken from the notebooks themselves (their
    function definitions, executed without the rest of the cell) and compared with the library on fixed inputs.
(b) Chapter 02 runs the same in any order: statically (no cell after the data cell reads a name another such cell
    writes, nor overwrites a name of the setup cells) and by execution (its cells in notebook order and in reverse
    order, each in a fresh kernel, give the same figures and text).
"""

from __future__ import annotations

import ast
import base64
import hashlib
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from sas_kit.augment.sas import SASParams, inject_noise, simulate_scale
from sas_kit.data.phantom import make_phantom
from sas_kit.models import prompts

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CH02 = NOTEBOOKS / "02_sas_augmentation.ipynb"
CH03 = NOTEBOOKS / "03_zero_shot.ipynb"
COMMITTED = NOTEBOOKS.parent / "docs" / "results" / "cpu_headline"


def _python(source: str) -> str:
    """A cell's source as plain Python (IPython magics such as %matplotlib translated)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _definitions(path: Path, defines: str, namespace: dict | None = None) -> dict:
    """Execute only the imports and function definitions of the cell of ``path`` that defines ``defines``."""
    cell = next(c for c in _code_cells(path) if f"def {defines}(" in c.source)
    tree = ast.parse(_python(cell.source))
    tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
    ns = dict(namespace or {})
    exec(compile(tree, f"{path.name}:{defines}", "exec"), ns)
    return ns


# ------------------------------------------------------------------ (a) what the chapters show is the library

# the restrictions chapter 02's written-out steps state: whole image as source, no minimum target size, gamma only
WRITTEN_OUT = SASParams(roi_crop_prob=0.0, min_target_area=0, noise_models=("gamma",))


def _check_sas_steps(ns: dict, image: np.ndarray, mask: np.ndarray, seeds) -> None:
    for seed in seeds:
        lib_image, lib_mask, _ = simulate_scale(image, mask, np.random.default_rng(seed), WRITTEN_OUT)
        mine_image, mine_mask = ns["shrink_and_paste"](image, mask, np.random.default_rng(seed))
        assert np.array_equal(mine_image, lib_image) and np.array_equal(mine_mask, lib_mask), seed
        lib_noisy, record = inject_noise(image, mask, np.random.default_rng(seed), WRITTEN_OUT)
        assert record["applied"] and record["model"] == "gamma"
        assert np.array_equal(ns["speckle_in_roi"](image, mask, np.random.default_rng(seed)), lib_noisy), seed


def test_chapter02_written_out_sas_steps_equal_the_library_on_phantoms():
    ns = _definitions(CH02, "shrink_and_paste", {"np": np})
    for image, mask, _ in make_phantom(8):
        _check_sas_steps(ns, image, mask.astype(bool), seeds=range(12))


def test_chapter02_written_out_sas_steps_equal_the_library_on_real_images(mirror, monkeypatch):
    from sas_kit.augment.samples import source_pairs

    ns = _definitions(CH02, "shrink_and_paste", {"np": np})
    for name in ("bus_bra", "usgra_nerve"):  # chapter 02's DATASETS: large lesions, small nerves (other image sizes)
        for _, image, mask in source_pairs(name, "train", limit=3):
            if mask.any():
                _check_sas_steps(ns, image, mask, seeds=range(4))


def test_chapter02_shows_the_library_pipeline_by_its_source_and_asserts_the_equality():
    sources = [c.source for c in _code_cells(CH02)]
    assert any("inspect.getsource(SAS.__call__)" in s for s in sources)  # printed from the library, not copied
    algorithm = next(s for s in sources if "def shrink_and_paste(" in s)
    assert algorithm.count("assert np.array_equal") == 2  # the chapter checks both steps itself when it runs
    assert "SASParams(roi_crop_prob=0.0, min_target_area=0, noise_models=(\"gamma\",))" in algorithm  # = WRITTEN_OUT


def _random_blobs(rng: np.random.Generator, shape=(48, 56), n: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, bool)
    for _ in range(int(rng.integers(0, n + 1))):
        cy, cx = rng.uniform(-5, shape[0] + 5), rng.uniform(-5, shape[1] + 5)
        ry, rx = rng.uniform(1, 15, size=2)
        out |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


def test_chapter03_written_out_click_rule_equals_the_library():
    ns = _definitions(CH03, "next_click", {"np": np})
    rng = np.random.default_rng(0)
    cases = 0
    for _ in range(300):
        gt = _random_blobs(rng)
        kind = rng.integers(4)  # a shifted copy, random blobs, the truth itself, nothing
        pred = (np.roll(gt, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1)) if kind == 0 else
                _random_blobs(rng) if kind == 1 else gt.copy() if kind == 2 else np.zeros_like(gt))
        assert ns["next_click"](gt, pred) == prompts.next_click(gt, pred)
        errors = np.argwhere(gt != pred)[:, ::-1]  # (x, y) of every error pixel: click some of them first
        clicked = [tuple(int(v) for v in xy) for xy in errors[rng.permutation(len(errors))[:rng.integers(0, 4)]]]
        assert ns["next_click"](gt, pred, clicked) == prompts.next_click(gt, pred, clicked=clicked)
        if gt.any():
            assert ns["deepest"](gt)[0] == prompts.first_click(gt)
        cases += 1
    # ties: a missed and a spurious region of equal depth -> the negative click, as RITM's clicker and the library
    gt, pred = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    gt[1:3, 1:3], pred[6:8, 6:8] = True, True
    assert ns["next_click"](gt, pred) == prompts.next_click(gt, pred) and prompts.next_click(gt, pred)[1] == 0
    assert cases == 300


def test_chapter03_checks_its_clicks_against_the_library_session_it_runs():
    source = next(c.source for c in _code_cells(CH03) if "def next_click(" in c.source)
    assert "segment.click_sessions(" in source  # the library's own session places the clicks that are compared
    assert "prompts.next_click(\n            part, s.preds[k - 1], clicked=before)" in source
    assert "prompts.first_click(part)" in source
    assert "assert (tuple(s.points[k]), s.labels[k]) == next_click(" in source  # the session's own clicks


# ----------------------------------------------------------- chapter 03's size story is read from the files

def _size_functions() -> dict:
    return _definitions(CH03, "smallest_vs_larger")


@pytest.mark.skipif(not (COMMITTED / "sizebins.csv").exists(), reason="no committed cpu results in this checkout")
def test_chapter03_summary_size_claim_holds_for_the_committed_results():
    ns = _size_functions()
    committed = pd.read_csv(COMMITTED / "sizebins.csv").query("arm == 'zero_shot'")
    box = committed[committed.prompt == "box"].set_index("size_bin")
    assert (box.loc["<1%", "dice_mean"] < box.drop("<1%").dice_mean).all()  # lower than every larger bin
    line = ns["smallest_vs_larger"](committed, "box")
    against = {part.split(" ")[0]: part for part in line.split(" vs ", 1)[1].split("; ")}
    for b in ("5-20%", ">20%"):  # the summary: its interval lies below those of the 5-20 % and > 20 % bins
        assert against[b].endswith("<1% interval below"), line
    summary = nbformat.read(CH03, as_version=4).cells[-1].source
    assert "lower mean box Dice than every larger bin" in summary
    assert "lies below those of the 5–20 % and > 20 % bins" in summary
    table = ns["by_size"](committed)
    assert list(table.columns) == ["<1%", "1-5%", "5-20%", ">20%"] and list(table.index) == ["box"]
    assert all(" n=" in cell for cell in table.loc["box"])  # every cell says how many targets it averages


def test_chapter03_size_line_says_when_a_bin_is_too_small_or_empty():
    ns = _size_functions()
    rows = [("box", "<1%", 2, 0.5, 0.4, 0.6), ("box", "1-5%", 40, 0.9, 0.88, 0.92),
            ("1click", "5-20%", 3, 0.1, 0.0, 0.2)]
    sizes = pd.DataFrame(rows, columns=["prompt", "size_bin", "n", "dice_mean", "ci_low", "ci_high"])
    assert "too few targets to compare" in ns["smallest_vs_larger"](sizes, "box")
    assert "no target under 1 %" in ns["smallest_vs_larger"](sizes, "1click")
    table = ns["by_size"](sizes)
    assert table.loc["1click", "<1%"] == "n=0" and table.loc["box", "<1%"] == "0.50 [0.40, 0.60] n=2"


# ----------------------------------------------------------------------- (b) chapter 02 in any cell order

def _split(path: Path) -> tuple[list, list]:
    """(setup cells, the other code cells): the setup cells run first (the setup, parameters and data cells:
    up to the cell tagged 'setup', or the first code cell after the parameters cell when none is tagged)."""
    code = _code_cells(path)
    tagged = [i for i, c in enumerate(code) if "setup" in c.metadata.get("tags", [])]
    if tagged:
        end = tagged[-1] + 1
    else:
        end = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])) + 2
    return code[:end], code[end:]


class _Names(ast.NodeVisitor):
    """Names a cell writes at its top level (not inside functions or comprehensions) and every name it reads."""

    def __init__(self):
        self.stores, self.loads, self.local = set(), set(), set()
        self.depth = 0

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            self.loads.add(node.id)
        elif self.depth == 0:
            self.stores.add(node.id)
        else:
            self.local.add(node.id)

    def _scope(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_FunctionDef(self, node):
        (self.stores if self.depth == 0 else self.local).add(node.name)
        self.local.update(a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg))
        self._scope(node)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_Lambda = _scope

    def visit_Import(self, node):
        self.stores.update((a.asname or a.name).split(".")[0] for a in node.names)

    visit_ImportFrom = visit_Import


def _names(cell) -> _Names:
    names = _Names()
    names.visit(ast.parse(_python(cell.source)))
    return names


def order_problems(path: Path) -> list[str]:
    """Why ``path``'s cells after the setup cells could give other results in another order (empty: none)."""
    setup, rest = _split(path)
    setup_names = set().union(*(_names(c).stores for c in setup))
    found = []
    for i, cell in enumerate(rest):
        mine = _names(cell)
        others = set().union(*(_names(c).stores for j, c in enumerate(rest) if j != i))
        first_line = cell.source.splitlines()[0][:60]
        for name in sorted((mine.loads - mine.stores - mine.local) & others):
            found.append(f"cell '{first_line}' reads {name}, which another cell after the setup writes")
        for name in sorted(mine.stores & setup_names):
            found.append(f"cell '{first_line}' overwrites {name} of the setup cells")
    return found


def test_chapter02_cells_share_names_only_through_the_setup_cells():
    assert order_problems(CH02) == []


def test_the_order_check_flags_a_cell_that_depends_on_another():
    nb = nbformat.read(CH02, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell("policy = make_policy('sas')"),
                 nbformat.v4.new_code_cell("policy(image, mask)"), nbformat.v4.new_code_cell("image = image[::2]")]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CH02.name
        nbformat.write(nb, path)
        problems = order_problems(path)
    assert any("reads policy" in p for p in problems) and any("overwrites image" in p for p in problems)


def _outputs(cell) -> list:
    """What a cell showed, comparable across kernels: figures as PNG digests, text, streams; not widget ids."""
    shown = []
    for out in cell.outputs:
        if out.output_type == "stream":
            shown.append((out.name, out.text))
        elif out.output_type == "error":
            shown.append(("error", out.ename, out.evalue))
        elif "data" in out:
            data = out["data"]
            if "application/vnd.jupyter.widget-view+json" in data:
                shown.append("widget")
            elif "image/png" in data:
                shown.append(("png", hashlib.sha256(base64.b64decode(data["image/png"])).hexdigest()))
            else:
                shown.append(("text", data.get("text/plain")))
    return shown


def run_in_order(path: Path, order: list[int], workdir: Path) -> dict[str, list]:
    """Execute the setup cells, then the other code cells in ``order`` (indices), in a fresh kernel; return the
    outputs of each of the other cells by its source (the setup cells' own messages, e.g. a first preparation of
    the data, may differ between runs and are not compared)."""
    from nbclient import NotebookClient

    setup, rest = _split(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells = [nbformat.from_dict(dict(c)) for c in setup + [rest[i] for i in order]]
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(workdir)}}).execute()
    return {c.source: _outputs(c) for c in nb.cells[len(setup):]}


@pytest.mark.slow
def test_chapter02_gives_the_same_outputs_in_reverse_cell_order(tmp_path, monkeypatch):
    """Fresh kernels, phantom data: notebook order and reverse order must show the same figures and text."""
    pytest.importorskip("nbclient")
    monkeypatch.setenv("SAS_KIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    _, rest = _split(CH02)
    forward = run_in_order(CH02, list(range(len(rest))), NOTEBOOKS)
    backward = run_in_order(CH02, list(reversed(range(len(rest)))), NOTEBOOKS)
    errors = [o for outs in forward.values() for o in outs if o[0] == "error"]
    assert not errors
    assert sum(o[0] == "png" for outs in forward.values() for o in outs) >= 6  # the figures were compared
    for source, outputs in forward.items():
        assert backward[source] == outputs, f"cell differs in reverse order:\n{source[:200]}"
