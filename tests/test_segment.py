"""segment.predict: per-part prompting with union, iterative clicks with logits fed back, embedding reuse."""

from __future__ import annotations

import numpy as np
import pytest

from sas_kit.data.phantom import make_phantom
from sas_kit.models import registry, segment

LITE = registry.MODELS["litemedsam"]


@pytest.fixture(scope="module")
def lite():
    return registry.load_model("litemedsam")


@pytest.fixture(scope="module")
def two_part(lite):
    """A phantom image with a second copy of its target pasted elsewhere: a two-part mask, encoded once."""
    image, mask, _ = make_phantom(1, seed=0)[0]  # target ≈ 5 % of the image
    image, mask = image.copy(), mask.copy()
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = (slice(y0, ys.max() + 1), slice(x0, xs.max() + 1))
    dy = 128 if y0 < 128 else -128
    dx = 128 if x0 < 128 else -128
    shifted = (slice(crop[0].start + dy, crop[0].stop + dy), slice(crop[1].start + dx, crop[1].stop + dx))
    image[shifted] = np.where(mask[crop], image[crop], image[shifted])
    mask[shifted] |= mask[crop]
    embedding, meta = registry.encode(lite, LITE, image)
    return image, mask, embedding, meta


def test_box_per_part_union_and_whole_target(lite, two_part, monkeypatch):
    image, mask, embedding, meta = two_part
    monkeypatch.setattr(registry, "encode", lambda *a, **k: pytest.fail("encoded an image that had an embedding"))
    pred, used = segment.predict(lite, LITE, image, mask, "box", embedding=embedding, meta=meta, return_prompts=True)
    assert pred.dtype == bool and pred.shape == mask.shape and len(used) == 2
    dice = 2 * (pred & mask).sum() / (pred.sum() + mask.sum())
    assert dice > 0.6
    whole, used1 = segment.predict(lite, LITE, image, mask, "box", embedding=embedding, meta=meta,
                                   per_component=False, return_prompts=True)
    assert len(used1) == 1 and not np.array_equal(whole, pred)


def test_clicks_feed_back_the_previous_logits(lite, two_part, monkeypatch):
    image, mask, embedding, meta = two_part
    calls = []
    real = registry.decode_batch

    def spy(*args, **kwargs):
        for row in kwargs["points"]:  # one row per part decoded in this batch
            calls.append((len(row), kwargs["mask_input"] is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "decode_batch", spy)
    pred, used = segment.predict(lite, LITE, image, mask, "3click", embedding=embedding, meta=meta, return_prompts=True)
    assert pred.shape == mask.shape and len(used) == 2
    for part in used:
        assert 1 <= len(part["points"]) <= 3 and part["labels"][0] == 1
    # per part: first decode has 1 point and no mask input, each later decode one more point and the logits
    first = [c for c in calls if c[0] == 1]
    assert len(first) == 2 and all(not m for _, m in first)
    assert all(m for n, m in calls if n > 1)


def test_bad_prompts(lite, two_part):
    image, mask, embedding, meta = two_part
    with pytest.raises(ValueError, match="empty"):
        segment.predict(lite, LITE, image, np.zeros_like(mask), "box", embedding=embedding, meta=meta)
    with pytest.raises(ValueError, match="unknown prompt"):
        segment.predict(lite, LITE, image, mask, "7click", embedding=embedding, meta=meta)
    with pytest.raises(ValueError, match="does not match"):
        segment.predict(lite, LITE, image[:100], mask[:100], "box", embedding=embedding, meta=meta)
    one = np.zeros_like(mask)
    one[40, 60] = True  # a 1-pixel target still gets a valid prompt and a mask of the right shape
    for prompt in ("box", "2click"):
        assert segment.predict(lite, LITE, image, one, prompt, embedding=embedding, meta=meta).shape == mask.shape


def test_click_session_prefixes_equal_separate_click_prompts(lite, two_part):
    sam, spec = lite, LITE
    image, mask, embedding, meta = two_part
    sequence = segment.predict_clicks(sam, spec, image, mask, 3, embedding=embedding, meta=meta)
    assert len(sequence) == 3
    for k in (1, 2, 3):
        alone = segment.predict(sam, spec, image, mask, f"{k}click", embedding=embedding, meta=meta)
        assert np.array_equal(sequence[k - 1], alone)


def test_batched_click_sessions_equal_part_by_part(lite, two_part):
    image, mask, embedding, meta = two_part
    parts = segment.prompts.components(mask)
    one_by_one = [segment.click_sessions(lite, LITE, [embedding], [meta], [p], [mask & ~p], [3])[0] for p in parts]
    together = segment.click_sessions(lite, LITE, [embedding] * len(parts), [meta] * len(parts), parts,
                                      [mask & ~p for p in parts], [3] * len(parts))
    for a, b in zip(one_by_one, together):
        assert a.points == b.points and a.labels == b.labels
        for pa, pb in zip(a.preds, b.preds):
            assert (pa != pb).mean() < 1e-3  # batched matmuls may round differently at a few boundary pixels
