"""Train and score a plan's tasks: one after another in this process (the default), or spread over the workers of
a Dask cluster — a local one the kit starts and stops (``workers=N``), an existing one (``cluster="tcp://…"``), or
SLURM jobs through dask-jobqueue (``cluster="slurm"``). docs/engine.md says why Dask.

A run's folder is its result: ``<out>/runs/<spec.name>/`` holds ``spec.json``, ``last.pt``/``best.pt``,
``done.json`` (written last) and one ``scores-<key>.csv`` per set of test images, prompts and scoring code. A task
whose files are there is not redone, an interrupted one resumes from ``last.pt``, so a grid killed half-way is
finished by running the same command again; the report is assembled from the folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from sas_kit import files
from sas_kit.data import sources
from sas_kit.experiment.encode_stage import encode_share, shares_embeddings
from sas_kit.experiment.protocol import Plan, Task, load_tests
from sas_kit.experiment.run import SCORING_CODE, RunSpec, code_version


def run_folder(out: str | Path, spec: RunSpec) -> Path:
    return Path(out) / "runs" / spec.name


def score_path(out: str | Path, task: Task, tests: dict) -> Path:
    """The task's scores file: keyed by the ids scored, the prompts, the number-of-clicks settings and the scoring
    code (and, by its folder, the run spec)."""
    blob = json.dumps({"ids": {n: list(tests[n]) for n in task.score_on}, "prompts": list(task.prompts),
                       "code": code_version(SCORING_CODE),
                       **({"noc": list(task.noc), "max_clicks": task.max_clicks} if task.noc else {}),
                       **({"checkpoint": task.checkpoint} if task.checkpoint != "selected" else {})}, sort_keys=True)
    return run_folder(out, task.spec) / f"scores-{hashlib.blake2b(blob.encode(), digest_size=5).hexdigest()}.csv"


def stale_runs(out: str | Path, spec: RunSpec, in_use: Iterable[str] = ()) -> list[str]:
    """Why the other folders of the same arm and seed under ``out/runs`` are not this run (one line each).
    ``in_use``: run names the caller's plan also runs (an ablation's other cells): those folders are not stale."""
    lines, skip = [], {spec.name, *in_use}
    for other in sorted((Path(out) / "runs").glob(f"{spec.arm}_seed{spec.seed}-*/spec.json")):
        if other.parent.name in skip:
            continue
        try:
            diff = spec.differs(RunSpec.from_dict(json.loads(other.read_text())))
        except (ValueError, TypeError, KeyError) as err:
            lines.append(f"not reusing {other.parent}: unreadable spec ({err})")
            continue
        what = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" if k != "params" else "params" for k, v in diff.items())
        lines.append(f"not reusing {other.parent}: {'training code changed; ' if 'code' in diff else ''}differs in {what}")
    return lines


def train_task(spec: RunSpec, folder: Path, progress: bool = True) -> dict:
    """Train ``spec`` into ``folder`` unless it finished there (``done.json`` with the same key); resume an
    interrupted run. Returns the record in ``done.json``, with ``reused`` saying why nothing was trained."""
    from sas_kit.experiment.train import train

    done = folder / "done.json"
    if done.exists():
        record = json.loads(done.read_text())
        if record.get("key") == spec.key:
            return {**record, "reused": f"finished run, same key {spec.key} (settings, training images "
                                        f"{spec.data_key[:8]}, training code {spec.code})", "steps": 0}
    files.write_text(folder / "spec.json", spec.to_json())  # what the folder holds, before anything else
    result = train(spec, folder, resume=True, progress=progress)
    record = {"key": spec.key, "name": spec.name, **json.loads(json.dumps(asdict(result), default=str))}
    files.write_text(done, json.dumps(record, indent=1))
    return {**record, "reused": ""}


def score_task(task: Task, tests: dict, internal: str, out: str | Path, progress: bool = True) -> Path:
    """Score the task's model (the run's best.pt, its last.pt for ``task.checkpoint == "last"``, or the base weights
    for zero-shot) on its test sets, in the spec's precision; one row per image x prompt, written atomically to
    :func:`score_path` (reused if there)."""
    from sas_kit.experiment.embed_cache import EmbeddingCache
    from sas_kit.experiment.evaluate import evaluate
    from sas_kit.models import registry

    spec, path = task.spec, score_path(out, task, tests)
    if path.exists():
        return path
    weights = "last.pt" if task.checkpoint == "last" else "best.pt"
    checkpoint = run_folder(out, spec) / weights if spec.trains else None
    sam = registry.load_model(spec.model, checkpoint=checkpoint, device=spec.device)
    # Cached embeddings are the BASE encoder's: right for zero-shot and decoder-only runs, wrong after full mode.
    cache = (EmbeddingCache(spec.model, root=True, precision=spec.precision, device=spec.device)
             if spec.mode == "decoder" or not spec.trains else None)
    frames = []
    for name, items in load_tests(tests, internal, task.score_on).items():
        df = evaluate(sam, spec.model, items, task.prompts, seed=spec.seed, progress=progress, embeddings=cache,
                      precision=spec.precision, noc=task.noc or None, max_clicks=task.max_clicks,
                      desc=f"score {spec.arm} seed {spec.seed} on {name}")
        groups = {str(ex["id"]): ex.get("group") or str(ex["id"]) for ex in items}  # acquisition group (intervals)
        frames.append(df.assign(dataset=name, target=sources.get(name).target, arm=spec.arm, seed=spec.seed,
                                group=df.id.map(groups),
                                role="internal" if name == internal else "external", precision=spec.precision,
                                run=spec.name, checkpoint=task.checkpoint))
    with files.atomic_path(path) as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    return path


def run_task(task: Task, tests: dict, internal: str, out: str | Path, progress: bool = True,
             threads: int | None = None) -> dict:
    """Train (or reuse) and score one task; the one function a worker runs. Returns a small record."""
    import torch

    from sas_kit.models import precision

    precision.fast_heap()  # an engine process: speed over resident memory (not in a memory-bounded one)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_task(task, tests, internal, out, progress)
    finally:
        torch.set_num_threads(before)  # a serial caller's own setting is left as it was


def _run_task(task: Task, tests: dict, internal: str, out: str | Path, progress: bool) -> dict:
    import torch

    _pick_gpu(task.spec)
    start = time.perf_counter()
    folder = run_folder(out, task.spec)
    if task.spec.trains:
        trained = train_task(task.spec, folder, progress)
    else:
        files.write_text(folder / "spec.json", task.spec.to_json())
        trained = {"steps": 0, "reused": ""}
    t_train = time.perf_counter() - start
    score_task(task, tests, internal, out, progress)
    return {"name": task.spec.name, "arm": task.spec.arm, "seed": task.spec.seed, "curve": task.curve,
            "steps": trained.get("steps", 0), "samples": trained.get("samples", 0),
            "encoder_calls": trained.get("encoder_calls", 0), "reused": trained.get("reused", ""),
            "train_s": t_train, "score_s": time.perf_counter() - start - t_train, "pid": os.getpid(),
            "threads": torch.get_num_threads()}


def _pick_gpu(spec: RunSpec) -> None:
    """On a Dask worker of a multi-GPU machine, use GPU (worker number mod GPU count): one GPU per worker."""
    if not spec.device.startswith("cuda"):
        return
    import torch

    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return
    if isinstance(name, int) and torch.cuda.device_count() > 1:
        torch.cuda.set_device(name % torch.cuda.device_count())


def unique_tasks(plan: Plan) -> list[Task]:
    """The plan's tasks without repeats (a curve point equal to a main run is that run)."""
    seen, out = set(), []
    for task in plan.tasks:
        key = (task.spec.key, task.score_on, task.prompts)
        if key not in seen:
            seen.add(key)
            out.append(task)
    return out


