"""Atomic writes: a temporary file beside the target, then one rename, so no reader ever sees half a file."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """``Path.write_text``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save(path: str | Path, obj) -> None:
    """``torch.save``, atomically (load it back with ``torch.load(path, weights_only=True)``)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
