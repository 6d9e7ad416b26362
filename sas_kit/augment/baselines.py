"""Baseline augmentations under the SAS interface: ``none``, ``classic`` (torchvision v2) and ``stsnet``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sas_kit.augment.geometry import mask_box, resample_pair

STSNET_OPS = ("hflip", "vflip", "center_crop", "lesion_crop")


def identity(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    """The ``none`` policy: copies of the inputs, nothing applied."""
    return image.copy(), mask.copy(), {}


@dataclass(frozen=True)
class ClassicParams:
    """Conventional joint augmentation: horizontal flip, small affine, brightness/contrast.

    No vertical flip: in B-mode images depth runs down the image (attenuation, shadows), so a vertical
    flip makes images no scanner produces."""

    hflip_prob: float = 0.5
    degrees: float = 10.0  # rotation drawn from ±degrees
    translate: float = 0.05  # shift drawn from ±translate × width/height
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.2  # factor drawn from 1 ± brightness
    contrast: float = 0.2  # factor drawn from 1 ± contrast

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(self.scale))


class Classic:
    """torchvision.transforms.v2 functional ops on tv_tensors.Image / tv_tensors.Mask (the mask is
    resampled nearest-neighbour by torchvision); parameters are drawn from the numpy rng so the policy
    is seeded like the others and the record lists them."""

    def __init__(self, params: ClassicParams = ClassicParams()):
        self.params = params

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        import torch  # imported here so the numpy-only policies start without torch
        from torchvision import tv_tensors
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        p = self.params
        H, W = mask.shape
        flip = bool(rng.random() < p.hflip_prob)
        angle = float(rng.uniform(-p.degrees, p.degrees))
        tx, ty = (int(round(rng.uniform(-p.translate, p.translate) * s)) for s in (W, H))
        scale = float(rng.uniform(*p.scale))
        brightness = float(rng.uniform(1 - p.brightness, 1 + p.brightness))
        contrast = float(rng.uniform(1 - p.contrast, 1 + p.contrast))
        img = tv_tensors.Image(torch.from_numpy(np.array(image[None] if image.ndim == 2 else image.transpose(2, 0, 1))))
        msk = tv_tensors.Mask(torch.from_numpy(mask.astype(np.uint8))[None])
        if flip:
            img, msk = F.horizontal_flip(img), F.horizontal_flip(msk)
        affine = dict(angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0], fill=0)
        img = F.affine(img, interpolation=InterpolationMode.BILINEAR, **affine)
        msk = F.affine(msk, interpolation=InterpolationMode.NEAREST, **affine)
        img = F.adjust_contrast(F.adjust_brightness(img, brightness), contrast)
        out = img.numpy()
        out = out[0] if image.ndim == 2 else out.transpose(1, 2, 0)
        record = {"hflip": flip, "angle": angle, "translate": [tx, ty], "affine_scale": scale,
                  "brightness": brightness, "contrast": contrast}
        return np.ascontiguousarray(out), msk.numpy()[0] > 0, record


@dataclass(frozen=True)
class StsNetParams:
    """STS-Net's small-target oversampling (Zhao et al., Sci. Rep. 2025): images whose target is smaller
    than ``area_threshold`` (fraction of the image) get one of ``ops``: a flip, a centre crop zoomed by
    a factor from ``zoom_range`` or a crop of the same size centred on the lesion, resized back to the
    original size. Larger targets pass unchanged (they are not oversampled)."""

    area_threshold: float = 0.05
    zoom_range: tuple[float, float] = (1.1, 2.1)
    ops: tuple[str, ...] = STSNET_OPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "zoom_range", tuple(self.zoom_range))
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops or not set(self.ops) <= set(STSNET_OPS):
            raise ValueError(f"StsNetParams: ops must be taken from {STSNET_OPS} (got {self.ops})")
        if not 1.0 <= self.zoom_range[0] <= self.zoom_range[1]:
            raise ValueError(f"StsNetParams: zoom_range=(lo, hi) with 1 <= lo <= hi (got {self.zoom_range})")


class StsNet:
    """One STS-Net view of a small-target image (see ``StsNetParams``)."""

    def __init__(self, params: StsNetParams = StsNetParams()):
        self.params = params

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        p = self.params
        H, W = mask.shape
        fraction = float(mask.mean())
        box = mask_box(mask)
        if box is None or fraction >= p.area_threshold:
            why = "empty mask" if box is None else "target not small"
            return image.copy(), mask.copy(), {"small": False, "op": "none", "reason": why, "area_fraction": fraction}
        op = str(p.ops[int(rng.integers(len(p.ops)))])
        record: dict = {"small": True, "op": op, "area_fraction": fraction}
        if op == "hflip":
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1]), record
        if op == "vflip":
            return np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1]), record
        zoom = float(rng.uniform(*p.zoom_range))
        cw, ch = W / zoom, H / zoom
        if op == "center_crop":
            cx, cy = W / 2, H / 2
        else:  # lesion_crop: centred on the lesion's box, shifted to stay inside the image
            cx = min(max((box[0] + box[2]) / 2, cw / 2), W - cw / 2)
            cy = min(max((box[1] + box[3]) / 2, ch / 2), H - ch / 2)
        crop = [cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2]
        out, out_mask = resample_pair(image, mask, crop, (W, H))
        record.update(zoom=zoom, crop_box=[float(v) for v in crop])
        return out, out_mask, record
