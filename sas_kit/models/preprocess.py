"""Model input geometry: image → normalised, padded square tensor, and low-res logits → original size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SAM_MEAN = [123.675, 116.28, 103.53]
SAM_STD = [58.395, 57.12, 57.375]
VERSION = 1  # bump when the steps below change: embeddings cached under another version are not reused

def _as_rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be HxW or HxWx3, got shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.size and (image.min() < 0 or image.max() > 255 or (image.dtype.kind == "f" and image.max() <= 1.0)):
        raise ValueError(f"image values must be 0-255 (uint8 greyscale or RGB); got {image.dtype} in "
                         f"[{image.min()}, {image.max()}] — convert with (img * 255).astype(np.uint8) if it is 0-1")
    return np.rint(image).astype(np.uint8)


def _longest_side(h: int, w: int, size: int) -> tuple[int, int]:
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _area_resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """cv2.INTER_AREA-like resize of a uint8 HxWx3 image: box averaging down, bilinear up."""
    h, w = image.shape[:2]
    method = Image.BOX if hw[0] <= h and hw[1] <= w else Image.BILINEAR
    return np.stack([np.asarray(Image.fromarray(image[:, :, c]).resize((hw[1], hw[0]), method))
                     for c in range(3)], axis=2)


def preprocess(spec, image) -> tuple[torch.Tensor, dict]:
    """The model's input tensor 1x3xSxS (float, CPU) for a uint8 HxW or HxWx3 image, and ``meta``:
    original_hw, resized_hw, scale (S / longest side) and scale_xy (per-axis factors used for prompts)."""
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    size = spec.img_size
    if spec.style == "litemedsam":
        rh, rw = _longest_side(h, w, size)
        x = _area_resize(rgb, (rh, rw)).astype(np.float32)
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
        scale_xy = (size / max(h, w),) * 2
    elif spec.style == "medsam":  # MedSAM's inference stretches to SxS (bicubic) and min-max normalises
        rh, rw = size, size
        x = np.stack([np.asarray(Image.fromarray(rgb[:, :, c]).resize((size, size), Image.BICUBIC))
                      for c in range(3)], axis=2).astype(np.float32)
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
        scale_xy = (size / w, size / h)
    else:
        from segment_anything.utils.transforms import ResizeLongestSide

        rh, rw = _longest_side(h, w, size)
        x = ResizeLongestSide(size).apply_image(rgb).astype(np.float32)
        x = (x - np.array(SAM_MEAN, np.float32)) / np.array(SAM_STD, np.float32)
        scale_xy = (rw / w, rh / h)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    t = F.pad(t, (0, size - t.shape[-1], 0, size - t.shape[-2]))
    meta = {"original_hw": (h, w), "resized_hw": (rh, rw), "scale": size / max(h, w),
            "scale_xy": (float(scale_xy[0]), float(scale_xy[1]))}
    return t, meta


def postprocess(spec, low_res: torch.Tensor, meta: dict) -> torch.Tensor:
    """Low-res logits Bx1x256x256 → logits at the original size: upsample to SxS, crop the resized
    extent (drop the padding), upsample to original_hw (Meta's Sam.postprocess_masks; for LiteMedSAM,
    where S = 256, exactly the official crop-then-upsample)."""
    size = spec.img_size
    x = low_res if low_res.shape[-1] == size else F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
    rh, rw = meta["resized_hw"]
    x = x[..., :rh, :rw]
    return F.interpolate(x, tuple(meta["original_hw"]), mode="bilinear", align_corners=False)
