"""The run spec, the finished plan, run folders and the executor: serial = workers, resumable, keyed by code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from sas_kit.augment import SASParams
from sas_kit.experiment import executor, protocol
from sas_kit.experiment.protocol import make_plan
from sas_kit.experiment.run import RunSpec, code_version

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def phantom_only(tmp_data_root, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    return tmp_data_root


def spec(**kw) -> RunSpec:
    return RunSpec.build(**{"data_key": "k" * 32, "device": "cpu", "precision": "fp32", **kw})


def test_spec_is_frozen_validated_serialisable_and_keyed():
    a = spec(arm="sas", params={"scale_range": [0.2, 0.9]})
    assert isinstance(a.params, SASParams) and a.params.scale_range == (0.2, 0.9) and a.lr == 5e-5
    assert spec(mode="full").lr == 1e-5 and a.view_seed == a.seed == 0
    with pytest.raises(Exception):
        a.epochs = 9  # frozen
    back = RunSpec.from_dict(json.loads(a.to_json()))
    assert back == a and back.key == a.key and back.name == a.name and a.name.startswith("sas_seed0-")
    assert spec(arm="sas", params={"scale_range": [0.2, 0.9]}, device="cuda").key == a.key  # device not in the key
    for change in ({"epochs": 5}, {"precision": "bf16"}, {"data_key": "j" * 32}, {"code": "0" * 16},
                   {"params": {"scale_range": [0.3, 0.9]}}):
        assert a.but(**change).key != a.key, change
    assert set(a.differs(a.but(code="0" * 16))) == {"code"}
    with pytest.raises(ValueError, match="scale_rnage"):
        spec(arm="sas", params={"scale_rnage": [0.2, 0.9]})
    with pytest.raises(ValueError, match="scale_range"):
        spec(arm="sas", params={"scale_range": [0.9, 0.2]})  # SASParams' own check
    with pytest.raises(ValueError, match="takes no augmentation parameters"):
        spec(arm="none", params={"p_scale": 1.0})
    with pytest.raises(ValueError, match="mode"):
        spec(mode="encoder")
    with pytest.raises(ValueError, match="unknown model"):
        spec(model="sam_vit_z")


def test_code_version_follows_code_not_comments(tmp_path, monkeypatch):
    import sas_kit.experiment.run as run

    package = tmp_path / "sas_kit"
    (package / "experiment").mkdir(parents=True)
    source = package / "experiment" / "train.py"
    monkeypatch.setattr(run, "__file__", str(package / "experiment" / "run.py"))
    versions = []
    for text in ('"""doc"""\nx = 1\n', '"""other doc"""\n# a comment\nx = 1  # why\n', '"""doc"""\nx = 2\n'):
        source.write_text(text)
        run.code_version.cache_clear()
        versions.append(run.code_version(("experiment/train.py",)))
    run.code_version.cache_clear()
    assert versions[0] == versions[1] != versions[2]
    assert len(code_version()) == 16


def test_plan_is_finished_and_checks_sas_params_before_any_training(phantom_only, monkeypatch, tmp_path):
    plan = make_plan("quick", arms=("zero_shot", "none", "sas"), seeds=(0, 1))
    assert [(t.spec.arm, t.spec.seed) for t in plan.tasks] == [("zero_shot", 0), ("none", 0), ("sas", 0),
                                                               ("none", 1), ("sas", 1)]
    assert all(t.spec.precision == plan.precision and t.spec.device == plan.device for t in plan.tasks)
    assert plan.tasks[0].prompts == ("box",) and plan.tasks[1].prompts == plan.prompts
    with pytest.raises(Exception):
        plan.seeds = (3,)  # frozen: nothing changes a plan after make_plan
    with pytest.raises(ValueError, match="unknown run setting"):
        make_plan("quick", epoch=3)
    trained = []
    monkeypatch.setattr(executor, "train_task", lambda *a, **k: trained.append(a) or {})
    from sas_kit.report.reproduce import run_protocol

    with pytest.raises(ValueError, match="scale_rnage"):  # notebook 04's SAS_PARAMS typo: before the none arm trains
        run_protocol("quick", arms=("none", "sas"), sas_params={"scale_rnage": [0.2, 1.0]}, out=tmp_path / "r")
    assert trained == []
    with pytest.raises(ValueError, match="scale_rnage"):  # even when the sas arm is not run
        make_plan("quick", arms=("none",), sas_params={"scale_rnage": [0.2, 1.0]})


def test_full_mode_run_is_scored_in_its_training_precision(phantom_only, monkeypatch, tmp_path):
    """A full-mode (gpu profile) run trained under bf16 was scored in fp32 when no embedding cache was passed."""
    import sas_kit.experiment.evaluate as evaluate_mod

    plan = make_plan("quick", arms=("none",), mode="full", precision="bf16")
    task = plan.main_tasks()[0]
    assert task.spec.mode == "full" and task.spec.precision == "bf16"
    folder = executor.run_folder(tmp_path, task.spec)
    folder.mkdir(parents=True)
    torch.save({"model": {}}, folder / "best.pt")  # weights do not matter here: the precision of scoring does
    seen = []

    def spy(sam, model, items, prompts, **kw):
        seen.append((kw.get("precision"), kw.get("embeddings")))
        return pd.DataFrame(columns=["id", "dataset", "target", "prompt", "dice"])

    monkeypatch.setattr(evaluate_mod, "evaluate", spy)
    executor.score_task(task, plan.tests, plan.internal, tmp_path, progress=False)
    assert seen and all(p == "bf16" and e is None for p, e in seen)  # bf16, and no base-encoder embeddings


def test_stale_runs_say_why_they_are_not_reused(tmp_path):
    a = spec(arm="none")
    old = a.but(code="0" * 16, epochs=2)
    folder = executor.run_folder(tmp_path, old)
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(old.to_json())
    lines = executor.stale_runs(tmp_path, a)
    assert len(lines) == 1 and "training code changed" in lines[0] and "epochs 2 -> 4" in lines[0]
    assert executor.stale_runs(tmp_path, old) == []  # the only folder is its own
    assert executor.stale_runs(tmp_path, a, in_use=[old.name]) == []  # a run of the same plan (another cell) is in use


def reproduce(out: Path, *extra: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sas_kit", "reproduce", "--profile", "quick", "--data", "phantom",
                           "--out", str(out), *extra], capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def grid_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    env = {k: v for k, v in os.environ.items() if k != "SAS_KIT_MIRROR"}
    env["SAS_KIT_DATA_DIR"] = str(root / "data")
    return root, env


@pytest.fixture(scope="module")
def serial_run(grid_env):
    """The quick grid (zero-shot, none, sas; one seed) run serially, one torch thread per run."""
    root, env = grid_env
    done = reproduce(root / "serial", "--threads", "1", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "serial"


@pytest.mark.slow
def test_workers_give_the_serial_results(serial_run, grid_env):
    pytest.importorskip("distributed")
    root, env = grid_env
    done = reproduce(root / "workers", "--workers", "2", "--threads", "1", env=env)  # the serial run's threads
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("results.csv", "per_image.csv"):
        a, b = pd.read_csv(serial_run / name), pd.read_csv(root / "workers" / name)
        assert len(a) == len(b) > 0
        column = "dice_mean" if "dice_mean" in a else "dice"
        assert (a[column] - b[column]).abs().max() <= 1e-6, name
    plan = json.loads((root / "workers" / "plan.json").read_text())
    assert plan["timings"]["workers"] == 2 and plan["timings"]["threads"] == 1


@pytest.mark.slow
def test_a_killed_grid_resumes_to_the_same_results(serial_run, grid_env):
    root, env = grid_env
    out = root / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sas_kit", "reproduce", "--profile", "quick", "--data", "phantom",
                             "--out", str(out), "--threads", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list(out.glob("runs/none_seed0-*/done.json")):  # the grid's first trained run has finished
        assert proc.poll() is None and time.monotonic() < deadline, "the grid ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("runs/sas_seed0-*/done.json")) and not (out / "results.csv").exists()
    again = reproduce(out, "--threads", "1", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished run, same key" in again.stdout  # the none run was not trained again
    a, b = pd.read_csv(serial_run / "per_image.csv"), pd.read_csv(out / "per_image.csv")
    assert len(a) == len(b) > 0 and (a.dice - b.dice).abs().max() <= 1e-6


def test_slurm_route_asks_one_gpu_per_job():
    pytest.importorskip("dask_jobqueue")
    cluster = executor.slurm_cluster(gpu=True)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "--gres=gpu:1" in script and "--resources GPU=1" in script


def test_check_gpu_says_so_without_cuda(capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run `sas-kit check-gpu` itself")
    from sas_kit.cli import main

    assert main(["check-gpu"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "Traceback" not in err


def test_workers_without_dask_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dask(name, *a, **k):
        if name.startswith("distributed"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(ValueError, match=r"sas-kit\[cluster\]"):
        with executor.dask_client(2, None):
            pass


def test_threads_per_run_are_settled_once_the_same_serially_and_on_workers(phantom_only, monkeypatch, tmp_path):
    """The floats depend on torch's threads per run: by default --workers uses the serial default's, so its tables
    are the serial tables (before, workers took cores // workers and differed from the serial default)."""
    from contextlib import contextmanager

    plan = make_plan("quick", arms=("none",))
    seen = {}
    monkeypatch.setattr(executor, "run_task", lambda task, threads=None, **kw: seen.setdefault("serial", threads))
    executor.run_plan(plan, tmp_path, progress=False)

    class Stop(Exception):
        pass

    @contextmanager
    def fake_client(workers, cluster, gpu=False, threads=1):
        seen["workers"] = threads
        raise Stop

    monkeypatch.setattr(executor, "dask_client", fake_client)
    with pytest.raises(Stop):
        executor.run_plan(plan, tmp_path, workers=2, progress=False)
    assert seen == {"serial": torch.get_num_threads(), "workers": torch.get_num_threads()}
    with pytest.raises(Stop):
        executor.run_plan(plan, tmp_path, workers=2, progress=False, threads=1)
    assert seen["workers"] == 1
