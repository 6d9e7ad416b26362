"""Peak resident memory of each notebook's kernel (papermill, a profile) and of ``sas-kit demo``."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sas_kit import config
from sas_kit.cli import machine

NOTEBOOK_DIR = config.REPO_ROOT / "notebooks"
# Appended to each notebook: the kernel reports its own peak RSS (ru_maxrss is kB on Linux).
PEAK_CELL = ("import resource, json\n"
             "print('SAS_KIT_PEAK_RSS', json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))")


def notebook_peak(path: Path, profile: str = "quick", timeout: int = 1800, cwd: Path | None = None) -> dict:
    """Execute ``path`` with papermill and the profile's parameters in a fresh kernel, in ``cwd`` (default the
    notebook's folder); return ``{what, seconds, peak_rss_mib}`` where the peak is the kernel process's own
    maximum RSS."""
    import json

    import nbformat
    import papermill
    import yaml

    params = yaml.safe_load((NOTEBOOK_DIR / "profiles" / f"{profile}.yaml").read_text())
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / path.name, Path(tmp) / f"out_{path.name}"
        nbformat.write(nb, src)
        t0 = time.perf_counter()
        papermill.execute_notebook(str(src), str(out), parameters=params, cwd=str(cwd or path.parent),
                                   kernel_name="python3", progress_bar=False, execution_timeout=timeout)
        seconds = time.perf_counter() - t0
        done = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for o in done.cells[-1].outputs)
    peak = json.loads(text.split("SAS_KIT_PEAK_RSS", 1)[1].split()[0])
    return {"what": path.stem, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 2**20)}


# Linux counts the RSS a child inherits at fork/exec in its ru_maxrss, so a big parent (pytest with a model
# loaded) inflates it. A small launcher process starts the command and reports the command's own peak.
_LAUNCHER = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.execvp(sys.argv[2], sys.argv[2:])\n"
             "_, status, usage = os.wait4(pid, 0)\nopen(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
             "sys.exit(os.waitstatus_to_exitcode(status))")


def command_peak(argv: list[str], what: str) -> dict:
    """Run ``argv`` and return its own peak RSS (measured from a small launcher, see above)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "maxrss")
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, report, *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        maxrss_kib = int(open(report).read())
    return {"what": what, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(maxrss_kib / 1024)}


BUDGET_MIB = 1536  # a Binder session gets 1-2 GB; every chapter and the demo should fit the lower end (issue 19)


def bench_memory(profile: str = "quick", notebooks: list[str] | None = None, demo: bool = True,
                 budget_mib: int = BUDGET_MIB, mmap_threshold: int | None = None) -> list[dict]:
    """One row per notebook (``notebooks``: name prefixes such as "02"; default all) and for
    ``sas-kit demo`` (into a temporary folder), each with its peak RSS and whether it fits ``budget_mib``.

    ``mmap_threshold``: the heap setting the kernels and the demo run with (``$SAS_KIT_MMAP_THRESHOLD``,
    sas_kit/models/precision.py); default Binder's (``BINDER_MMAP_THRESHOLD``, exported by binder/start), the
    configuration the 1.5 GiB budget is for; 0 measures the kit's default (faster, more memory)."""
    from sas_kit.models.precision import BINDER_MMAP_THRESHOLD

    threshold = BINDER_MMAP_THRESHOLD if mmap_threshold is None else int(mmap_threshold)
    before = os.environ.get("SAS_KIT_MMAP_THRESHOLD")
    os.environ["SAS_KIT_MMAP_THRESHOLD"] = str(threshold)  # inherited by papermill's kernels and the demo
    try:
        rows = _measure(profile, notebooks, demo)
    finally:
        if before is None:
            os.environ.pop("SAS_KIT_MMAP_THRESHOLD", None)
        else:
            os.environ["SAS_KIT_MMAP_THRESHOLD"] = before
    for row in rows:
        row["mmap_threshold"] = threshold
        row["within_budget"] = row["peak_rss_mib"] <= budget_mib
    return rows


