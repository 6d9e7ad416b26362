"""SAS augmentation: organ-scale simulation (SAS-1) and ROI noise injection (SAS-2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

NOISE_MODELS = ("gaussian", "rayleigh", "gamma", "texture")
_RAYLEIGH_MEAN, _RAYLEIGH_STD = math.sqrt(math.pi / 2), math.sqrt((4 - math.pi) / 2)

from sas_kit.augment.geometry import Box, mask_box, resample_pair


@dataclass(frozen=True)
class SASParams:
    """Parameters of SAS. The paper (Ferreira et al., arXiv 2503.05916) does not publish its parameters:
    every default below is this kit's choice; docs/sas_parameters.md gives the reason for each.

    p_scale: probability of the scale step (SAS-1); p_noise: probability of the noise step (SAS-2).
    scale_range: linear shrink factor of the source (image or ROI crop), thumbnail side = factor × source side.
    scale_log_uniform: draw the factor log-uniformly (every octave of size equally likely) instead of uniformly.
    roi_crop_prob: probability that the source is the target's bounding box plus ``roi_crop_margin`` × its
        longer side on each side, instead of the whole image. min_target_area: the factor is raised so the
        target keeps at least this many pixels (never above scale_range[1]). fill: canvas grey level (0 = black).
    noise_models: drawn uniformly from NOISE_MODELS. noise_strength: relative std of the noise (gaussian:
        fraction of 255; rayleigh/gamma/texture: std of the multiplicative factor around 1).
    roi_mode: "dilate" (mask dilated by a square of half-side margin) or "bbox" (mask bounding box grown by
        margin); roi_margin: margin as a fraction of the target's longer bounding-box side (at least 1 px).
    texture_cells: range of the number of random grid cells across the ROI for the smooth texture field.
    """

    p_scale: float = 0.8
    scale_range: tuple[float, float] = (0.15, 1.0)
    scale_log_uniform: bool = True
    roi_crop_prob: float = 0.5
    roi_crop_margin: float = 0.5
    min_target_area: int = 16
    fill: int = 0
    p_noise: float = 0.5
    noise_models: tuple[str, ...] = NOISE_MODELS
    noise_strength: tuple[float, float] = (0.05, 0.25)
    roi_mode: str = "dilate"
    roi_margin: float = 0.25
    texture_cells: tuple[int, int] = (3, 8)

    def __post_init__(self) -> None:
        for name in ("scale_range", "noise_strength", "texture_cells", "noise_models"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON/CLI → tuples
        lo, hi = self.scale_range
        checks = [
            (0 <= self.p_scale <= 1 and 0 <= self.p_noise <= 1 and 0 <= self.roi_crop_prob <= 1, "probabilities in [0, 1]"),
            (0 < lo <= hi, f"scale_range=(lo, hi) with 0 < lo <= hi (got {self.scale_range})"),
            (0 <= self.noise_strength[0] <= self.noise_strength[1], f"noise_strength=(lo, hi) with 0 <= lo <= hi (got {self.noise_strength})"),
            (bool(self.noise_models) and set(self.noise_models) <= set(NOISE_MODELS), f"noise_models from {NOISE_MODELS} (got {self.noise_models})"),
            (self.roi_mode in ("dilate", "bbox"), f"roi_mode 'dilate' or 'bbox' (got {self.roi_mode!r})"),
            (0 <= self.fill <= 255, f"fill a grey level 0-255 (got {self.fill})"),
            (1 <= self.texture_cells[0] <= self.texture_cells[1], f"texture_cells=(lo, hi) >= 1 (got {self.texture_cells})"),
            (self.roi_margin >= 0 and self.roi_crop_margin >= 0 and self.min_target_area >= 0, "margins/min_target_area >= 0"),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"SASParams: expected {what}")


def simulate_scale(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, params: SASParams = SASParams()):
    """SAS-1: shrink the image (or the ROI crop) into a thumbnail pasted at a random place on a canvas of
    the original size filled with ``params.fill``. Returns (image, mask, record)."""
    H, W = mask.shape
    box = mask_box(mask)
    cropped = box is not None and rng.random() < params.roi_crop_prob
    if cropped:
        x0, y0, x1, y1 = box
        m = params.roi_crop_margin * max(x1 - x0, y1 - y0)
        src = [max(0, math.floor(x0 - m)), max(0, math.floor(y0 - m)), min(W, math.ceil(x1 + m)), min(H, math.ceil(y1 + m))]
    else:
        src = [0, 0, W, H]
    sw, sh = src[2] - src[0], src[3] - src[1]
    lo, hi = params.scale_range
    hi = min(hi, W / sw, H / sh)  # the thumbnail must fit the canvas
    area = int(mask.sum())
    if area and params.min_target_area:
        lo = max(lo, math.sqrt(params.min_target_area / area))
    lo = min(lo, hi)
    u = rng.random()
    factor = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if params.scale_log_uniform else lo + u * (hi - lo)
    tw, th = min(W, max(1, round(sw * factor))), min(H, max(1, round(sh * factor)))
    px, py = int(rng.integers(0, W - tw + 1)), int(rng.integers(0, H - th + 1))
    thumb, thumb_mask = resample_pair(image, mask, src, (tw, th))
    out = np.full(image.shape, params.fill, dtype=np.uint8)
    out[py : py + th, px : px + tw] = thumb
    out_mask = np.zeros_like(mask)
    out_mask[py : py + th, px : px + tw] = thumb_mask
    record = {
        "applied": True, "factor": factor, "factor_xy": [tw / sw, th / sh], "source": "roi_crop" if cropped else "image",
        "source_box": src, "paste_box": [px, py, px + tw, py + th], "fill": params.fill,
    }
    return out, out_mask, record


def roi_mask(mask: np.ndarray, margin_fraction: float, mode: str = "dilate", limit_box: Box | None = None):
    """The region noise may touch: (roi bool HxW, roi_box, margin_px), or (None, None, 0) for an empty mask.
    ``mode`` "dilate": the mask dilated by a (2m+1)² square; "bbox": the mask's box grown by m. Clipped to
    ``limit_box`` (e.g. the paste box, so the canvas stays untouched) and to the image."""
    box = mask_box(mask)
    if box is None:
        return None, None, 0
    H, W = mask.shape
    x0, y0, x1, y1 = box
    m = max(1, round(margin_fraction * max(x1 - x0, y1 - y0))) if margin_fraction > 0 else 0
    lx0, ly0, lx1, ly1 = limit_box if limit_box is not None else (0, 0, W, H)
    rb = [max(x0 - m, lx0, 0), max(y0 - m, ly0, 0), min(x1 + m, lx1, W), min(y1 + m, ly1, H)]
    roi = np.zeros_like(mask)
    if mode == "bbox":
        roi[rb[1] : rb[3], rb[0] : rb[2]] = True
    else:
        # dilate a window one margin wider than rb so clipping happens after the dilation
        wx0, wy0, wx1, wy1 = max(rb[0] - m, 0), max(rb[1] - m, 0), min(rb[2] + m, W), min(rb[3] + m, H)
        sub = mask[wy0:wy1, wx0:wx1].view(np.uint8)
        if m:
            sub = ndimage.maximum_filter1d(ndimage.maximum_filter1d(sub, 2 * m + 1, axis=0, mode="constant"), 2 * m + 1, axis=1, mode="constant")
        roi[rb[1] : rb[3], rb[0] : rb[2]] = sub[rb[1] - wy0 : rb[3] - wy0, rb[0] - wx0 : rb[2] - wx0] > 0
    return roi, rb, m


def _noise_factor(model: str, strength: float, shape: tuple[int, int], rng: np.random.Generator, cells: int) -> np.ndarray:
    """A float32 multiplicative field of mean ≈ 1 and std ≈ ``strength`` (not used for gaussian)."""
    if model == "rayleigh":
        r = np.sqrt(-2.0 * np.log1p(-rng.random(shape, dtype=np.float32)))
        return np.maximum(1.0 + (strength / _RAYLEIGH_STD) * (r - _RAYLEIGH_MEAN), 0.0, dtype=np.float32)
    if model == "gamma":
        k = 1.0 / max(strength, 1e-3) ** 2
        return rng.standard_gamma(k, shape, dtype=np.float32) / np.float32(k)
    # texture: a coarse random grid upsampled bicubically = a smooth low-frequency field
    h, w = shape
    gy, gx = (max(1, round(cells * h / max(h, w))) + 3, max(1, round(cells * w / max(h, w))) + 3)
    grid = rng.standard_normal((gy, gx), dtype=np.float32)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC, box=(1.5, 1.5, gx - 1.5, gy - 1.5)))
    return np.maximum(1.0 + strength * (field - field.mean()) / (field.std() + 1e-6), 0.0, dtype=np.float32)


def inject_noise(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, params: SASParams = SASParams(), limit_box: Box | None = None):
    """SAS-2: noise inside the ROI only (pixels outside it are unchanged bit for bit). Returns (image, record)."""
    roi, rb, m = roi_mask(mask, params.roi_margin, params.roi_mode, limit_box)
    if roi is None or rb[2] <= rb[0] or rb[3] <= rb[1]:
        return image, {"applied": False, "reason": "empty mask"}
    model = str(params.noise_models[int(rng.integers(len(params.noise_models)))])
    strength = float(rng.uniform(*params.noise_strength))
    x0, y0, x1, y1 = rb
    region = image[y0:y1, x0:x1].astype(np.float32)
    shape = (y1 - y0, x1 - x0)
    cells = int(rng.integers(params.texture_cells[0], params.texture_cells[1] + 1))
    if model == "gaussian":
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(strength * 255.0)
        region += noise[..., None] if region.ndim == 3 else noise
    else:
        factor = _noise_factor(model, strength, shape, rng, cells)
        region *= factor[..., None] if region.ndim == 3 else factor
    noisy = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    out = image.copy()
    sub_roi = roi[y0:y1, x0:x1]
    np.copyto(out[y0:y1, x0:x1], noisy, where=sub_roi[..., None] if image.ndim == 3 else sub_roi)
    record = {"applied": True, "model": model, "strength": strength, "roi_mode": params.roi_mode, "margin_px": m,
              "roi_box": rb, "roi_pixels": int(sub_roi.sum())}
    if model == "texture":
        record["texture_cells"] = cells
    return out, record


class SAS:
    """SAS-1 (scale simulation) then SAS-2 (ROI noise), each with its own probability. The paper does not
    publish its parameters; see ``SASParams`` and docs/sas_parameters.md for this kit's defaults."""

    def __init__(self, params: SASParams = SASParams()):
        self.params = params

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        H, W = mask.shape
        p = self.params
        if rng.random() < p.p_scale:
            image, mask, scale = simulate_scale(image, mask, rng, p)
        else:
            scale = {"applied": False, "factor": 1.0, "factor_xy": [1.0, 1.0], "paste_box": [0, 0, W, H], "fill": p.fill}
        if rng.random() < p.p_noise:
            image, noise = inject_noise(image, mask, rng, p, limit_box=scale["paste_box"])
        else:
            noise = {"applied": False, "reason": "not drawn"}
        return image, mask, {"scale": scale, "noise": noise}
