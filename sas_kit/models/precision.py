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
import os

import torch

PRECISIONS = ("fp32", "bf16")


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