def _measure(profile: str, notebooks: list[str] | None, demo: bool) -> list[dict]:
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if notebooks:
        unknown = [n for n in notebooks if not any(p.name.startswith(n) for p in paths)]
        if unknown:
            raise ValueError(f"no notebook starts with {unknown}; give prefixes of: {[p.name for p in paths]}")
        paths = [p for p in paths if any(p.name.startswith(n) for n in notebooks)]
    # what importing torch alone holds here: the part of every peak that is the torch build, not the kit
    rows = [command_peak([sys.executable, "-c", "import torch"], "import torch (baseline)")]
    # The chapters write their runs to ../runs and reuse finished ones; a checkout's runs/ (from `make site`, the
    # tests or earlier sessions) would turn chapter 04's training into a reload and hand chapter 03's widget
    # every checkpoint there. So the chapters run in a fresh folder, in order, as on a new Binder session.
    with tempfile.TemporaryDirectory() as fresh:
        cwd = Path(fresh) / "notebooks"
        cwd.mkdir()
        rows += [notebook_peak(p, profile, cwd=cwd) for p in paths]
    if demo:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(command_peak([sys.executable, "-m", "sas_kit", "demo", "--out", tmp], "sas-kit demo"))
    return rows


# A chapter's opening states its kernel's peak as "**Memory:** this chapter's kernel peaked at 1.4 GiB (1,374 MiB) (...)".
# Older lines give the peak alone ("peaked at 320 MiB (...)"): both forms are rewritten.
_CHAPTER_PEAK = re.compile(r"peaked at (?:[\d.]+ GiB \([\d,]+ MiB\)|[\d,]+ MiB) \([^)]*\)")


def _data_kind() -> str:
    """What the notebooks' ``DATA = "auto"`` resolves to here (make_plan's rule)."""
    from sas_kit.data import datasets
    from sas_kit.experiment.protocol import EXTERNALS, INTERNAL

    return "real data" if all(datasets.available(n) for n in (INTERNAL, *EXTERNALS)) else "phantom"


def write_docs(rows: list[dict], profile: str = "quick", readme: Path = config.REPO_ROOT / "README.md",
               notebook_dir: Path = NOTEBOOK_DIR, budget_mib: int = BUDGET_MIB) -> list[Path]:
    """Write the measured peaks where the course states them, so no memory figure is typed by hand: each measured
    chapter's "**Memory:**" line and, when every chapter and the demo were measured, the README's
    ``<!-- memory:start -->`` block. Returns the files written."""
    import nbformat

    from sas_kit.report.readme import replace_block

    from sas_kit.models.precision import BINDER_MMAP_THRESHOLD

    day, data, build = datetime.date.today().isoformat(), _data_kind(), machine.torch_build()
    threshold = rows[0]["mmap_threshold"] if rows else BINDER_MMAP_THRESHOLD
    heap = "Binder heap setting" if threshold == BINDER_MMAP_THRESHOLD else f"mmap threshold {threshold:,} bytes"
    written = []
    for row in rows:
        path = notebook_dir / f"{row['what']}.ipynb"
        if not path.exists():
            continue
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "markdown" and "**Memory:**" in c.source]
        if len(cells) != 1 or not _CHAPTER_PEAK.search(cells[0].source):
            raise ValueError(f"{path} needs exactly one '**Memory:** ... peaked at X GiB (N MiB) (...)' line; "
                             "restore it from git and rerun")
        mib = row["peak_rss_mib"]
        cells[0].source = _CHAPTER_PEAK.sub(
            f"peaked at {mib / 1024:.1f} GiB ({mib:,} MiB) ({profile} profile, {data}, {heap}, {build}; "
            f"`sas-kit bench memory`, {day})", cells[0].source, count=1)
        nbformat.write(nb, path)
        written.append(path)
    chapters = {p.stem for p in notebook_dir.glob("[0-9][0-9]_*.ipynb")}
    measured = {r["what"] for r in rows}
    if chapters <= measured and "sas-kit demo" in measured:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        table = ["| what | peak MiB | seconds | within 1,536 MiB |", "|---|---|---|---|",
                 *(f"| {r['what']} | {r['peak_rss_mib']:,} | {r['seconds']:.0f} | {r['peak_rss_mib'] <= budget_mib} |"
                   for r in rows)]
        replace_block(readme, "memory", "\n".join([
            f"Generated by `sas-kit bench memory --write-docs` on {day}: {machine.cpu_name()} "
            f"({machine.cpu_flags()}), {os.cpu_count()} cores, {build}, {profile} profile, {data}, {heap} "
            f"(`SAS_KIT_MMAP_THRESHOLD={threshold}`); load average at the end {load}, so the seconds "
            "are this machine's and this moment's.", "", *table]))
        written.append(Path(readme))
    return written
