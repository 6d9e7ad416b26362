"""What machine a benchmark ran on: the CPU's name and the SIMD flags that decide fp32 vs bf16 speed.

Every benchmark table names these (timings are never compared across machines, only ratios within one run)."""

from __future__ import annotations

from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> str:
    """The CPU's SIMD flags that matter for bf16/fp32 matmuls, joined by '+' ('?' when unknown)."""
    line = next((ln for ln in _cpuinfo().splitlines() if ln.startswith("flags")), "")
    flags = line.split(":", 1)[1].split() if ":" in line else []
    return "+".join(f for f in FLAGS if f in flags) or "?"


def cpu_label(threads: int | None = None) -> str:
    """A benchmark row's ``cpu`` column: the flags of :func:`cpu_flags` and the thread count it ran with (torch's
    current one by default)."""
    import torch

    return f"{cpu_flags()}, {torch.get_num_threads() if threads is None else threads} threads"


def cpu_name() -> str:
    """The CPU's model name, or 'unknown'."""
    line = next((ln for ln in _cpuinfo().splitlines() if ln.startswith("model name")), "")
    return line.split(":", 1)[1].strip() if ":" in line else "unknown"


def torch_build() -> str:
    """The installed torch and which build it is, e.g. 'torch 2.14.1+cu130, CUDA 13.0 build' or
    'torch 2.13.0+cpu, CPU build': memory depends on it (a CUDA build maps its CUDA libraries and triton even on a CPU)."""
    import torch

    cuda = torch.version.cuda
    return f"torch {torch.__version__}, {f'CUDA {cuda} build' if cuda else 'CPU build'}"  # no parentheses: it sits
    # inside the parenthesis that bench_memory's chapter-line pattern rewrites
