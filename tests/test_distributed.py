"""sas_kit.experiment.distributed: two gloo processes on CPU follow the single-process trajectory.

A tiny MLP is trained with AdamW for 3 epochs over a fixed dataset of 10 samples (a seeded permutation per epoch),
once in this process and once by two ranks (subprocesses with torchrun's environment on 127.0.0.1) using shard +
average_gradients + all_sum. Two global batch sizes: B=4 (batches 4, 4, 2: the last one splits 1/1) and B=3
(batches 3, 3, 3, 1: shards of 2 and 1, and on the last batch rank 1 has nothing and contributes zero gradients).

Tolerance: float32, atol 1e-6 on every logged loss, every step's summed gradient and every final parameter. The
two runs do the same arithmetic but add the per-view terms in another order (a sum within each rank, then the
all_reduce across ranks, instead of one sum over the batch), so they differ by float32 rounding only (~1e-7 here);
a wrong weighting of the views differs by orders of magnitude more (checked below: dividing by the local shard
size fails).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sas_kit.experiment import distributed as D

ATOL = 1e-6
N_SAMPLES, EPOCHS, SEED = 10, 3, 0
CASES = {  # name: (global batch, divide the rank loss by the global batch?)
    "b4": (4, True),
    "b3": (3, True),
    "b3_local": (3, False),  # the bug the check must catch: loss / len(shard)
    "b4_local": (4, False),
}
REPO = Path(__file__).resolve().parent.parent


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((N_SAMPLES, 8)).astype(np.float32)
    y = rng.standard_normal(N_SAMPLES).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def _train(ctx: D.Context, batch_size: int, global_divisor: bool) -> dict:
    """The training loop of the kit's ``full`` mode in miniature; with ``D.Context()`` it is the plain
    single-process loop."""
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    # never used in the forward: its grad is None on every rank, so AdamW must skip it (no weight decay) as in
    # one process; a zero gradient instead would shrink it and the final parameters would not match
    spare = torch.nn.Parameter(torch.ones(3))
    params = list(model.parameters()) + [spare]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    x, y = _data()
    losses, grads = [], []
    for epoch in range(EPOCHS):
        order = np.random.default_rng(SEED + 1 + epoch).permutation(N_SAMPLES)
        for start in range(0, N_SAMPLES, batch_size):
            batch = order[start:start + batch_size]
            mine = D.shard(batch, ctx)
            opt.zero_grad(set_to_none=True)
            local = 0.0
            if len(mine):  # an empty shard does no forward/backward: its grads stay None
                idx = torch.from_numpy(np.asarray(mine))
                per_sample = (model(x[idx]).squeeze(-1) - y[idx]) ** 2
                loss = per_sample.sum() / (len(batch) if global_divisor else len(mine))
                loss.backward()
                local = loss.item()
            D.average_gradients(params, ctx)
            grads.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).tolist())
            opt.step()
            losses.append(D.all_sum(local, ctx))
    return {"losses": losses, "grads": grads, "params": [p.detach().flatten().tolist() for p in params]}


def _worker(out: str) -> None:
    """One rank (run as a subprocess with RANK/WORLD_SIZE/... set): every case, results to ``out``."""
    torch.set_num_threads(1)
    ctx = D.from_env("cpu")
    assert ctx.world == 2 and ctx.backend == "gloo", ctx
    try:
        results = {name: _train(ctx, b, g) for name, (b, g) in CASES.items()}
        D.barrier(ctx)
    finally:
        D.shutdown(ctx)
    Path(out).write_text(json.dumps({"rank": ctx.rank, "results": results}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[dict, float]:
    """Both ranks' results (one pair of processes runs every case) and the wall time it took."""
    tmp = tmp_path_factory.mktemp("dist")
    port = _free_port()
    procs, outs = [], []
    t0 = time.perf_counter()
    try:
        for rank in range(2):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
            if sys.platform.startswith("linux"):
                env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep gloo on the loopback interface
            out = tmp / f"rank{rank}.json"
            outs.append(out)
            code = f"from tests.test_distributed import _worker; _worker({str(out)!r})"
            procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:  # never leave a rank behind (e.g. one waiting for a peer that crashed)
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.perf_counter() - t0
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    results = [json.loads(o.read_text()) for o in outs]
    assert [r["rank"] for r in results] == [0, 1]
    return {"ranks": [r["results"] for r in results]}, elapsed


def _max_diff(a: dict, b: dict, key: str = "params") -> tuple[float, float]:
    """Max |difference| of the logged losses, and of ``key``: the final parameters or the per-step gradients."""
    dl = float(np.max(np.abs(np.subtract(a["losses"], b["losses"]))))
    dp = max(float(np.max(np.abs(np.subtract(pa, pb)))) for pa, pb in zip(a[key], b[key]))
    return dl, dp


