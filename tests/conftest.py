"""Shared fixtures: an isolated data root, the real-data mirror (or a visible skip), fake upstream folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MIRROR_ENV = os.environ.get("SAS_KIT_MIRROR")


@pytest.fixture
def tmp_data_root(tmp_path, monkeypatch) -> Path:
    """A fresh SAS_KIT_DATA_DIR for one test (the real mirror, if any, stays visible)."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("SAS_KIT_DATA_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def _real_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-data")


@pytest.fixture
def mirror(_real_root, monkeypatch) -> Path:
    """The real-data mirror (SAS_KIT_MIRROR); real datasets are prepared once per test session."""
    if not MIRROR_ENV or not Path(MIRROR_ENV).is_dir():
        pytest.skip("real data not available: set SAS_KIT_MIRROR=../shared/data (make test does when it exists)")
    monkeypatch.setenv("SAS_KIT_DATA_DIR", str(_real_root))
    monkeypatch.setenv("SAS_KIT_MIRROR", MIRROR_ENV)
    return Path(MIRROR_ENV)


def save(path: Path, array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        img.putpalette(palette)
    img.save(path)
    return path


def ellipse_mask(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture
def fake_busi(tmp_path) -> Path:
    """A BUSI-shaped mirror with every quirk: 1-bit, RGBA (alpha 255) and extra _mask_K files, an empty
    'normal' mask, a corrupt image and a mask of the wrong size."""
    root = tmp_path / "mirror" / "busi"
    rng = np.random.default_rng(0)
    for cls, n in (("benign", 6), ("malignant", 3)):
        for i in range(1, n + 1):
            img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
            save(root / cls / "images" / f"{cls} ({i}).png", img)
            m = ellipse_mask(60, 80, 30, 20 + i, 6)
            # odd: 1-bit PNG (a bool array saves as mode "1"); even: 8-bit 0/255
            save(root / cls / "mask" / f"{cls} ({i})_mask.png", m if i % 2 else (m * 255).astype(np.uint8))
    # benign (2): a second lesion as an RGBA file whose alpha is 255 everywhere
    extra = ellipse_mask(60, 80, 10, 60, 4)
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., :3] = extra[..., None] * 255
    rgba[..., 3] = 255
    save(root / "benign" / "mask" / "benign (2)_mask_1.png", rgba)
    # normal: empty RGB mask
    save(root / "normal" / "images" / "normal (1).png", rng.integers(0, 255, (60, 80), dtype=np.uint8))
    save(root / "normal" / "mask" / "normal (1)_mask.png", np.zeros((60, 80, 3), np.uint8))
    # corrupt image, and a size mismatch
    (root / "benign" / "images" / "benign (5).png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    save(root / "benign" / "mask" / "benign (6)_mask.png", np.zeros((30, 40), np.uint8))
    return root.parent


@pytest.fixture
def fake_usgra(tmp_path) -> Path:
    """A USGRA-shaped mirror: palette masks (1 = nerve, 2 = vessel), train and test folders."""
    root = tmp_path / "mirror" / "usgra_nerve_vessel" / "dataset"
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)
    for sub, n in (("", 8), ("test", 3)):
        for i in range(n):
            base = root / sub if sub else root
            save(base / "images" / f"{i:04d}.png", np.full((40, 50), 90, np.uint8))
            m = np.zeros((40, 50), np.uint8)
            m[5:15, 5:15] = 1
            if i % 3:
                m[25:35, 30:45] = 2
            save(base / "masks" / f"{i:04d}.png", m, mode="P", palette=palette)
    return root.parent.parent
