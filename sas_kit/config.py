"""Settings read from the environment: data root, mirror, weights folder, device, run profiles."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Where prepared datasets and downloads live: ``$SAS_KIT_DATA_DIR``, else ``data/`` in a checkout,
    else ``~/.cache/sas-kit``."""
    env = os.environ.get("SAS_KIT_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "data").is_dir():
        return REPO_ROOT / "data"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sas-kit"


def mirror_dir() -> Path | None:
    """A local folder of ``<name>/`` dataset copies (``$SAS_KIT_MIRROR``), or None."""
    env = os.environ.get("SAS_KIT_MIRROR")
    return Path(env).expanduser().resolve() if env else None


def weights_dir() -> Path:
    """Folder searched for model checkpoints before downloading (``$SAS_KIT_WEIGHTS_DIR``)."""
    env = os.environ.get("SAS_KIT_WEIGHTS_DIR")
    return Path(env).expanduser().resolve() if env else data_root() / "weights"


def device(preferred: str | None = None) -> str:
    """``cuda`` → ``mps`` → ``cpu`` unless ``preferred`` (or ``$SAS_KIT_DEVICE``) names one."""
    choice = preferred or os.environ.get("SAS_KIT_DEVICE")
    if choice:
        return choice
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass(frozen=True)
class Profile:
    """How big a run is: per-split image limits, epochs, seeds, views per image."""

    name: str
    train_limit: int | None
    eval_limit: int | None
    epochs: int
    seeds: tuple[int, ...]
    views: int
    mode: str = "decoder"
    view_seed: int | None = None  # fixed: every seed trains on the same pre-drawn views (fewer encoder calls)
    sweep_epochs: int = 1


PROFILES = {
    "quick": Profile("quick", train_limit=6, eval_limit=4, epochs=1, seeds=(0,), views=2),
    "cpu": Profile("cpu", train_limit=24, eval_limit=16, epochs=2, seeds=(0, 1, 2), views=3, view_seed=0),
    "gpu": Profile("gpu", train_limit=None, eval_limit=None, epochs=20, seeds=(0, 1, 2), views=3, mode="full",
                   sweep_epochs=5),
}
