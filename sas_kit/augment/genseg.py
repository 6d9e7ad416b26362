"""GenSeg-style augmentation: a pix2pix mask → image generator trained on the training set, used as a policy.

After Zhang et al., "Generative AI enables medical image segmentation in ultra low-data regimes" (Nature
Communications 2025; code github.com/importZL/semantic_segmentation, Apache-2.0; this is an independent re-write).
GenSeg trains pix2pix (GAN + 100·L1) on the (mask, image) pairs, then makes synthetic pairs by augmenting a real
mask geometrically (flip, crop/pad, affine) and generating the image from it. GenSeg also tunes the generator's
architecture end-to-end against the segmenter's validation loss; this kit keeps only the fixed pix2pix step.
The generator runs in eval mode at synthesis (dropout off): the image is a deterministic function of the mask,
all diversity comes from the mask augmentation (the caller's numpy Generator), so a view is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from sas_kit import config, files
from sas_kit.augment import pix2pix  # a sibling module (the package __init__ does not import genseg)
from sas_kit.augment.geometry import check_pair
from sas_kit.digest import data_key

VERSION = 1  # bump when training or preprocessing changes what a cached generator would be
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class GenSegParams:
    """Generator training (pix2pix) and mask augmentation (GenSeg) parameters.

    size: square working resolution (power of two; 128 is the kit's CPU choice, see ``sas_kit.augment.pix2pix``).
    epochs: passes over the n training pairs; the generator takes ``ceil(epochs · n / batch)`` optimiser steps
    (:meth:`n_steps`), so a low-data generator sees each of its images as often as the full one. GenSeg's scripts
    and pix2pix's also fix epochs, not steps. 60 epochs of 100 images = 1500 steps of batch 4 ≈ 60-70 s at 128² on 2
    idle cores (0.04 s/step); 10 images: 150 steps. steps: if set, exactly this many steps instead (tests, demos).
    lr, betas, lambda_l1: Adam and the L1 weight of pix2pix. ngf/ndf: generator/discriminator base width.
    dropout: pix2pix's decoder dropout while training. pair_flip: flip training pairs horizontally (p = 0.5).
    Mask augmentation (GenSeg's ranges): flip_prob (horizontal flip); crop_pad: each side cropped (<0) or padded
    (>0) by up to this fraction, then resized back; scale_range per axis; translate: fraction of the side;
    rotate and shear: degrees, uniform in ±value. These are GenSeg's ranges as the paper's setup states them; the
    repository's train_end2end.py uses wider ones (rotate ±25°, shear ±15°, pad-only CropAndPad up to 10 %).
    """

    size: int = 128
    epochs: float = 60.0
    steps: int | None = None
    batch_size: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lambda_l1: float = 100.0
    ngf: int = 16
    ndf: int = 16
    dropout: bool = True
    pair_flip: bool = True
    flip_prob: float = 0.5
    crop_pad: float = 0.1
    scale_range: tuple[float, float] = (0.8, 1.2)
    translate: float = 0.1
    rotate: float = 15.0
    shear: float = 8.0

    def __post_init__(self) -> None:
        for name in ("betas", "scale_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON/CLI → tuples
        checks = [
            (isinstance(self.size, int) and 32 <= self.size <= 1024 and not self.size & (self.size - 1),
             f"size a power of two in [32, 1024], e.g. 64, 128, 256 (got {self.size!r})"),
            (self.epochs > 0 and (self.steps is None or self.steps >= 1) and self.batch_size >= 1,
             f"epochs > 0, steps None or >= 1, batch_size >= 1 (got {self.epochs}, {self.steps}, {self.batch_size})"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"2 betas in [0, 1) (got {self.betas})"),
            (self.lr > 0 and self.lambda_l1 >= 0, f"lr > 0, lambda_l1 >= 0 (got {self.lr}, {self.lambda_l1})"),
            (self.ngf >= 1 and self.ndf >= 1, f"ngf and ndf >= 1 (got {self.ngf}, {self.ndf})"),
            (0 <= self.flip_prob <= 1, f"flip_prob in [0, 1] (got {self.flip_prob})"),
            (0 <= self.crop_pad <= 0.4, f"crop_pad a fraction in [0, 0.4] (got {self.crop_pad})"),
            (len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
             f"scale_range=(lo, hi) with 0 < lo <= hi (got {self.scale_range})"),
            (0 <= self.translate <= 0.5, f"translate a fraction in [0, 0.5] (got {self.translate})"),
            (0 <= self.rotate <= 180, f"rotate in degrees, 0-180 (got {self.rotate})"),
            (0 <= self.shear < 90, f"shear in degrees, 0-89 (got {self.shear})"),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"GenSegParams: expected {what}")

    def n_steps(self, n: int) -> int:
        """Optimiser steps for ``n`` training pairs: ``steps`` if set, else ``ceil(epochs · n / min(batch, n))``."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n / min(self.batch_size, n)))


def augment_mask(mask: np.ndarray, rng: np.random.Generator, params: GenSegParams = GenSegParams(),
                 return_record: bool = False):
    """GenSeg's mask augmentation as one nearest-neighbour affine warp (bool HxW → bool HxW, same shape).

    In order: horizontal flip; crop/pad each side by a fraction in ±crop_pad and resize back; then about the
    centre scale (per axis), shear, rotate, translate. Outside the source is background. Always draws the same
    number of values from ``rng``, so the result is a function of the rng state. ``return_record`` also returns
    the drawn values (JSON-plain)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    H, W = mask.shape
    p = params
    flip = bool(rng.random() < p.flip_prob)
    left, top, right, bottom = (float(v) for v in rng.uniform(-p.crop_pad, p.crop_pad, 4))
    sx, sy = (float(v) for v in rng.uniform(p.scale_range[0], p.scale_range[1], 2))
    tx, ty = (float(v) for v in rng.uniform(-p.translate, p.translate, 2))
    angle, shear = float(rng.uniform(-p.rotate, p.rotate)), float(rng.uniform(-p.shear, p.shear))

    def affine(a, b, c, d, e, f):  # a 3x3 homogeneous 2-D affine matrix
        return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])
    # forward map in pixel-corner coordinates (x right, y down), input → output
    fx, fy = 1 + left + right, 1 + top + bottom
    fwd = affine(-1, 0, W, 0, 1, 0) if flip else np.eye(3)
    fwd = affine(1 / fx, 0, left * W / fx, 0, 1 / fy, top * H / fy) @ fwd
    c, s, t = math.cos(math.radians(angle)), math.sin(math.radians(angle)), math.tan(math.radians(shear))
    core = affine(c, -s, 0, s, c, 0) @ affine(1, t, 0, 0, 1, 0) @ affine(sx, 0, 0, 0, sy, 0)
    fwd = affine(1, 0, W / 2 + tx * W, 0, 1, H / 2 + ty * H) @ core @ affine(1, 0, -W / 2, 0, 1, -H / 2) @ fwd
    corner = affine(1, 0, 0.5, 0, 1, 0.5)  # pixel index → pixel-corner coordinates
    inv = np.linalg.inv(np.linalg.inv(corner) @ fwd @ corner)
    swap = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])  # (x, y) ↔ (row, col)
    inv = swap @ inv @ swap
    out = ndimage.affine_transform(mask.astype(np.uint8), inv[:2, :2], inv[:2, 2], output_shape=(H, W),
                                   order=0, mode="constant", cval=0) > 0
    if not return_record:
        return out
    return out, {"flip": flip, "crop_pad_ltrb": [left, top, right, bottom], "scale_xy": [sx, sy],
              "translate_xy": [tx, ty], "rotate_deg": angle, "shear_deg": shear,
              "area_factor": float(abs(np.linalg.det(fwd[:2, :2])))}


def _resize(array: np.ndarray, size: int) -> torch.Tensor:  # HxW → 1x1xSxS, bilinear, antialiased
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def mask_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """bool HxW → 1x1xSxS in {-1, 1} (a pixel is target if at least half of its area is)."""
    return (_resize(np.asarray(mask, np.float32), size) >= 0.5).float() * 2 - 1


def image_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HxW or HxWx3 → grey 1x1xSxS in [-1, 1] (ITU-R 601 luma for RGB)."""
    grey = image.astype(np.float32) if image.ndim == 2 else image[..., :3].astype(np.float32) @ _LUMA
    return (_resize(grey, size) / 127.5 - 1).clamp(-1, 1)


def train_generator(samples: Sequence[tuple], params: GenSegParams = GenSegParams(), seed: int = 0,
                    progress: bool = True) -> pix2pix.UNetGenerator:
    """Train pix2pix (GAN + lambda_l1·L1) on (image, mask) samples at ``params.size``; return the generator in
    eval mode. Deterministic for a fixed seed on CPU: weights, dropout and batch order come from ``seed``
    (torch's global RNG is restored afterwards). Turns on flush-denormal for the process (as
    sas_kit.experiment.train)."""
    if not samples:
        raise ValueError("train_generator needs at least one (image, mask) sample")
    pairs = [check_pair(s[0], s[1], f"sample {i}") for i, s in enumerate(samples)]
    images = torch.cat([image_tensor(im, params.size) for im, _ in pairs])
    masks = torch.cat([mask_tensor(m, params.size) for _, m in pairs])
    device = torch.device(config.device())
    torch.set_flush_denormal(True)  # Adam's second moments underflow to denormals: ~50x slower on x86
    n, batch = len(pairs), min(params.batch_size, len(pairs))
    total = params.n_steps(n)
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(seed)
        G, D = pix2pix.build(params.size, params.ngf, params.ndf, params.dropout)
        G, D = G.to(device, torch.float32).train(), D.to(device, torch.float32).train()
        opt_g = torch.optim.Adam(G.parameters(), lr=params.lr, betas=params.betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=params.lr, betas=params.betas)
        data_rng = torch.Generator().manual_seed(seed)
        order = torch.empty(0, dtype=torch.long)
        for step in (bar := tqdm(range(total), desc=f"genseg pix2pix ({n} pairs, seed {seed})", disable=not progress, leave=False)):
            if len(order) < batch:
                order = torch.cat([order, torch.randperm(n, generator=data_rng)])
            idx, order = order[:batch], order[batch:]
            m, x = masks[idx], images[idx]
            if params.pair_flip:
                flip = (torch.rand(batch, generator=data_rng) < 0.5)[:, None, None, None]
                m, x = torch.where(flip, m.flip(-1), m), torch.where(flip, x.flip(-1), x)
            m, x = m.to(device), x.to(device)
            fake = G(m)
            # discriminator: real pairs → 1, generated pairs → 0 (loss halved, as pix2pix)
            D.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            real_logits, fake_logits = D(m, x), D(m, fake.detach())
            loss_d = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
            loss_d.backward()
            opt_d.step()
            # generator: fool D and stay close to the real image in L1
            D.requires_grad_(False)
            opt_g.zero_grad(set_to_none=True)
            fake_logits = D(m, fake)
            loss_gan = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
            loss_l1 = F.l1_loss(fake, x)
            (loss_gan + params.lambda_l1 * loss_l1).backward()
            opt_g.step()
            if progress and (step % 50 == 0 or step == total - 1):
                bar.set_postfix(d=f"{loss_d.item():.3f}", g=f"{loss_gan.item():.3f}", l1=f"{loss_l1.item():.3f}")
    return G.eval()


def synthesize(generator: pix2pix.UNetGenerator, mask: np.ndarray, out_shape: tuple[int, ...] | None = None,
               channels: int = 1) -> np.ndarray:
    """The generator's image for ``mask`` (bool HxW): made at ``generator.size`` in eval mode (it is left in
    eval mode; dropout off, so deterministic),
    resized bilinearly to ``out_shape[:2]`` (default: the mask's shape), uint8; HxW for ``channels`` 1, else
    the grey image replicated to HxWxchannels."""
    mask = np.asarray(mask, bool)
    H, W = (out_shape or mask.shape)[:2]
    param = next(generator.parameters())
    with torch.no_grad():
        y = generator.eval()(mask_tensor(mask, generator.size).to(param.device, param.dtype))
    y = F.interpolate(y.float().cpu(), size=(H, W), mode="bilinear", align_corners=False)
    image = ((y[0, 0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return image if channels == 1 else np.repeat(image[..., None], channels, axis=2)


def _params_json(params: GenSegParams) -> str:
    return json.dumps(asdict(params), sort_keys=True)  # a string: exact to compare, plain for weights_only


def cache_key(samples: Sequence[tuple], params: GenSegParams, seed: int) -> str:
    """Digest of the training pixels (``sas_kit.digest.data_key``), seed, params and VERSION."""
    blob = json.dumps({"data": data_key(samples), "seed": int(seed), "params": _params_json(params),
                       "version": VERSION}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def load_or_train(samples: Sequence[tuple], params: GenSegParams = GenSegParams(), seed: int = 0,
                  root: str | Path | None = None, progress: bool = True) -> tuple[pix2pix.UNetGenerator, dict]:
    """The generator for (samples, params, seed) from ``<root>/<key>.pt``, else trained and saved there
    (atomically). A file that is unreadable or was made for another key, params, seed or VERSION is not
    used: a warning says why, and it is retrained and overwritten. Returns (generator in eval mode, record
    {key, cached, seconds, path}, plus steps when trained)."""
    start = time.perf_counter()
    root = Path(root) if root is not None else config.data_root() / "cache" / "genseg"
    key = cache_key(samples, params, seed)
    path = root / f"{key}.pt"
    device = torch.device(config.device())
    if path.exists():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            expected = {"key": key, "version": VERSION, "seed": int(seed), "params": _params_json(params)}
            if wrong := [k for k, v in expected.items() if obj.get(k) != v]:
                raise ValueError(f"made for another {', '.join(wrong)}")
            with torch.random.fork_rng(devices=[]):  # construction draws init weights: keep the caller's RNG
                generator = pix2pix.UNetGenerator(params.size, 1, 1, params.ngf, params.dropout)
            generator.load_state_dict(obj["state_dict"])
            generator.to(device, torch.float32).eval()
            return generator, {"key": key, "cached": True, "seconds": time.perf_counter() - start, "path": str(path)}
        except Exception as err:  # never use a file we cannot vouch for
            warnings.warn(f"GenSeg cache file {path} not used ({type(err).__name__}: {err}); retraining",
                          RuntimeWarning, stacklevel=2)
    generator = train_generator(samples, params, seed, progress=progress)
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    files.torch_save(path, {"key": key, "version": VERSION, "seed": int(seed), "params": _params_json(params),
                            "state_dict": state}, durable=True)  # atomic; trainers of one key write equal files
    return generator, {"key": key, "cached": False, "seconds": time.perf_counter() - start, "path": str(path),
                       "steps": params.n_steps(len(samples))}


class GenSegPolicy:
    """``policy(image, mask, rng) -> (synthetic image, augmented mask, record)``: the mask is augmented with
    :func:`augment_mask` (draws from ``rng``), and the image is generated from that mask. The image has the
    input's shape and dtype (grey replicated to 3 channels for an RGB input); the record is JSON-plain."""

    name = "genseg"

    def __init__(self, generator: pix2pix.UNetGenerator, params: GenSegParams = GenSegParams(), name: str = "genseg",
                 key: str = ""):
        self.generator, self.genseg_params, self.name, self.key = generator.eval(), params, name, key
        self.params = json.loads(json.dumps(asdict(params)))  # plain JSON types for records

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | int | None = None):
        image, mask = check_pair(image, mask)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        new_mask, applied = augment_mask(mask, rng, self.genseg_params, return_record=True)
        channels = 1 if image.ndim == 2 else image.shape[2]
        out = synthesize(self.generator, new_mask, mask.shape, channels)
        out = out[..., None] if out.ndim < image.ndim else out  # HxWx1 in, HxWx1 out
        record = {"policy": self.name, "synthetic": True, "input_hw": list(mask.shape), "channels": channels,
                  "empty_mask": not mask.any(), "source_mask_area": int(mask.sum()), "mask_aug": applied,
                  "mask_area": int(new_mask.sum()), "generator_size": int(self.generator.size)}
        return out, new_mask, record

    def __repr__(self) -> str:
        return f"GenSegPolicy({self.name!r}, generator={self.key or 'unkeyed'}, {self.params})"
