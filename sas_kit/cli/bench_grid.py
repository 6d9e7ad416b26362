"""Grid benchmark: the quick profile's independent runs serially in one process vs on a local Dask cluster."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sas_kit.cli import machine

ARMS = "none,classic,stsnet,sas"  # with zero-shot and 2 seeds: 9 independent runs, 8 of them fine-tuning


def _noop(x: int) -> int:
    return x + 1


def engine_overhead(workers: int, n: int = 50) -> dict:
    """Start and stop seconds of a local Dask cluster of ``workers`` processes, and the median round trip of a
    trivial task (submit → result), in ms: what the engine adds to every run."""
    from sas_kit.experiment.executor import dask_client

    t0 = time.perf_counter()
    with dask_client(workers, None) as client:
        started = time.perf_counter() - t0
        trips = []
        for i in range(n):
            t = time.perf_counter()
            client.submit(_noop, i, pure=False).result()
            trips.append(time.perf_counter() - t)
        t1 = time.perf_counter()
    return {"start_s": started, "stop_s": time.perf_counter() - t1, "round_trip_ms": 1000 * statistics.median(trips)}


SCRIPT = ("import sys, json; from sas_kit.report.reproduce import run_protocol; "
          "run_protocol('quick', arms=('zero_shot', *sys.argv[2].split(',')), out=sys.argv[1], progress=False, "
          "**json.loads(sys.argv[3]))")


def _reproduce(out: Path, settings: dict) -> tuple[float, dict]:
    """``run_protocol`` of the quick profile with ``settings`` (workers, threads, epochs, seeds) in a new Python."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out), ARMS, json.dumps(settings)], capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise ValueError(f"the grid with {settings} failed: {done.stderr.strip()[-500:]}")
    return wall, json.loads((out / "plan.json").read_text())


def bench_grid(workers: int = 2, epochs: tuple[int, ...] = (1, 6), seeds: tuple[int, ...] = (0, 1)) -> list[dict]:
    """The quick profile's runs with arms none, classic, stsnet, sas x ``seeds`` (plus zero-shot: 9 independent
    runs), at each number of ``epochs`` (1: the quick profile's ~4 s runs; 6: runs long enough that fixed costs
    stop mattering), as ``run_protocol`` runs them, each way in a fresh Python and a fresh output folder so every
    run trains: serially with torch's threads, serially with one thread, and with ``workers`` local Dask workers
    (with the serial default's threads per run, the default, which oversubscribes a small machine; and with one
    thread each). A first, untimed run fills the shared
    embedding store and the file cache, so every way pays the same (no) encodes. Wall time includes starting Python,
    making the plan and writing the report (the serial part of any reproduction). One row per way, then the
    engine's own cost: cluster start + stop, and the round trip of a trivial task."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="sas-kit-bench-grid-") as tmp:
        _reproduce(Path(tmp) / "warm", {"threads": 1, "seeds": list(seeds)})
        for n in epochs:
            first = len(rows)
            for way, extra in (("serial, torch threads", {}), ("serial, 1 thread", {"threads": 1}),
                               (f"--workers {workers} (serial's threads)", {"workers": workers}),
                               (f"--workers {workers} --threads 1", {"workers": workers, "threads": 1})):
                wall, plan = _reproduce(Path(tmp) / f"way{len(rows)}", {**extra, "epochs": n, "seeds": list(seeds)})
                t = plan["timings"]
                rows.append({"epochs": n, "way": way, "runs": len(plan["runs"]), "threads_per_run": t["threads"],
                             "wall_s": wall, "runs_wall_s": t["runs_wall_s"],
                             "run_seconds_summed": t["train_s"] + t["evaluate_s"]})
            for row in rows[first:]:
                row["speedup"] = round(rows[first]["wall_s"] / row["wall_s"], 2)
                row["runs_speedup"] = round(rows[first]["runs_wall_s"] / row["runs_wall_s"], 2)
    cost = engine_overhead(workers)
    for row in rows:
        engine = row["way"].startswith("--workers")
        row.update(cluster_start_s=round(cost["start_s"], 2) if engine else None,
                   cluster_stop_s=round(cost["stop_s"], 2) if engine else None,
                   round_trip_ms=round(cost["round_trip_ms"], 1) if engine else None)
    runs = rows[0]["runs"]
    per_run = (cost["start_s"] + cost["stop_s"]) / runs + cost["round_trip_ms"] / 1000
    print(f"CPU: {_cpu()}; {os.cpu_count()} cores. Engine overhead per run: {per_run:.2f} s (cluster start + stop "
          f"shared over {runs} runs, plus one round trip); a quick run is {rows[1]['run_seconds_summed'] / runs:.1f} s "
          "of work on one thread.")
    for gpus in (4, 8):
        print(f"{gpus} GPUs, a grid of 48 runs of T s each: about {math.ceil(48 / gpus)} x T + "
              f"{cost['start_s'] + cost['stop_s'] + 48 / gpus * cost['round_trip_ms'] / 1000:.1f} s of engine time "
              "(from the overheads above; no GPU was measured).")
    return rows


def _cpu() -> str:
    return f"{machine.cpu_name()}, {'avx512_bf16' if 'avx512_bf16' in machine.cpu_flags() else 'no avx512_bf16'}"
