"""`sas-kit bench memory` measures the kernel's own peak RSS (a notebook that allocates 300 MiB shows it)."""

from __future__ import annotations

import sys

import nbformat
import pytest

from sas_kit.cli import bench_memory


@pytest.mark.slow
def test_notebook_peak_sees_an_allocation(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("PROFILE = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import numpy as np\nblock = np.ones(300 * 2**20, np.uint8)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "alloc.ipynb"
    nbformat.write(nb, path)
    row = bench_memory.notebook_peak(path, "quick")
    assert row["what"] == "alloc" and row["peak_rss_mib"] >= 300


def test_command_peak_measures_the_child():
    row = bench_memory.command_peak([sys.executable, "-c", "b = bytearray(200 * 2**20)"], "alloc")
    assert 200 <= row["peak_rss_mib"] < 1000
    with pytest.raises(RuntimeError, match="failed"):
        bench_memory.command_peak([sys.executable, "-c", "raise SystemExit(3)"], "fails")


def test_an_unknown_notebook_prefix_is_an_error_not_an_empty_table(capsys):
    with pytest.raises(ValueError, match="no notebook starts with"):
        bench_memory.bench_memory(notebooks=["99"], demo=False)
    from sas_kit.cli import main

    assert main(["bench", "memory", "--notebooks", "99", "--no-demo"]) == 2
    assert "01_datasets.ipynb" in capsys.readouterr().err
