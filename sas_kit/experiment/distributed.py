"""Data-parallel training over several processes (``torchrun``), with the gradient averaged by hand.

``full`` mode runs as ``torchrun --standalone --nproc-per-node N -m sas_kit train ... --mode full``. One optimiser
step takes a *global* batch of B views; rank r processes ``batch[r::N]`` (:func:`shard`: a distributed sampler over
views without padding, so the run follows the same trajectory as one process at the same global batch).

A step calls the image encoder, the prompt encoder and the mask decoder separately, with a no-grad click session
between them, so ``DistributedDataParallel`` (which hooks one module's forward) does not fit. Instead each rank
does, per step::

    loss = sum(per_view_loss(v) for v in shard(batch, ctx)) / len(batch)   # divide by the GLOBAL B
    loss.backward()                                       # skipped if the shard is empty (B < N on a last batch)
    average_gradients(params, ctx)                        # one flattened all_reduce(SUM)
    optimizer.step()                                      # same step on every rank: parameters stay equal
    logged = all_sum(loss.item(), ctx)                    # the mean loss over the B views

Since every rank already scaled its loss by 1/B, the SUM of the rank gradients is the gradient of the mean over
the B views, exactly what one process computes (up to the order of the float additions) and the same arithmetic
DDP does (it divides by N because there each rank takes the mean over its own, equal, share). Dividing by the
local shard size instead would weight views unequally whenever the shards differ in size.

With one process (``WORLD_SIZE`` unset or 1) everything here is a no-op and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

T = TypeVar("T")

_created = False  # True while a process group made by from_env() exists (shutdown() only destroys that one)


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world`` processes, its rank on this node (which GPU), and the
    backend of the process group (None when single-process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """The rank that logs, writes files and saves checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: gradients and sums must be communicated."""
        return self.world > 1


def from_env(device: str) -> Context:
    """The context from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``).

    With ``WORLD_SIZE`` > 1 this joins the process group (``init_method="env://"``; backend ``nccl`` when
    ``device`` starts with ``cuda``, else ``gloo``) unless one is already initialised, and on CUDA selects GPU
    ``local_rank`` for this process (use :func:`rank_device` for the device string). Otherwise it returns
    ``Context()`` and initialises nothing. Raises if ``WORLD_SIZE`` > 1 but torch was built without distributed
    support: falling back to one process would silently run N independent copies of the whole training.
    """
    global _created
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Context()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch has no torch.distributed support")
    cuda = device.startswith("cuda")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if cuda:
        torch.cuda.set_device(local_rank)  # before init, so NCCL binds this rank to its own GPU
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world)
        _created = True
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                   backend=dist.get_backend())


def rank_device(device: str, ctx: Context) -> str:
    """The device this rank computes on: ``cuda:<local_rank>`` for a CUDA device under several processes (torchrun
    gives each rank its own GPU), else ``device`` unchanged."""
    if ctx.active and device.startswith("cuda"):
        return f"cuda:{ctx.local_rank}"
    return device


def shard(batch: Sequence[T], ctx: Context) -> Sequence[T]:
    """This rank's part of a global batch: ``batch[rank::world]`` (lists, tuples, ranges, numpy arrays). Every
    item goes to exactly one rank; with B < world some ranks get nothing (they still take part in
    :func:`average_gradients`)."""
    return batch[ctx.rank::ctx.world]


def average_gradients(params: Iterable[torch.nn.Parameter], ctx: Context) -> None:
    """Sum the gradients of ``params`` over all ranks in place, with one flattened ``all_reduce(SUM)`` (one per
    dtype/device if the gradients mix them). No-op with one process.

    SUM, not mean, because every rank divided its loss by the *global* batch size. A parameter without a
    gradient on this rank (its shard was empty) sends zeros so every rank sends the same layout; a parameter
    without a gradient on *every* rank keeps ``grad = None`` (so the optimiser still skips it, as it would in
    one process) — a count of ranks holding a gradient travels in the same buffer. Parameters with
    ``requires_grad=False`` are left out. Every rank must pass the same parameters in the same order.
    """
    if not ctx.active:
        return
    params = [p for p in params if p.requires_grad]
    buckets: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise ValueError("average_gradients does not handle sparse gradients")
        buckets.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), group in buckets.items():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
        held = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=device)
        flat = _flatten_dense_tensors(grads + [held])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        *summed, held = _unflatten_dense_tensors(flat, grads + [held])
        for p, g, n in zip(group, summed, held.tolist()):
            if n == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)


def _scalar_device(ctx: Context) -> torch.device:
    # NCCL only reduces CUDA tensors; gloo reduces CPU tensors
    return torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else torch.device("cpu")


def all_sum(value: float, ctx: Context) -> float:
    """``value`` summed over all ranks (float64), e.g. the rank losses into the step's mean loss. Every rank must
    call it. Returns ``float(value)`` with one process."""
    if not ctx.active:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_scalar_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier(ctx: Context) -> None:
    """Wait until every rank gets here (e.g. while rank 0 writes a checkpoint). No-op with one process."""
    if ctx.active:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


def shutdown(ctx: Context) -> None:
    """Destroy the process group if :func:`from_env` created it (one made by the caller is left alone)."""
    global _created
    if ctx.active and _created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _created = False
