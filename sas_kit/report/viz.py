"""Figures for augmentation (pairs, grids, area histograms) and the notebook widget, as plain functions."""

from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sas_kit.augment import make_policy
from sas_kit.report.plots import overlay

SIZE_BINS = (0.01, 0.05, 0.20)  # edges of the "<1%", "1-5%", "5-20%", ">20%" evaluation bins
NOISE_CHOICES = ("none", "gaussian", "rayleigh", "gamma", "texture")
ZOOM_BELOW = 0.4  # show_pair enlarges the paste box when its longer side is under this fraction of the image


def describe(record: dict | None) -> str:
    """A one-line summary of an augmentation record; a SAS record that drew neither step says so."""
    if not record:
        return ""
    parts = [record["policy"]] if "policy" in record else []
    scale, noise = record.get("scale"), record.get("noise")
    if isinstance(scale, dict) and scale.get("applied"):
        parts.append(f"scale {scale['factor']:.2f} ({scale.get('source', 'image')})")
    elif isinstance(scale, dict):
        parts.append("no scale step")
    if isinstance(noise, dict) and noise.get("applied"):
        parts.append(f"{noise['model']} {noise['strength']:.2f}")
    elif isinstance(noise, dict):
        parts.append("no noise step")
    if "op" in record:
        parts.append(record["op"] + (f" ×{record['zoom']:.2f}" if "zoom" in record else ""))
    if "angle" in record:
        parts.append(f"rot {record['angle']:.0f}° scale {record['affine_scale']:.2f}" + (" flip" if record.get("hflip") else ""))
    if "source_mask_area" in record and "mask_area" in record:
        parts.append(f"area {record['source_mask_area']}→{record['mask_area']} px")
    return ", ".join(parts)


def _box(ax, box, color: str, label: str) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=1, ls="--", label=label))


def _zoom_window(paste_box, hw: tuple[int, int]) -> list[int] | None:
    """The paste box grown by a fifth of its size on each side (clipped), or None when it is not small."""
    x0, y0, x1, y1 = paste_box
    H, W = hw
    if max((x1 - x0) / W, (y1 - y0) / H) >= ZOOM_BELOW:
        return None
    pad = max(2, round(0.2 * max(x1 - x0, y1 - y0)))
    return [max(0, x0 - pad), max(0, y0 - pad), min(W, x1 + pad), min(H, y1 + pad)]


def show_pair(image: np.ndarray, mask: np.ndarray, aug_image: np.ndarray, aug_mask: np.ndarray,
              record: dict | None = None) -> Figure:
    """Original and augmented image side by side, masks overlaid; the paste box (yellow) and the noise
    ROI box (cyan) from ``record`` are drawn on the augmented image. When the thumbnail is small (its longer
    side under ``ZOOM_BELOW`` of the image) a third panel shows the paste box enlarged, pixel for pixel, so
    the noise inside a small thumbnail can be seen."""
    record = record or {}
    scale, noise = record.get("scale"), record.get("noise")
    shrunk = isinstance(scale, dict) and scale.get("applied")
    window = _zoom_window(scale["paste_box"], np.shape(mask)) if shrunk else None
    fig = Figure(figsize=(12, 4.3) if window else (8, 4.3), layout="constrained")
    axes = fig.subplots(1, 3 if window else 2)
    a, b = axes[0], axes[1]
    overlay(a, image, np.asarray(mask, bool), f"original ({int(np.count_nonzero(mask))} px)")
    overlay(b, aug_image, np.asarray(aug_mask, bool), "augmented")
    if isinstance(scale, dict) and scale.get("applied"):
        _box(b, scale["paste_box"], "yellow", "paste box")
    if isinstance(noise, dict) and noise.get("applied"):
        _box(b, noise["roi_box"], "cyan", "noise ROI box")
    if b.patches:
        b.legend(loc="lower right", fontsize=7, framealpha=0.6)
    if window:
        x0, y0, x1, y1 = window
        z = axes[2]
        zoom = min(np.shape(mask)[1] / (x1 - x0), np.shape(mask)[0] / (y1 - y0))
        overlay(z, np.asarray(aug_image)[y0:y1, x0:x1], np.asarray(aug_mask, bool)[y0:y1, x0:x1],
                f"paste box enlarged ×{zoom:.1f}")
        shift = lambda box: [box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0]  # noqa: E731
        _box(z, shift(scale["paste_box"]), "yellow", "paste box")
        if isinstance(noise, dict) and noise.get("applied"):
            _box(z, shift(noise["roi_box"]), "cyan", "noise ROI box")
    fig.suptitle(describe(record), fontsize=9)
    return fig


