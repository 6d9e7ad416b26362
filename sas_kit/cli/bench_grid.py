"""Grid benchmark: the quick profile's independent runs serially in one process vs on a local Dask cluster."""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path

ARMS = ("zero_shot", "none", "classic", "stsnet", "sas")


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


def bench_grid(n: int | None = None, workers: int = 2, seeds: tuple[int, ...] = (0, 1)) -> list[dict]:
    """The quick profile's grid (arms ``ARMS`` x ``seeds``: 8 fine-tuning runs and one zero-shot scoring), each
    way in a fresh output folder so every run trains: serially with torch's default threads, serially with one
    thread, and on ``workers`` single-threaded local Dask workers. The shared embedding store is filled by a first
    pass that is not timed, so each way pays the same encodes (none). One row per way: wall seconds, speed-up over
    the default serial run, runs, and the engine's own cost (cluster start + stop, per-task round trip)."""
    from sas_kit.experiment.executor import run_plan
    from sas_kit.experiment.protocol import make_plan

    plan = make_plan("quick", arms=ARMS, seeds=seeds)
    tasks = len({t.spec.key for t in plan.tasks})
    with tempfile.TemporaryDirectory(prefix="sas-kit-bench-grid-") as tmp:
        run_plan(plan, Path(tmp) / "warm", progress=False, threads=1)  # fills the embedding store, not timed
        rows = []
        for way, kwargs in (("serial, torch threads", {}), ("serial, 1 thread", {"threads": 1}),
                            (f"--workers {workers}, 1 thread each", {"workers": workers})):
            t0 = time.perf_counter()
            records = run_plan(plan, Path(tmp) / way.split(",")[0].strip("-").replace(" ", "_") / str(len(rows)),
                               progress=False, **kwargs)
            wall = time.perf_counter() - t0
            busy = sum(r["train_s"] + r["score_s"] for r in records)
            rows.append({"way": way, "runs": tasks, "threads_per_run": records[0]["threads"], "wall_s": wall,
                         "run_seconds_summed": busy, "speedup": None})
    for row in rows:
        row["speedup"] = round(rows[0]["wall_s"] / row["wall_s"], 2)
    cost = engine_overhead(workers)
    rows[-1].update(cluster_start_s=round(cost["start_s"], 2), cluster_stop_s=round(cost["stop_s"], 2),
                    round_trip_ms=round(cost["round_trip_ms"], 1))
    for row in rows[:-1]:
        row.update(cluster_start_s=None, cluster_stop_s=None, round_trip_ms=None)
    mean_run = rows[1]["run_seconds_summed"] / tasks
    per_task = (cost["start_s"] + cost["stop_s"]) / tasks + cost["round_trip_ms"] / 1000
    lines = [f"engine overhead per run: {per_task:.2f} s (cluster start+stop shared over {tasks} runs, plus one round "
             f"trip), against {mean_run:.1f} s of work per quick run on one thread here ({os.cpu_count()} cores)."]
    for gpus in (4, 8):
        lines.append(f"a cluster of {gpus} GPUs running a grid of 48 runs of T seconds each: about "
                     f"{math.ceil(48 / gpus)} x T + {per_task * 48 / gpus + cost['start_s']:.0f} s — the engine's "
                     f"share is negligible once T is minutes (gpu-profile runs), and no GPU time was measured here.")
    for line in lines:
        print(line)
    return rows
