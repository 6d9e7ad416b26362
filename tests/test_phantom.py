"""The phantom generator: deterministic, exact masks, sizes from large to very small."""

import numpy as np

from sas_kit.data.phantom import PhantomSpec, make_phantom, phantom_sample


def test_same_seed_same_pixels_and_independent_samples():
    a = phantom_sample(3, seed=1)
    b = make_phantom(5, seed=1)[3]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(phantom_sample(3, seed=2)[0], a[0])


def test_images_and_masks_are_well_formed():
    for image, mask, record in make_phantom(12, seed=0):
        assert image.dtype == np.uint8 and image.shape == (256, 256)
        assert mask.dtype == bool and mask.any()
        assert abs(record["area_fraction"] - mask.mean()) < 1e-9
        assert image.std() > 10  # speckle, not a flat field


def test_target_contrast_follows_its_echogenicity():
    for image, mask, record in make_phantom(20, seed=0):
        if mask.sum() < 200:
            continue
        inside, outside = image[mask].mean(), image[~mask].mean()
        assert (inside < outside) if record["echo"] == "hypo" else (inside > outside)


def test_sizes_span_small_to_large():
    fractions = [r["area_fraction"] for _, _, r in make_phantom(60, seed=0)]
    assert min(fractions) < 0.01 and max(fractions) > 0.1


def test_other_sizes_work():
    image, mask, _ = phantom_sample(0, spec=PhantomSpec(size=96))
    assert image.shape == mask.shape == (96, 96)
