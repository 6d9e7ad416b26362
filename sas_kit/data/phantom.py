"""Synthetic B-mode ultrasound phantoms with exact masks: the offline default dataset and test fixture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal


@dataclass(frozen=True)
class PhantomSpec:
    """Parameters of the phantom generator (all sizes in pixels of the output image)."""

    size: int = 256
    area_range: tuple[float, float] = (0.002, 0.30)  # target area as a fraction of the image, log-uniform
    dynamic_range_db: float = 36.0  # log compression window
    attenuation: float = 1.5  # total amplitude decay exp(-attenuation) from top to bottom
    psf_axial: float = 1.0  # Gaussian sigma (px) of the pulse envelope along depth
    psf_lateral: float = 2.0  # Gaussian sigma (px) of the beam across
    psf_wavelength: float = 3.0  # carrier period (px) along depth


def _psf(spec: PhantomSpec) -> np.ndarray:
    """A separable point-spread function: Gaussian-modulated carrier (axial) times Gaussian (lateral)."""
    ay = np.arange(-int(4 * spec.psf_axial) - 2, int(4 * spec.psf_axial) + 3)
    ax = np.arange(-int(3 * spec.psf_lateral) - 1, int(3 * spec.psf_lateral) + 2)
    axial = np.exp(-0.5 * (ay / spec.psf_axial) ** 2) * np.exp(2j * np.pi * ay / spec.psf_wavelength)
    lateral = np.exp(-0.5 * (ax / spec.psf_lateral) ** 2)
    return axial[:, None] * lateral[None, :]


def _ellipse(size: int, rng: np.random.Generator, area_fraction: float) -> np.ndarray:
    """A rotated filled ellipse of the given area fraction, fully inside the image."""
    aspect = rng.uniform(0.5, 1.0)
    area = area_fraction * size * size
    a = np.sqrt(area / (np.pi * aspect))  # semi-major
    b = a * aspect
    a, b = max(a, 0.8), max(b, 0.8)
    margin = a + 2
    cy, cx = rng.uniform(margin, size - margin, size=2) if margin < size / 2 else (size / 2, size / 2)
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if not mask.any():  # sub-pixel ellipse: keep its centre pixel so the target is never lost
        mask[int(cy), int(cx)] = True
    return mask


def phantom_sample(index: int, seed: int = 0, spec: PhantomSpec = PhantomSpec()) -> tuple[np.ndarray, np.ndarray, dict]:
    """Image ``index`` of the phantom series ``seed``: (uint8 HxW image, bool HxW mask, record).

    Every sample has its own random stream, so any one can be regenerated without the others.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    n = spec.size
    lo, hi = np.log(spec.area_range[0]), np.log(spec.area_range[1])
    area_fraction = float(np.exp(rng.uniform(lo, hi)))
    mask = _ellipse(n, rng, area_fraction)
    hypo = bool(rng.random() < 0.7)  # most ultrasound targets (cysts, vessels, follicles) are hypoechoic
    contrast = rng.uniform(0.15, 0.45) if hypo else rng.uniform(1.8, 3.0)
    # Tissue: smooth echogenicity variation times scatterer amplitudes (complex Gaussian → Rayleigh).
    tissue = 1.0 + 0.4 * ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma=n / 16) * (n / 16)
    tissue = np.clip(tissue, 0.3, None)
    soft = ndimage.gaussian_filter(mask.astype(np.float64), sigma=0.8)
    echo = tissue * (1.0 + (contrast - 1.0) * soft)
    scatter = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) * echo
    rf = signal.fftconvolve(scatter, _psf(spec), mode="same")
    envelope = np.abs(rf)
    depth = np.linspace(0.0, 1.0, n)[:, None]
    envelope *= np.exp(-spec.attenuation * depth)
    db = 20 * np.log10(envelope / np.percentile(envelope, 99.9) + 1e-12)
    image = np.clip((db + spec.dynamic_range_db) / spec.dynamic_range_db, 0.0, 1.0)
    image = (image * 255).round().astype(np.uint8)
    record = {
        "index": index,
        "seed": seed,
        "area_fraction": float(mask.mean()),
        "requested_area_fraction": area_fraction,
        "echo": "hypo" if hypo else "hyper",
        "contrast": float(contrast),
    }
    return image, mask, record


def make_phantom(n: int, seed: int = 0, spec: PhantomSpec = PhantomSpec()) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """``n`` phantom samples (image, mask, record), deterministic by ``seed``."""
    return [phantom_sample(i, seed=seed, spec=spec) for i in range(n)]
