"""Simulated prompts: boxes with jitter and clipping, first and corrective clicks, connected parts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sas_kit.models import prompts


def _rect(h=40, w=60, y0=10, y1=20, x0=5, x1=30):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_tight_box_and_empty_mask():
    np.testing.assert_array_equal(prompts.box_from_mask(_rect()), [5, 10, 29, 19])
    with pytest.raises(ValueError, match="empty mask"):
        prompts.box_from_mask(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="2-D"):
        prompts.box_from_mask(np.ones((2, 5, 5), bool))


def test_jitter_is_bounded_by_box_size_seeded_and_clipped():
    m = _rect()
    boxes = np.array([prompts.box_from_mask(m, jitter=0.1, rng=np.random.default_rng(s)) for s in range(200)])
    tight = np.array([5, 10, 29, 19])
    assert np.abs(boxes - tight).max() <= 0.1 * 25 + 1e-9  # box width 25 bounds every side's move
    assert np.abs(boxes - tight).max() > 1  # and the jitter does move the box
    np.testing.assert_array_equal(prompts.box_from_mask(m, 0.1, np.random.default_rng(1)),
                                  prompts.box_from_mask(m, 0.1, np.random.default_rng(1)))
    corner = _rect(y0=0, y1=3, x0=57, x1=60)  # target in the top-right corner: jitter pushes the box out
    for s in range(50):
        x0, y0, x1, y1 = prompts.box_from_mask(corner, jitter=1.0, rng=np.random.default_rng(s))
        assert 0 <= x0 <= x1 <= 59 and 0 <= y0 <= y1 <= 39


def test_out_of_range_box_is_clipped_and_ordered():
    np.testing.assert_array_equal(prompts.clip_box([-10, 300, 500, -5], (100, 200)), [0, 0, 199, 99])


def test_one_pixel_target():
    m = np.zeros((30, 30), bool)
    m[7, 21] = True
    np.testing.assert_array_equal(prompts.box_from_mask(m), [21, 7, 21, 7])
    assert prompts.first_click(m) == (21, 7)
    assert prompts.next_click(m, np.zeros_like(m)) == ((21, 7), 1)
    assert prompts.next_click(m, m.copy()) is None
    assert [c.sum() for c in prompts.components(m)] == [1]
    x0, y0, x1, y1 = prompts.box_from_mask(m, jitter=0.5, rng=np.random.default_rng(0))
    assert x0 <= x1 and y0 <= y1


def test_first_click_is_the_deepest_point():
    m = _rect(h=50, w=50, y0=10, y1=31, x0=10, x1=41)  # 21 rows x 31 cols: centre row 20
    x, y = prompts.first_click(m)
    assert y == 20 and 20 <= x <= 30
    with pytest.raises(ValueError, match="empty mask"):
        prompts.first_click(np.zeros((4, 4)))


def test_next_click_targets_the_largest_error_region():
    gt = _rect(h=60, w=60, y0=10, y1=40, x0=10, x1=40)
    pred = gt.copy()
    pred[10:40, 30:40] = False  # 300 missed pixels
    pred[50:55, 50:55] = True  # 25 spurious pixels
    (x, y), label = prompts.next_click(gt, pred)
    assert label == 1 and gt[y, x] and not pred[y, x]
    pred2 = gt.copy()
    pred2[42:60, 0:60] = True  # a large false positive band
    (x, y), label = prompts.next_click(gt, pred2)
    assert label == 0 and pred2[y, x] and not gt[y, x]
    # ignored pixels (another part of the target) are not errors
    assert prompts.next_click(gt, pred2, ignore=pred2 & ~gt) is None
    with pytest.raises(ValueError, match="shape"):
        prompts.next_click(gt, pred[:10])


def test_components_largest_first_with_8_connectivity():
    m = np.zeros((20, 20), bool)
    m[1:4, 1:4] = True  # 9 px
    m[4, 4] = True  # touches diagonally: same part
    m[10:16, 10:16] = True  # 36 px
    m[0, 19] = True  # 1 px
    parts = prompts.components(m)
    assert [p.sum() for p in parts] == [36, 10, 1]
    assert np.array_equal(np.logical_or.reduce(parts), m)
    assert [p.sum() for p in prompts.components(m, min_pixels=2)] == [36, 10]
    assert prompts.components(np.zeros((3, 3))) == []


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_clicks_fall_on_the_right_pixels_for_random_masks(seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((24, 24)) < rng.uniform(0.05, 0.6)
    if not gt.any():
        gt[rng.integers(24), rng.integers(24)] = True
    x, y = prompts.first_click(gt)
    assert gt[y, x]
    pred = rng.random((24, 24)) < 0.3
    click = prompts.next_click(gt, pred)
    if click is None:
        assert np.array_equal(gt, pred)
    else:
        (x, y), label = click
        assert gt[y, x] != pred[y, x] and label == int(gt[y, x])
