"""One precision policy for the image encoder and the mask decoder, shared by training, evaluation and benchmarks.

``fp32``: everything in float32 (the reference). ``bf16``: the image encoder and the prompt encoder + mask
decoder run under bfloat16 autocast (weights and optimiser state stay float32: ordinary mixed precision), on
CUDA and on CPUs with AVX-512 BF16. On the 2-core AVX-512 BF16 CPU this kit is developed on, bf16 made an
encoder call about 2x faster and a decoder training sample about 1.8x faster (single thread, batch 4-8); the
decoder's large activations (B x 4096 x 256 tokens, B x 32 x 256 x 256 upscaled maps) make it memory-bound, and
bf16 halves that traffic. ``sas-kit bench encoder`` prints the speed and the zero-shot box-Dice change
against fp32 on the test sets (docs/notes.md). Training and evaluation call the same two context managers
below, so a checkpoint is always evaluated in the precision it was trained with; embeddings are cached per
precision (:class:`sas_kit.experiment.embed_cache.EmbeddingCache`), so the two never mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys

import torch

PRECISIONS = ("fp32", "bf16")

# glibc malloc: an allocation of at least the mmap threshold gets its own mmap, returned to the OS when freed.
# glibc's default threshold starts at 128 KiB but rises to the largest block freed so far (up to 32 MiB), so after
# the first decoder pass every activation up to 32 MiB comes from the heap arenas, whose freed pages stay resident
# (the first fine-tuning run left ~300 MiB there, docs/notes.md, 2026-11-30). A fixed 1 MiB threshold lowered the
# quick profile's peak by ~140 MiB but made a batch-8 bf16 decoder training step 1.4-2.9x slower (every large
# activation mmapped and faulted in afresh; paired runs, docs/notes.md), so it is OFF by default:
# ``$SAS_KIT_MMAP_THRESHOLD`` (bytes, e.g. 1048576) turns it on where memory matters more than speed: binder/start
# sets it for Binder sessions, and ``sas-kit bench memory`` measures that configuration.
MMAP_THRESHOLD = 0
BINDER_MMAP_THRESHOLD = 1 << 20  # what binder/start exports: on Binder memory (1-2 GB) matters more than speed
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def _libc():
    try:
        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name) if name else None
        return lib if lib is not None and hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()  # None off glibc (macOS, musl): both functions below are then no-ops


def _threshold() -> int:
    """The heap setting asked for: ``$SAS_KIT_MMAP_THRESHOLD`` in bytes, else MMAP_THRESHOLD (0: off)."""
    return int(os.environ.get("SAS_KIT_MMAP_THRESHOLD", MMAP_THRESHOLD))


def bound_heap(threshold: int | None = None) -> bool:
    """Fix glibc's mmap threshold (``threshold`` bytes, default ``$SAS_KIT_MMAP_THRESHOLD`` or MMAP_THRESHOLD = 0:
    off) so that large tensors freed by a decoder pass go back to the OS instead of staying in the heap;
    process-wide, applied on import of this module (every model path imports it). Numbers are unchanged: only
    where the allocator takes memory from (and its speed: see above). Returns whether it was set."""
    if threshold is None:
        threshold = _threshold()
    if _LIBC is None or threshold <= 0:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold)))


# The opposite trade for the experiment engine's processes (run_plan's runs and encode stage, on workers and
# serially): keep freed memory in the heap instead of handing it back. With glibc's defaults a 1-thread LiteMedSAM
# encode spent 0.28 of its 0.82 s in the kernel (165,000 page faults per image: large activations mmapped, or heap
# tops trimmed, and faulted in afresh); with these three settings 0.50 s and 7,000 faults (docs/notes.md,
# 2026-12-07). The price is resident memory that stays at the process's peak; a memory-bounded process
# ($SAS_KIT_MMAP_THRESHOLD, Binder) never takes it, and ``SAS_KIT_HEAP=default`` turns it off.
FAST_HEAP = {-3: 32 << 20, -1: 1 << 30, -2: 256 << 20}  # mallopt: M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD
_HEAP = {"fast": False}


def fast_heap() -> bool:
    """Set :data:`FAST_HEAP` for this process (large blocks from the heap, freed memory kept for reuse) unless the
    process is memory-bounded (``$SAS_KIT_MMAP_THRESHOLD`` > 0) or ``$SAS_KIT_HEAP`` is ``default``; numbers are
    unchanged. Returns whether it is on."""
    if _HEAP["fast"]:
        return True
    if _LIBC is None or _threshold() > 0 or os.environ.get("SAS_KIT_HEAP", "fast") == "default":
        return False
    _HEAP["fast"] = all(_LIBC.mallopt(k, ctypes.c_int(v)) for k, v in FAST_HEAP.items())
    return _HEAP["fast"]


def trim_heap() -> bool:
    """Return the free pages of every glibc heap arena to the OS (``malloc_trim(0)``): called after a training run,
    whose small allocations (autograd bookkeeping, optimiser state copies) leave freed pages behind. A no-op under
    :func:`fast_heap`, whose point is to keep them."""
    return bool(_LIBC is not None and not _HEAP["fast"] and _LIBC.malloc_trim(0))


def skip_triton(threshold: int | None = None) -> bool:
    """In the memory-bounded configuration (``$SAS_KIT_MMAP_THRESHOLD`` > 0, as binder/start sets it) on a machine
    without a GPU, keep triton from loading: returns whether it did. A CUDA build of torch installs triton, and
    torchvision's import (timm and segment-anything import it) pulls in ``torch._dynamo``, which imports triton if
    it can: about 80 MiB resident in a fine-tuning kernel (docs/notes.md, 2026-12-01), for a GPU compiler that has
    nothing to run on here. A CPU build of torch (Binder's, binder/requirements.txt) has no triton, so there this
    changes nothing. Registering ``None`` makes ``import triton`` raise ImportError, which torch reads as "no
    triton" (``torch.utils._triton.has_triton_package``); with a GPU, or triton already imported, it does nothing."""
    if threshold is None:
        threshold = _threshold()
    if threshold <= 0 or "triton" in sys.modules or torch.cuda.is_available():
        return False
    sys.modules["triton"] = None
    return True


bound_heap()
skip_triton()


def _bf16_capable(device: str) -> bool:
    kind = str(device).split(":")[0]
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(probe and probe())
    return False


def resolve(precision: str | None, device: str) -> str:
    """``precision`` (or ``$SAS_KIT_PRECISION``) checked against PRECISIONS; ``None``/``auto`` → ``bf16`` where
    the device computes it natively (CUDA with bf16, CPU with AVX-512 BF16), else ``fp32``."""
    choice = precision or os.environ.get("SAS_KIT_PRECISION") or "auto"
    if choice == "auto":
        return "bf16" if _bf16_capable(device) else "fp32"
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or 'auto', got {choice!r}")
    return choice


def _device_type(device) -> str:
    return str(device).split(":")[0]


def encoder(device, precision: str):
    """Context for image-encoder forward passes (bf16 autocast in ``bf16``, else a no-op)."""
    if precision == "bf16" and _device_type(device) in ("cpu", "cuda"):
        return torch.autocast(_device_type(device), dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decoder(device, precision: str):
    """Context for prompt-encoder + mask-decoder forward passes (bf16 autocast in ``bf16``, else a no-op).
    Backward passes run outside it, as torch recommends."""
    return encoder(device, precision)