def sample_grid(samples: Sequence[tuple[np.ndarray, np.ndarray, dict]], ncols: int = 4, title: str = "") -> Figure:
    """A grid of (image, mask, record) samples with their masks overlaid and a short caption each."""
    if not samples:
        raise ValueError("sample_grid needs at least one (image, mask, record) sample")
    nrows = -(-len(samples) // ncols)
    fig = Figure(figsize=(2.4 * ncols, 2.5 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (image, mask, record) in zip(axes, samples):
        caption = describe({k: v for k, v in (record or {}).items() if k not in ("policy", "source_mask_area")})
        overlay(ax, image, np.asarray(mask, bool), caption.replace(", ", "\n", 1))
    for ax in axes[len(samples):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def area_histogram(before: Sequence[float], after: Sequence[float], bins: int = 24, label_after: str = "after SAS",
                   label_before: str = "original") -> Figure:
    """Histograms of target area fraction (log axis) before and after augmentation, with the evaluation
    size-bin edges; empty masks (area 0) are counted in the legend, not plotted. Pass each source image
    once in ``before`` and say in ``label_after`` how many views per image ``after`` holds."""
    before, after = np.asarray(before, float), np.asarray(after, float)
    positive = np.concatenate([before[before > 0], after[after > 0]])
    lo = max(positive.min() if positive.size else 1e-4, 1e-6)
    edges = np.geomspace(lo, 1.0, bins + 1)
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for values, name, color in ((before, label_before, "tab:blue"), (after, label_after, "tab:orange")):
        empty = int((values <= 0).sum())
        median = float(np.median(values)) if values.size else float("nan")
        ax.hist(values[values > 0], bins=edges, alpha=0.55, color=color,
                label=f"{name} (n={values.size}, median {median:.2%}" + (f", {empty} empty)" if empty else ")"))
    for edge in SIZE_BINS:
        ax.axvline(edge, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("target area / image area (dotted: size bins 1%, 5%, 20%)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return fig


def slider_params(scale: float = 0.5, noise_model: str = "gamma", strength: float = 0.15, roi_margin: float = 0.25,
                  roi_crop: bool = False) -> dict:
    """The ``SASParams`` fields (sas_kit/augment/sas.py) that the explorer's sliders set: each step drawn for
    certain with exactly the slider's value (scale 1.0 = ``p_scale`` 0, noise "none" = ``p_noise`` 0). The same
    dict is what ``SAS_PARAMS`` (notebook 04) or ``--sas-params`` take; a training run usually widens the single
    values into ranges and keeps the probabilities below 1, so that some views stay unchanged."""
    if noise_model not in NOISE_CHOICES:
        raise ValueError(f"noise_model must be one of {NOISE_CHOICES}, got {noise_model!r}")
    return dict(p_scale=0.0 if scale >= 1.0 else 1.0, scale_range=[scale, scale], min_target_area=0,
                roi_crop_prob=1.0 if roi_crop else 0.0, p_noise=0.0 if noise_model == "none" else 1.0,
                noise_models=[noise_model] if noise_model != "none" else ["gaussian"],
                noise_strength=[strength, strength], roi_margin=roi_margin)


def render_sas(image: np.ndarray, mask: np.ndarray, scale: float = 0.5, noise_model: str = "gamma",
               strength: float = 0.15, roi_margin: float = 0.25, roi_crop: bool = False, seed: int = 0) -> Figure:
    """The widget's callback: SAS with :func:`slider_params` (every step applied for certain; scale 1.0 = no
    scale step, noise_model "none" = no noise step; the figure's title says which steps ran), shown with
    :func:`show_pair`."""
    policy = make_policy("sas", **slider_params(scale, noise_model, strength, roi_margin, roi_crop))
    aug_image, aug_mask, record = policy(image, mask, np.random.default_rng(seed))
    return show_pair(image, mask, aug_image, aug_mask, record)


def needs_data_message(name: str) -> str:
    """How to make dataset ``name`` available here (the explorers show it when it is picked)."""
    return (f"{name} needs the real data: set SAS_KIT_MIRROR to a folder of dataset copies before starting "
            f"Jupyter, or run `sas-kit data prepare {name}` (data/README.md says where each dataset comes "
            f"from), then re-run this notebook.")


def dataset_sources(names: Sequence[str], split: str = "train", limit: int | None = None) -> dict[str, Callable]:
    """{label: loader} for a dataset picker: each loader returns [(id, image, mask), ...] on first use
    (datasets nobody picks cost no memory); a dataset not available here raises with how to get it."""
    from sas_kit.augment.samples import source_pairs
    from sas_kit.data import datasets

    def loader(name):
        def load():
            if not datasets.available(name):
                raise RuntimeError(needs_data_message(name))
            return source_pairs(name, split, limit=limit)
        return load

    ready = {n for n in names if datasets.available(n)}
    return {(n if n in ready else f"{n} (needs data)"): loader(n) for n in names}


def load_items(pairs: dict, name: str) -> list:
    """``pairs[name]``, calling and replacing it first when it is a loader."""
    items = pairs[name]
    if callable(items):
        pairs[name] = items = items()
    if not items:
        raise ValueError(f"{name} has no images")
    return items


def sas_explorer(pairs: dict[str, Sequence | Callable], render: Callable[..., Figure] = render_sas):
    """An ipywidgets UI over ``pairs`` ({dataset: [(id, image, mask), ...] or a loader returning them}):
    dataset and image pickers and sliders for scale, noise model, noise strength and ROI margin; each change
    calls ``render`` and shows its figure, what was applied (the figure's title, moved into the line above the
    figure so it is not shown twice) and the ``SASParams`` fields the sliders set (:func:`slider_params`). Errors,
    including a dataset that is not available, are printed in the output instead of leaving it blank.

    The figure is written into the Output widget's state (no ``with output:`` capture): notebook runners
    (papermill/nbclient) can deadlock on captured widget output, so this UI is safe to build under them."""
    import ipywidgets as w

    names = list(pairs)
    if not names:
        raise ValueError("sas_explorer needs at least one dataset")
    c = dict(
        dataset=w.Dropdown(options=names, value=names[0], description="dataset"),
        index=w.IntSlider(0, 0, 0, description="image"),
        scale=w.FloatSlider(value=0.5, min=0.1, max=1.0, step=0.05, description="scale"),
        noise_model=w.Dropdown(options=NOISE_CHOICES, value="gamma", description="noise"),
        strength=w.FloatSlider(value=0.15, min=0.0, max=0.5, step=0.01, description="strength"),
        roi_margin=w.FloatSlider(value=0.25, min=0.0, max=1.0, step=0.05, description="ROI margin"),
        roi_crop=w.Checkbox(value=False, description="crop ROI first"),
        seed=w.IntText(value=0, description="seed"),
    )
    for key, control in c.items():
        control.add_class(f"sas-{key.replace('_', '-')}")
    hint = w.HTML("scale 1.0 = no scale step; noise <i>none</i> = no noise step")
    record = w.HTML()
    record.add_class("sas-record")
    as_params = w.HTML()
    as_params.add_class("sas-params")
    out = w.Output()
    out.add_class("sas-figure")

    def update(_=None) -> None:
        out.outputs = ()
        c["strength"].disabled = c["roi_margin"].disabled = c["noise_model"].value == "none"
        try:
            items = load_items(pairs, c["dataset"].value)
            c["index"].max = len(items) - 1
            _, image, mask = items[min(c["index"].value, len(items) - 1)]
            settings = {k: c[k].value for k in ("scale", "noise_model", "strength", "roi_margin", "roi_crop", "seed")}
            fields = slider_params(**{k: v for k, v in settings.items() if k != "seed"})
            as_params.value = ("as <code>SASParams</code> fields (notebook 04's SAS_PARAMS): "
                               f"<code>{json.dumps(fields)}</code>")
            fig = render(image, mask, **settings)
            record.value = "applied: " + (fig.get_suptitle() or "(no record)")
            fig.suptitle("")  # said in the line above the figure: not twice
            out.append_display_data(fig)
        except Exception as error:  # show it in the UI, where the user is looking
            record.value = "applied: nothing (see the message below)"
            out.append_stdout(f"{type(error).__name__}: {error}\n")

    for control in c.values():
        control.observe(update, names="value")
    update()
    rows = [("dataset", "index"), ("scale", "noise_model"), ("strength", "roi_margin"), ("roi_crop", "seed")]
    return w.VBox([w.VBox([w.HBox([c[a], c[b]]) for a, b in rows] + [hint, as_params]), record, out])
