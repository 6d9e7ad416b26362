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


def _chapter(path, memory_line):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# A chapter\n\n{memory_line} JupyterLab keeps kernels."),
                nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, path)


def test_write_docs_puts_the_measured_peaks_in_the_chapters_and_the_readme(tmp_path):
    from sas_kit.models.precision import BINDER_MMAP_THRESHOLD

    chapters = tmp_path / "notebooks"
    chapters.mkdir()
    old = "**Memory:** this chapter's kernel peaked at 1.8 GiB (1,878 MiB) (quick profile, phantom, old words)."
    for name in ("01_a", "02_b"):
        _chapter(chapters / f"{name}.ipynb", old)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- memory:start -->\nold table\n<!-- memory:end -->\nafter\n")
    rows = [{"what": "01_a", "seconds": 9.4, "peak_rss_mib": 749, "mmap_threshold": BINDER_MMAP_THRESHOLD},
            {"what": "02_b", "seconds": 15.0, "peak_rss_mib": 1600, "mmap_threshold": BINDER_MMAP_THRESHOLD}]

    # only chapters measured: their lines change, the README table (which needs every row) does not
    written = bench_memory.write_docs(rows[:1], readme=readme, notebook_dir=chapters)
    assert written == [chapters / "01_a.ipynb"] and "old table" in readme.read_text()
    first = nbformat.read(chapters / "01_a.ipynb", as_version=4).cells[0].source
    assert "peaked at 0.7 GiB (749 MiB) (quick profile, " in first and "Binder heap setting" in first
    assert "1,878" not in first and first.endswith("JupyterLab keeps kernels.")

    rows.append({"what": "sas-kit demo", "seconds": 30.0, "peak_rss_mib": 1200, "mmap_threshold": BINDER_MMAP_THRESHOLD})
    bench_memory.write_docs(rows, readme=readme, notebook_dir=chapters)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "| 02_b | 1,600 | 15 | False |" in text and "| sas-kit demo | 1,200 | 30 | True |" in text


def test_write_docs_refuses_a_chapter_without_its_memory_line(tmp_path):
    _chapter(tmp_path / "01_a.ipynb", "no figure here")
    with pytest.raises(ValueError, match="01_a.ipynb needs exactly one"):
        bench_memory.write_docs([{"what": "01_a", "seconds": 1, "peak_rss_mib": 1, "mmap_threshold": 0}],
                                readme=tmp_path / "README.md", notebook_dir=tmp_path)


def test_the_docs_name_the_torch_build_the_peaks_were_measured_with(tmp_path):
    """A CUDA build of torch maps its CUDA libraries (and, through torchvision, triton) even on a CPU, so the same
    chapter peaks higher than on the CPU build Binder installs: every written figure says which build it is."""
    import torch

    from sas_kit.cli import machine
    from sas_kit.models.precision import BINDER_MMAP_THRESHOLD

    build = machine.torch_build()
    assert build.startswith(f"torch {torch.__version__}, ") and ("CUDA" in build) == bool(torch.version.cuda)
    assert "(" not in build and ")" not in build  # it sits inside the chapter line's rewritten parenthesis
    _chapter(tmp_path / "01_a.ipynb", "**Memory:** this chapter's kernel peaked at 1.0 GiB (1,000 MiB) (old).")
    row = {"what": "01_a", "seconds": 1.0, "peak_rss_mib": 900, "mmap_threshold": BINDER_MMAP_THRESHOLD}
    bench_memory.write_docs([row], readme=tmp_path / "README.md", notebook_dir=tmp_path)
    assert build in nbformat.read(tmp_path / "01_a.ipynb", as_version=4).cells[0].source
    row["peak_rss_mib"] = 950  # written twice: the second rewrite replaces the first whole
    bench_memory.write_docs([row], readme=tmp_path / "README.md", notebook_dir=tmp_path)
    text = nbformat.read(tmp_path / "01_a.ipynb", as_version=4).cells[0].source
    assert text.count("peaked at") == 1 and "(950 MiB)" in text and text.count("bench memory") == 1


def test_write_docs_rewrites_a_line_that_gives_the_peak_alone(tmp_path):
    """Older chapters say "peaked at 320 MiB (...)" without the GiB figure: that form is rewritten too."""
    _chapter(tmp_path / "01_a.ipynb", "**Memory:** this chapter's kernel peaked at 320 MiB (quick profile, phantom, old).")
    row = {"what": "01_a", "seconds": 1.0, "peak_rss_mib": 812, "mmap_threshold": 0}
    bench_memory.write_docs([row], readme=tmp_path / "README.md", notebook_dir=tmp_path)
    text = nbformat.read(tmp_path / "01_a.ipynb", as_version=4).cells[0].source
    assert "peaked at 0.8 GiB (812 MiB) (quick profile, " in text and "320" not in text and ", old)" not in text


def test_write_docs_failure_is_a_message_after_the_table_not_a_traceback(tmp_path, monkeypatch, capsys):
    from sas_kit.cli import bench, main

    rows = [{"what": "01_a", "seconds": 1.0, "peak_rss_mib": 812, "mmap_threshold": 0}]
    monkeypatch.setattr(bench_memory, "bench_memory", lambda **kwargs: rows)

    def broken(*args, **kwargs):
        raise ValueError("01_a.ipynb needs exactly one line")

    monkeypatch.setattr(bench_memory, "write_docs", broken)
    assert main(["bench", "memory", "--no-demo", "--write-docs"]) == 2
    out, err = capsys.readouterr()
    assert "812" in out and "needs exactly one line" in err and "Traceback" not in err
