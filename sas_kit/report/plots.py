"""Matplotlib figures for datasets and results (no computation the report needs lives here)."""

from __future__ import annotations

import matplotlib

matplotlib.use(matplotlib.get_backend())  # respect MPLBACKEND / notebook inline backends
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sas_kit.experiment.evaluate import SIZE_EDGES  # noqa: E402


def overlay(ax, image: np.ndarray, mask: np.ndarray, title: str = "", color=(1.0, 0.2, 0.2), alpha: float = 0.35):
    """Draw ``image`` (grey or RGB) with ``mask`` tinted and outlined on ``ax``."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if mask is not None and mask.any():
        tint = np.zeros((*mask.shape, 4), np.uint8)  # RGBA bytes: a float64 tint was 32 B/pixel per panel
        tint[mask] = np.round(np.array([*color, alpha]) * 255).astype(np.uint8)
        ax.imshow(tint, interpolation="nearest")
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return ax


def contact_sheet(samples: list[tuple[np.ndarray, np.ndarray, str]], cols: int = 4, size: float = 2.2):
    """A grid of (image, mask, title) overlays."""
    rows = max(1, int(np.ceil(len(samples) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, mask, title) in zip(axes.ravel(), samples):
        overlay(ax, image, mask, title)
    fig.tight_layout()
    return fig


def area_fraction_histogram(fractions: dict[str, list[float]], ax=None):
    """Histogram (log x) of target area fraction per dataset: why small targets are hard."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.logspace(-3.5, 0, 36)
    for name, values in fractions.items():
        values = [v for v in values if v > 0]
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{name} (n={len(values)})")
    for edge in SIZE_EDGES:
        ax.axvline(edge, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("target area / image area")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    return ax
