"""The fast no-grad decode path (fast_decode.predict_masks) equals the reference decoder within tolerance.

Runs on a randomly initialised LiteMedSAM-shaped model (no weights, no data needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sas_kit.models import precision as policy
from sas_kit.models import registry

B = 3


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return registry.build(registry.get_spec("litemedsam")).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(B, 256, 64, 64, generator=g) * 0.5
    rng = np.random.default_rng(2)
    scales = [(0.5, 0.5), (0.4, 0.3), (1.0, 1.0)]
    points = rng.uniform(20, 200, size=(B, 3, 2)).astype(np.float32)
    labels = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 0]])
    boxes = np.array([[10, 20, 200, 220], [30, 40, 100, 300], [0, 0, 250, 250]], np.float32)
    mask = torch.randn(B, 1, 256, 256, generator=g) * 4
    return emb, scales, points, labels, boxes, mask


def _decode(sam, fast: bool, precision: str, **kw):
    previous = registry.set_fast_decode(fast)
    try:
        with torch.no_grad(), policy.decoder("cpu", precision):
            low, iou = registry.decode_batch(sam, **kw)
        return low.float(), iou.float()
    finally:
        registry.set_fast_decode(previous)


CASES = {
    "box": lambda e, s, p, l, b, m: dict(boxes=b),
    "points": lambda e, s, p, l, b, m: dict(points=p, labels=l),
    "points+mask": lambda e, s, p, l, b, m: dict(points=p, labels=l, mask_input=m),
    "multimask": lambda e, s, p, l, b, m: dict(points=p[:, :1], labels=l[:, :1], multimask=True),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_equals_reference_fp32(sam, inputs, case):
    emb, scales = inputs[:2]
    kw = dict(embeddings=emb, scales=scales, **CASES[case](*inputs))
    ref, ref_iou = _decode(sam, False, "fp32", **kw)
    out, iou = _decode(sam, True, "fp32", **kw)
    assert out.shape == ref.shape == (B, 1, 256, 256) and iou.shape == ref_iou.shape == (B, 1)
    scale = ref.abs().mean()
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, float(scale)) * 10
    torch.testing.assert_close(iou, ref_iou, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(policy.resolve("auto", "cpu") != "bf16", reason="CPU without native bf16")
@pytest.mark.parametrize("case", CASES)
def test_fast_equals_reference_bf16_to_bf16_rounding(sam, inputs, case):
    emb, scales = inputs[:2]
    kw = dict(embeddings=emb, scales=scales, **CASES[case](*inputs))
    ref32, _ = _decode(sam, False, "fp32", **kw)
    ref, ref_iou = _decode(sam, False, "bf16", **kw)
    out, iou = _decode(sam, True, "bf16", **kw)
    # the fast path is no farther from the reference-bf16 logits than reference-bf16 is from fp32 (x2 slack)
    assert (out - ref).abs().mean() <= 2 * (ref - ref32).abs().mean() + 1e-3
    assert ((out > 0) == (ref > 0)).float().mean() >= 0.99
    assert (iou - ref_iou).abs().max() <= 0.05


def test_batch_equals_rows_one_by_one(sam, inputs):
    emb, scales, points, labels, _, mask = inputs
    both = _decode(sam, True, "fp32", embeddings=emb, scales=scales, points=points, labels=labels, mask_input=mask)[0]
    for i in range(B):
        one = _decode(sam, True, "fp32", embeddings=emb[i:i + 1], scales=scales[i:i + 1], points=points[i:i + 1],
                      labels=labels[i:i + 1], mask_input=mask[i:i + 1])[0]
        torch.testing.assert_close(one, both[i:i + 1], rtol=1e-4, atol=1e-4)


def _grads(sam, fast: bool, **kw) -> tuple[torch.Tensor, dict]:
    """Low-res logits and every parameter's gradient of a loss on them (fp32, gradients on)."""
    previous = registry.set_fast_decode(fast)
    sam.zero_grad(set_to_none=True)
    try:
        low, iou = registry.decode_batch(sam, **kw)
        (torch.sigmoid(low).square().mean() + low.mean() + iou.mean()).backward()
        return low.detach(), {n: p.grad.clone() for n, p in sam.named_parameters() if p.grad is not None}
    finally:
        registry.set_fast_decode(previous)
        sam.zero_grad(set_to_none=True)


