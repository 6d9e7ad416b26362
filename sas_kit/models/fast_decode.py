"""The fast mask decode used by :func:`sas_kit.models.registry.decode_batch`.

The reference decode (``registry._predict_masks``, Meta's modules) is memory- and op-bound on CPU: the image side
adds the positional encoding to the B x 4096 x 256 keys separately for each projection that needs it, the
transformer output is copied back to NCHW for two transposed convolutions that build B x 32 x 256 x 256 maps for
four masks of which one is kept, autocast re-casts every weight on every call, and the mask input runs through
NCHW convolutions and a LayerNorm2d. :func:`predict_masks` computes the same function with the same
arithmetic per element (the same ops in the same dtypes under the active precision policy, so bf16 rounds as
the reference does) but re-ordered: the keys stay channels-last (B x N x C) from the mask embedding to the last
upscaling; the projections that read the same input share one matmul (token-to-image k with image-to-token q,
both of keys + PE); weights are cast to the compute dtype once per call; the stride-2 (transposed)
convolutions of the mask input and the output upscaling are per-pixel matmuls; only the kept masks'
hypernetwork outputs are computed and contracted. The token side (a few tokens) runs Meta's own modules.
Used for every decode, with or without gradients (evaluation, the no-grad click rounds of training and the
differentiable training decode: its weights are built from the parameters with differentiable ops, so autograd
reaches them; only the kept outputs' hypernetworks get a gradient). ``SAS_KIT_FAST_DECODE=0`` (or
:func:`set_fast_decode`) switches to the reference; tests/test_fast_decode.py holds logits and gradients to it,
docs/notes.md has the measurements.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

_FAST = {"on": os.environ.get("SAS_KIT_FAST_DECODE", "1") != "0"}

CHUNK = 1
"""Rows decoded at a time. The image side moves B x 4096 x 256 keys through ~200 memory-bound ops (casts, adds,
norms, GELU), so a batch of 16 (64 MiB of fp32 keys) runs from DRAM while one row (4 MiB) stays in cache: on
2 cores a scored target cost 0.50 s with batches of 16, 0.33 s in chunks of 4 and 0.25 s one row at a time
(`sas-kit bench score`, docs/notes.md, "decode chunks"). Rows are independent: bf16 results are bit-identical to
a whole-batch decode; fp32 logits differ by <= 2e-5 (the matmul kernel changes with the row count)
(tests/test_fast_decode.py)."""


def set_fast_decode(on: bool) -> bool:
    """Switch the fast no-grad decode path on or off for this process; returns the previous setting."""
    previous, _FAST["on"] = _FAST["on"], bool(on)
    return previous


def fast_decode_enabled() -> bool:
    """Whether decodes take :func:`predict_masks` (else Meta's modules, the reference)."""
    return _FAST["on"]


def _compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype the decoder's matmuls run in under the active precision policy (autocast's, else float32)."""
    kind = device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return torch.float32


def _cl_weight(conv: torch.nn.Module, dtype: torch.dtype, transposed: bool) -> torch.Tensor:
    """A 2x2 stride-2 (transposed) convolution as one matmul weight: Conv2d Cout x Cin x 2 x 2 → (i, j, Cin) x Cout
    (input patch order); ConvTranspose2d Cin x Cout x 2 x 2 → Cin x (i, j, Cout) (output sub-pixel order)."""
    w = conv.weight.float()
    if transposed:
        return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous().to(dtype)
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous().to(dtype)


def _fast_weights(sam, dtype: torch.dtype) -> dict:
    """The image-side weights of ``sam``'s prompt encoder and mask decoder laid out for the fast path, in
    ``dtype``, built afresh on every call (≈ 2 ms against ≥ 100 ms of a decode: a cache keyed by tensor address
    and version served a resumed run the weights of an earlier model, tests/test_train.py). The positional
    encoding is computed under the caller's precision, as the reference computes it on every call."""
    dec, pe_mod = sam.mask_decoder, sam.prompt_encoder

    def cat(projs):
        return (torch.cat([p.weight.float() for p in projs], 0).t().contiguous().to(dtype),
                torch.cat([p.bias.float() for p in projs]).to(dtype))

    def single(proj):
        return proj.weight.float().t().contiguous().to(dtype), proj.bias.to(dtype)

    pe = pe_mod.get_dense_pe().flatten(2)[0].t().contiguous()  # N x C
    layers = []
    for layer in dec.transformer.layers:
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        layers.append({"kq": cat([t2i.k_proj, i2t.q_proj]), "v": single(t2i.v_proj), "out": single(i2t.out_proj),
                       "split": t2i.internal_dim})
    fin = dec.transformer.final_attn_token_to_image
    d1, n1, _, d2, n2, _, d3 = pe_mod.mask_downscaling
    up1, ln, _, up2, _ = dec.output_upscaling
    entry = {
        "pe": pe, "layers": layers, "final_k": single(fin.k_proj), "final_v": single(fin.v_proj),
        "no_mask": pe_mod.no_mask_embed.weight[0],
        "mask_in": [(_cl_weight(d1, dtype, False), d1.bias.to(dtype), n1), (_cl_weight(d2, dtype, False),
                    d2.bias.to(dtype), n2), (d3.weight.float().flatten(1).t().contiguous().to(dtype), d3.bias.to(dtype))],
        "up1": (_cl_weight(up1, dtype, True), up1.bias.to(dtype).repeat(4)), "ln": ln,
        "up2": (_cl_weight(up2, dtype, True), up2.bias.to(dtype).repeat(4)),
        "c1": up1.weight.shape[1], "c2": up2.weight.shape[1],
    }
    return entry