@pytest.mark.parametrize("case", ["b4", "b3"])
def test_two_ranks_follow_single_process(two_ranks, case):
    ranks, elapsed = two_ranks[0]["ranks"], two_ranks[1]
    b, g = CASES[case]
    single = _train(D.Context(), b, g)
    assert len(single["losses"]) == EPOCHS * -(-N_SAMPLES // b)
    # both ranks hold the same parameters and log the same losses
    assert _max_diff(ranks[0][case], ranks[1][case]) == (0.0, 0.0)
    dl, dp = _max_diff(single, ranks[0][case])
    _, dg = _max_diff(single, ranks[0][case], "grads")
    print(f"{case}: max |diff| loss {dl:.2e}, gradient {dg:.2e}, final param {dp:.2e} (2 ranks: {elapsed:.1f} s)")
    # the summed gradient of every step, not only the trajectory: AdamW nearly ignores a uniform gradient scale,
    # so a wrong overall scale (a mean instead of a sum) would hardly show in the parameters
    assert dl <= ATOL and dg <= ATOL and dp <= ATOL, (dl, dg, dp)
    # the spare parameter had no gradient anywhere: untouched, as in one process
    assert ranks[0][case]["params"][-1] == [1.0, 1.0, 1.0]


def test_local_divisor_does_not_match(two_ranks):
    """The check has teeth: dividing by the shard size (2 and 1 with B=3) weights views unequally."""
    ranks = two_ranks[0]["ranks"]
    single = _train(D.Context(), 3, True)
    dl, dp = _max_diff(single, ranks[0]["b3_local"])
    _, dg = _max_diff(single, ranks[0]["b3_local"], "grads")
    print(f"b3_local: max |diff| loss {dl:.2e}, gradient {dg:.2e}, final param {dp:.2e}")
    assert dl > 100 * ATOL and dg > 100 * ATOL and dp > 100 * ATOL, (dl, dg, dp)
    # with equal shards (B=4) the same bug doubles the logged loss; the parameters barely move because AdamW is
    # nearly invariant to a gradient scale, which is why the case above needs unequal shards
    dl4, _ = _max_diff(_train(D.Context(), 4, True), ranks[0]["b4_local"])
    assert dl4 > 100 * ATOL


def test_from_env_single_process(monkeypatch):
    for world in (None, "1"):
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        ctx = D.from_env("cpu")
        assert ctx == D.Context() and ctx.main and not ctx.active
        assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    # the single-process helpers are no-ops
    ctx = D.Context()
    assert D.all_sum(2.5, ctx) == 2.5
    D.barrier(ctx)
    D.shutdown(ctx)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    D.average_gradients([p], ctx)
    assert p.grad.tolist() == [3.0, 3.0]


def test_rank_device():
    assert D.rank_device("cuda", D.Context(rank=3, world=4, local_rank=1)) == "cuda:1"
    assert D.rank_device("cuda", D.Context()) == "cuda"
    assert D.rank_device("cpu", D.Context(rank=1, world=2, local_rank=1)) == "cpu"


@pytest.mark.parametrize("n", range(0, 12))
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_covers_every_index_once(n, world):
    for batch in (list(range(n)), np.arange(n) * 7):
        parts = [D.shard(batch, D.Context(rank=r, world=world)) for r in range(world)]
        merged = sorted(int(v) for part in parts for v in part)
        assert merged == sorted(int(v) for v in batch)
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.mark.slow
def test_full_mode_training_on_two_ranks_follows_one_process(tmp_path):
    """The kit's own full-mode training (LiteMedSAM, phantom, fp32, 2 steps of a global batch of 2 views): two gloo
    ranks under torchrun against one process, both on one thread. Tolerance: 1e-4 relative on the epoch losses, and
    the mean weight difference under 2 % of the mean distance the weights moved — one process encodes the 2 views in
    one batched pass, each rank one view, and the gradient sums add in another order, so the floats agree to
    rounding, not to the bit; AdamW's first steps are close to lr x sign(gradient), so a near-zero gradient entry
    that rounds to the other sign moves its weight the other way, and an element-wise maximum would measure that,
    not the training."""
    import shutil

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    env = {k: v for k, v in os.environ.items() if k not in ("SAS_KIT_MIRROR", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(SAS_KIT_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    args = ["-m", "sas_kit", "train", "--data", "phantom", "--mode", "full", "--epochs", "2", "--limit", "2",
            "--val-limit", "1", "--views", "1", "--batch-size", "2", "--precision", "fp32", "--device", "cpu",
            "--no-disk-cache"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout and "1 process(es)" in one.stdout
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert a["history"]["train_loss"] == pytest.approx(b["history"]["train_loss"], rel=1e-4)
    assert a["history"]["samples"] == b["history"]["samples"] == 4
    assert any(k.startswith("image_encoder.") for k in a["model"])
    from sas_kit.models import registry

    base = registry.load_model("litemedsam").state_dict()
    keys = list(a["model"])
    apart = torch.cat([(a["model"][k] - b["model"][k]).abs().flatten() for k in keys]).mean()
    moved = torch.cat([(a["model"][k] - base[k]).abs().flatten() for k in keys]).mean()
    print(f"mean |one - two| {float(apart):.3g}, mean |one - base| {float(moved):.3g}")
    assert apart < 0.02 * moved, (float(apart), float(moved))  # the two runs took the same steps