def run_plan(plan: Plan, out: str | Path, workers: int = 0, cluster: str | None = None, progress: bool = True,
             threads: int | None = None) -> list[dict]:
    """Train and score every task of ``plan`` into ``out/runs``; return one record per task, in plan order.

    Serial in this process by default; ``workers=N`` starts a local Dask cluster of N worker processes (stopped at
    the end); ``cluster`` an address of a running Dask scheduler, or ``"slurm"`` (N SLURM jobs through
    dask-jobqueue, one GPU each when the plan's device is CUDA). ``threads``: torch's intra-op threads per run,
    resolved once here for every way of running: by default this process's own (torch's choice, the serial
    default). Float results depend on it (a reduction split over more threads adds in another order), not on which
    process or in which order the runs go, so by default ``--workers`` gives the same tables as a serial run. On a
    local cluster that oversubscribes the cores (N workers x threads > cores; measured as fast as ``threads=1`` on
    2 cores: README, "Spreading runs"); ``threads=1`` gives the numbers of a serial run with ``threads=1``."""
    import torch

    threads = int(threads or torch.get_num_threads())
    tasks = unique_tasks(plan)
    names = {t.spec.name for t in tasks}  # the plan's own runs: in use, never stale
    for task in tasks:
        for line in stale_runs(out, task.spec, in_use=names):
            print(line)
    args = dict(tests=plan.tests, internal=plan.internal, out=str(out))
    encode = shares_embeddings(plan) and not plan.device.startswith("cuda")  # a GPU encodes in milliseconds
    if not workers and not cluster:
        if encode:
            encode_share(plan, 0, 1, progress=progress, threads=threads)
        return [run_task(t, progress=progress, threads=threads, **args) for t in tasks]
    from tqdm.auto import tqdm

    with dask_client(workers, cluster, gpu=plan.device.startswith("cuda"), threads=threads) as client:
        resources = {"GPU": 1} if plan.device.startswith("cuda") and cluster else None
        if encode:  # every test image once, spread over the workers, before any run reads them
            shares = max(1, workers or len(client.scheduler_info()["workers"]))
            client.gather(client.map(encode_share, [plan] * shares, range(shares), [shares] * shares,
                                     progress=False, threads=threads, pure=False))
        futures = client.map(run_task, tasks, progress=False, threads=threads, pure=False, resources=resources, **args)
        order = {f.key: i for i, f in enumerate(futures)}
        records: list[dict | None] = [None] * len(tasks)
        from distributed import as_completed

        for future in tqdm(as_completed(futures), total=len(futures), desc="runs", disable=not progress):
            records[order[future.key]] = future.result()  # a failed task raises here, naming its error
            name = records[order[future.key]]["name"]
            if progress:
                tqdm.write(f"finished {name}")
    return records