def _ln_last(x: torch.Tensor, norm) -> torch.Tensor:
    """segment_anything's LayerNorm2d (the same ops, so the same rounding) over the LAST dim (channels-last)."""
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    x = (x - u) / torch.sqrt(s + norm.eps)
    return norm.weight * x + norm.bias


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """segment_anything's Attention core (heads, scaled scores, softmax, weighted sum) on projected q, k, v."""
    def split(x):
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    attn = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (attn @ v).transpose(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


def _linear(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x (... x Cin) @ W + b with the fast path's stored (W Cin x Cout, b)."""
    w, b = wb
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[1])


def _fast_keys(wts: dict, image_embeddings: torch.Tensor, mask_input: torch.Tensor | None) -> torch.Tensor:
    """``image_embeddings`` + the prompt encoder's dense embedding of ``mask_input`` (its no-mask embedding when
    None) as contiguous B x N x C keys: the mask-downscaling convolutions run as per-pixel matmuls."""
    b, c, h, w = image_embeddings.shape
    if mask_input is None:
        dense = wts["no_mask"]
    else:
        (w1, b1, n1), (w2, b2, n2), last = wts["mask_in"]
        x = mask_input.reshape(b, 2 * h, 2, 2 * w, 2).permute(0, 1, 3, 2, 4).reshape(-1, 4)  # (b, y, x) x (i, j)
        x = F.gelu(_ln_last(torch.addmm(b1, x, w1), n1))
        c1 = w1.shape[1]
        x = x.reshape(b, h, 2, w, 2, c1).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4 * c1)  # (b, y, x) x (i, j, c)
        x = F.gelu(_ln_last(torch.addmm(b2, x, w2), n2))
        dense = _linear(x, last).view(b, h * w, c)
    if torch.is_grad_enabled():  # ``out=`` has no autograd
        return (image_embeddings.flatten(2).transpose(1, 2) + dense).contiguous()
    keys = torch.empty(b, h * w, c, dtype=image_embeddings.dtype, device=image_embeddings.device)
    return torch.add(image_embeddings.flatten(2).transpose(1, 2), dense, out=keys)


def predict_masks(sam, image_embeddings, sparse, mask_input, outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_predict_masks` for inference (no grad): the mask logits B x M x 256 x 256 of the decoder outputs
    ``outputs`` only (mask-token indices) and the IoU predictions B x 4 of all, decoded :data:`CHUNK` rows at a
    time. See the comment above."""
    wts = _fast_weights(sam, _compute_dtype(image_embeddings.device))
    b = image_embeddings.shape[0]
    if b <= CHUNK:
        return _predict_chunk(sam, wts, image_embeddings, sparse, mask_input, outputs)
    parts = [_predict_chunk(sam, wts, image_embeddings[i:i + CHUNK], sparse[i:i + CHUNK],
                            None if mask_input is None else mask_input[i:i + CHUNK], outputs) for i in range(0, b, CHUNK)]
    return torch.cat([m for m, _ in parts]), torch.cat([q for _, q in parts])


def _predict_chunk(sam, wts, image_embeddings, sparse, mask_input, outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict_masks` for one chunk of rows, with the weights of :func:`_fast_weights`."""
    dec = sam.mask_decoder
    tr = dec.transformer
    pe = wts["pe"]
    tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    b, c, h, w = image_embeddings.shape
    keys = _fast_keys(wts, image_embeddings, mask_input)
    queries, query_pe = tokens, tokens

    def token_to_image(attn, queries, k, v):
        return attn.out_proj(_attend(attn.q_proj(queries + query_pe), k, v, attn.num_heads))

    for layer, lw in zip(tr.layers, wts["layers"]):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        kq = _linear(keys + pe, lw["kq"])  # token-to-image k and image-to-token q: both read keys + PE
        d = lw["split"]
        queries = layer.norm2(queries + token_to_image(layer.cross_attn_token_to_image, queries, kq[..., :d],
                                                       _linear(keys, lw["v"])))
        queries = layer.norm3(queries + layer.mlp(queries))
        i2t = layer.cross_attn_image_to_token
        out = _attend(kq[..., d:], i2t.k_proj(queries + query_pe), i2t.v_proj(queries), i2t.num_heads)
        keys = layer.norm4(keys + _linear(out, lw["out"]))
    queries = tr.norm_final_attn(queries + token_to_image(tr.final_attn_token_to_image, queries,
                                                          _linear(keys + pe, wts["final_k"]),
                                                          _linear(keys, wts["final_v"])))
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in outputs], dim=1)  # B x M x C2
    iou = dec.iou_prediction_head(queries[:, 0, :])
    c1, c2, m = wts["c1"], wts["c2"], len(outputs)
    x = _linear(keys, wts["up1"]).view(b * h * w * 4, c1)  # rows (b, pixel, i, j)
    x = F.gelu(_ln_last(x, wts["ln"]))
    x = F.gelu(_linear(x, wts["up2"])).view(b, h * w * 16, c2)  # rows (pixel, i, j, i2, j2)
    y = torch.bmm(x, hyper.transpose(1, 2))  # B x (pixel, i, j, i2, j2) x M
    masks = y.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, m, 4 * h, 4 * w)
    return masks, iou