@pytest.mark.parametrize("case", ["box", "points+mask"])
def test_training_decode_fast_gradients_equal_reference_fp32(sam, inputs, case):
    """Training decodes take the fast path too: the same logits and the same gradient for every parameter that
    shapes the kept output. The other outputs' hypernetworks, which the reference sends a zero gradient, get none."""
    emb, scales = inputs[:2]
    kw = dict(embeddings=emb, scales=scales, **CASES[case](*inputs))
    ref_low, ref = _grads(sam, False, **kw)
    low, fast = _grads(sam, True, **kw)
    assert (low - ref_low).abs().max() <= 1e-3 * max(1.0, float(ref_low.abs().mean()))
    unused = {n for n in ref if n.startswith("mask_decoder.output_hypernetworks_mlps.") and not
              n.startswith("mask_decoder.output_hypernetworks_mlps.0.")}
    assert unused and all(float(ref[n].abs().max()) == 0.0 for n in unused)
    assert set(fast) == set(ref) - unused
    checked = 0
    for name, g in ref.items():
        if name in unused or float(g.norm()) < 1e-6:  # e.g. attention key biases: the softmax ignores them
            continue
        rel = float((fast[name] - g).norm() / g.norm())
        assert rel <= 1e-3, f"{name}: relative gradient difference {rel:.2e}"
        checked += 1
    assert checked >= 40  # the transformer, upscaling, hypernetwork 0, the prompt encoder's mask convolutions


def test_fast_path_follows_in_place_weight_updates():
    torch.manual_seed(3)
    model = registry.build(registry.get_spec("litemedsam")).eval()
    emb = torch.randn(1, 256, 64, 64)
    kw = dict(embeddings=emb, scales=[(1.0, 1.0)], boxes=np.array([[10, 10, 120, 140]], np.float32))
    _decode(model, True, "fp32", **kw)  # a first fast decode before the weights change
    with torch.no_grad():
        for layer in model.mask_decoder.transformer.layers:
            layer.cross_attn_token_to_image.k_proj.weight.mul_(1.5)  # an optimiser step updates in place
        model.prompt_encoder.no_mask_embed.weight.add_(0.3)
    ref = _decode(model, False, "fp32", **kw)[0]
    out = _decode(model, True, "fp32", **kw)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


def test_switch_returns_the_previous_setting():
    before = registry.fast_decode_enabled()
    assert registry.set_fast_decode(False) == before
    assert registry.fast_decode_enabled() is False
    registry.set_fast_decode(before)


def test_click_sessions_fast_equal_reference_fp32(sam):
    """A no-grad click session (evaluation and training's click rounds) gives the same clicks and masks."""
    from sas_kit.models import segment

    yy, xx = np.mgrid[:96, :128]
    parts = [((yy - 40) ** 2 + (xx - 50) ** 2 < 20 ** 2), ((yy - 70) ** 2 / 2 + (xx - 100) ** 2 < 15 ** 2)]
    g = torch.Generator().manual_seed(4)
    embs = [torch.randn(1, 256, 64, 64, generator=g) for _ in parts]
    metas = [{"scale_xy": (2.0, 2.0), "resized_hw": (192, 256), "original_hw": (96, 128)}] * 2
    runs = {}
    for fast in (False, True):
        previous = registry.set_fast_decode(fast)
        try:
            runs[fast] = segment.click_sessions(sam, "litemedsam", embs, metas, parts, [np.zeros_like(p) for p in parts],
                                                [3, 3], batch_size=2)
        finally:
            registry.set_fast_decode(previous)
    for ref, out in zip(runs[False], runs[True]):
        assert ref.points == out.points and ref.labels == out.labels
        for a, b in zip(ref.preds, out.preds):
            assert (a != b).mean() < 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_chunked_decode_equals_one_batch(sam, inputs, precision, monkeypatch):
    """A batch larger than fast_decode.CHUNK is decoded in chunks of CHUNK rows (cache-sized, docs/notes.md); the
    rows are independent, so the result equals decoding the whole batch at once: bit for bit in bf16, within
    fp32 matmul rounding. Fails if a chunk loses, repeats or reorders rows (each input row is different)."""
    from sas_kit.models import fast_decode

    emb, scales, points, labels, _, mask = inputs
    rep = 3  # 9 rows
    kw = dict(embeddings=torch.cat([emb * (1 + 0.1 * r) for r in range(rep)]), scales=scales * rep,
              points=np.concatenate([points + 7 * r for r in range(rep)]), labels=np.concatenate([labels] * rep),
              mask_input=torch.cat([mask * (1 - 0.2 * r) for r in range(rep)]))
    chunked, chunked_iou = _decode(sam, True, precision, **kw)  # the kit's CHUNK ...
    monkeypatch.setattr(fast_decode, "CHUNK", 4)  # ... chunks of 4, 4 and 1 ...
    four, _ = _decode(sam, True, precision, **kw)
    monkeypatch.setattr(fast_decode, "CHUNK", 10 ** 6)  # ... and one batch
    whole, whole_iou = _decode(sam, True, precision, **kw)
    assert chunked.shape == whole.shape == (B * rep, 1, 256, 256)
    assert not torch.equal(whole[0], whole[B])  # distinct rows: a dropped or repeated row would show
    tol = 0 if precision == "bf16" else 1e-4  # fp32: matmul blocking may differ with the row count
    assert (chunked - whole).abs().max().item() <= tol
    assert (four - whole).abs().max().item() <= tol
    assert (chunked_iou - whole_iou).abs().max().item() <= tol