@contextmanager
def dask_client(workers: int, cluster: str | None, gpu: bool = False, threads: int = 1):
    """A ``distributed.Client``: on a local cluster of ``workers`` processes that it starts and closes, on the
    scheduler at ``cluster``, or on ``workers`` SLURM jobs (``cluster="slurm"``, dask-jobqueue's SLURMCluster,
    configured by its usual ``jobqueue.slurm`` Dask config: queue, account, walltime). Local workers start with
    ``OMP_NUM_THREADS=threads`` and without Dask's ``MALLOC_TRIM_THRESHOLD_`` (see below)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("--workers/--cluster need Dask: pip install 'sas-kit[cluster]' "
                         "(distributed, dask-jobqueue)") from None
    if cluster == "slurm":
        made = slurm_cluster(gpu)
        made.scale(jobs=max(1, workers))
    elif cluster:
        made = None
    else:
        import dask

        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which fixes glibc's mmap threshold at
        # 128 KiB: every large tensor is then mmapped and faulted in afresh (measured: a quick run 2x slower).
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            if workers * threads > (os.cpu_count() or 1):  # more threads than cores: waiting threads sleep, not spin
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            made = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                env=env)
    client = Client(made) if made is not None else Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if made is not None:
            made.close()


def slurm_cluster(gpu: bool):
    """dask-jobqueue's SLURMCluster: one single-threaded worker per job, one GPU per job when ``gpu`` (the worker
    offers the resource ``GPU=1`` that every GPU task asks for). Queue, account, walltime, cores and memory come from
    the ``jobqueue.slurm`` section of the Dask config (~/.config/dask/jobqueue.yaml) or its defaults here."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ValueError("--cluster slurm needs dask-jobqueue: pip install 'sas-kit[cluster]'") from None
    import dask

    extra = {"job_extra_directives": ["--gres=gpu:1"], "worker_extra_args": ["--resources", "GPU=1"]} if gpu else {}
    cores = dask.config.get("jobqueue.slurm.cores", None) or 4
    memory = dask.config.get("jobqueue.slurm.memory", None) or "32GB"
    return SLURMCluster(cores=cores, memory=memory, processes=1, **extra)


def collect(plan: Plan, out: str | Path, curve: bool = False) -> pd.DataFrame:
    """The per-image rows of the plan's main tasks (``curve``: its low-data tasks), read from the run folders."""
    frames = []
    for task in (plan.curve_tasks() if curve else plan.main_tasks()):
        path = score_path(out, task, plan.tests)
        if not path.exists():
            raise ValueError(f"run {task.spec.name} has no scores in {path.parent}; run the plan first")
        rows = pd.read_csv(path, dtype={"id": str})
        frames.append(rows.assign(n_train=task.spec.train_limit) if curve else rows)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def history(plan: Plan, out: str | Path) -> pd.DataFrame:
    """Per-epoch training history of the plan's main runs, from their ``done.json``."""
    rows = []
    for task in plan.main_tasks():
        if not task.spec.trains:
            continue
        record = json.loads((run_folder(out, task.spec) / "done.json").read_text())
        for epoch, (loss, dice) in enumerate(zip(record["train_loss"], record["val_dice"]), start=1):
            rows.append({"arm": task.spec.arm, "seed": task.spec.seed, "epoch": epoch, "train_loss": loss,
                         "val_dice": dice, "val_dice_initial": record["val_dice_initial"],
                         "best_epoch": record["best_epoch"], "samples": record["samples"], "run": task.spec.name})
    return pd.DataFrame(rows)
