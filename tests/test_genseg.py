"""GenSeg augmentation: mask conditioning, pair alignment, mask augmentation ranges, cache, params, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sas_kit.augment import genseg, pix2pix
from sas_kit.data import phantom

TINY = genseg.GenSegParams(size=32, steps=4, batch_size=2, ngf=4, ndf=4)


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("SAS_KIT_DEVICE", "cpu")  # determinism is promised on CPU


@pytest.fixture(scope="module")
def hypo_samples():
    """Phantoms whose target is darker than its background (so a trained generator must darken the mask)."""
    spec = phantom.PhantomSpec(size=64)
    return [(im, m) for im, m, rec in phantom.make_phantom(24, seed=0, spec=spec) if rec["echo"] == "hypo"]


@pytest.fixture(scope="module")
def trained(hypo_samples):
    """A small generator trained long enough (150 steps at 32², ~3 s) to learn 'target = darker'."""
    params = genseg.GenSegParams(size=32, steps=150, batch_size=4, ngf=8, ndf=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAS_KIT_DEVICE", "cpu")
        return genseg.train_generator(hypo_samples, params, seed=0, progress=False), params


def disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# (a) conditioning
def test_image_is_a_deterministic_function_of_the_mask(trained):
    G, _ = trained
    a, b = disk(64, 64, 32, 32, 12), disk(64, 64, 20, 44, 8)
    G.train()  # synthesize must switch dropout off itself
    img_a = genseg.synthesize(G, a)
    assert not G.training
    assert np.array_equal(img_a, genseg.synthesize(G, a))
    img_b = genseg.synthesize(G, b)
    assert img_a.shape == img_b.shape == (64, 64) and img_a.dtype == np.uint8
    assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() > 3


# (b) alignment: the target is dark where the returned mask says, and the returned mask made the image
def test_synthetic_target_is_where_the_mask_is(trained):
    G, _ = trained
    for cy, cx, r in [(32, 32, 10), (20, 42, 12), (45, 20, 8)]:
        m = disk(64, 64, cy, cx, r)
        img = genseg.synthesize(G, m).astype(float)
        assert img[m].mean() < img[~m].mean() - 8, (cy, cx, r)  # seed 0: 36-57 here; seeds 0-3: >= 13


def test_policy_pairs_are_aligned(trained, hypo_samples):
    G, params = trained
    policy = genseg.GenSegPolicy(G, params)
    assert policy.name == "genseg" and policy.params["size"] == 32
    image, mask = hypo_samples[0]
    contrasts = []
    for seed in range(6):
        out, out_mask, record = policy(image, mask, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8 and out_mask.dtype == bool
        assert np.array_equal(out_mask, genseg.augment_mask(mask, np.random.default_rng(seed), params))
        assert np.array_equal(out, genseg.synthesize(G, out_mask, image.shape))  # conditioned on the returned mask
        assert record["policy"] == "genseg" and record["synthetic"] is True
        assert record["mask_area"] == int(out_mask.sum())
        json.dumps(record)  # JSON-plain
        if out_mask.any() and not out_mask.all():
            contrasts.append(out[~out_mask].mean() - out[out_mask].mean())
    assert contrasts and min(contrasts) > 10
    rgb = np.repeat(image[..., None], 3, axis=2)
    out, out_mask, record = policy(rgb, mask, np.random.default_rng(0))
    assert out.shape == rgb.shape and record["channels"] == 3
    assert np.array_equal(out[..., 0], out[..., 2])


def test_policy_works_in_build_views(trained, hypo_samples):
    from sas_kit.experiment.embed_cache import build_views

    G, params = trained
    views = build_views(hypo_samples[:2], genseg.GenSegPolicy(G, params), views=2, seed=0)
    assert [v.view for v in views] == [0, 1, 0, 1]
    assert views[1].record["policy"] == "genseg" and views[1].mask.shape == hypo_samples[0][1].shape


# (c) mask augmentation
def test_augment_mask_ranges_and_determinism():
    params = genseg.GenSegParams()
    mask = disk(100, 120, 50, 60, 12)
    area = mask.sum()
    lo = params.scale_range[0] ** 2 / (1 + 2 * params.crop_pad) ** 2
    hi = params.scale_range[1] ** 2 / (1 - 2 * params.crop_pad) ** 2
    results = []
    for seed in range(40):
        out, rec = genseg.augment_mask(mask, np.random.default_rng(seed), params, return_record=True)
        assert out.shape == mask.shape and out.dtype == bool
        assert lo * 0.9 <= out.sum() / area <= hi * 1.1, (seed, out.sum() / area)
        assert abs(out.sum() / area - rec["area_factor"]) < 0.15  # nothing clipped: the warp's own area change
        ys, xs = np.nonzero(out)
        assert abs(ys.mean() - 49.5) < 0.25 * 100 and abs(xs.mean() - 59.5) < 0.25 * 120
        assert abs(rec["rotate_deg"]) <= 15 and abs(rec["shear_deg"]) <= 8
        assert all(0.8 <= s <= 1.2 for s in rec["scale_xy"]) and all(abs(t) <= 0.1 for t in rec["translate_xy"])
        assert all(abs(c) <= 0.1 for c in rec["crop_pad_ltrb"])
        assert np.array_equal(out, genseg.augment_mask(mask, np.random.default_rng(seed), params))
        results.append(out)
    assert len({r.tobytes() for r in results}) == len(results)
    flips = [genseg.augment_mask(mask, np.random.default_rng(s), params, True)[1]["flip"] for s in range(40)]
    assert 5 < sum(flips) < 35


def test_augment_mask_flip_and_identity():
    off = dict(crop_pad=0.0, scale_range=(1.0, 1.0), translate=0.0, rotate=0.0, shear=0.0)
    mask = disk(40, 50, 10, 12, 6)
    always = genseg.GenSegParams(flip_prob=1.0, **off)
    never = genseg.GenSegParams(flip_prob=0.0, **off)
    assert np.array_equal(genseg.augment_mask(mask, np.random.default_rng(0), always), mask[:, ::-1])
    assert np.array_equal(genseg.augment_mask(mask, np.random.default_rng(0), never), mask)


# (d) cache
def test_cache_hit_corrupt_and_mismatch(tmp_path, hypo_samples):
    samples = hypo_samples[:3]
    G1, rec1 = genseg.load_or_train(samples, TINY, seed=0, root=tmp_path, progress=False)
    assert rec1["cached"] is False and (tmp_path / f"{rec1['key']}.pt").exists()
    G2, rec2 = genseg.load_or_train(samples, TINY, seed=0, root=tmp_path, progress=False)
    assert rec2["cached"] is True and rec2["key"] == rec1["key"] and not G2.training
    assert same_weights(weights(G1), weights(G2))
    assert not list(tmp_path.glob("*.tmp"))

    path = tmp_path / f"{rec1['key']}.pt"
    path.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="not used"):
        G3, rec3 = genseg.load_or_train(samples, TINY, seed=0, root=tmp_path, progress=False)
    assert rec3["cached"] is False and same_weights(weights(G1), weights(G3))  # rebuilt, deterministically
    assert genseg.load_or_train(samples, TINY, seed=0, root=tmp_path, progress=False)[1]["cached"] is True

    # a file made for other params, placed under this key's name, is not used
    other = genseg.GenSegParams(size=32, steps=4, batch_size=2, ngf=4, ndf=4, lambda_l1=10.0)
    key_other = genseg.cache_key(samples, other, 0)
    (tmp_path / f"{key_other}.pt").write_bytes(path.read_bytes())
    with pytest.warns(RuntimeWarning, match="made for another key, params"):
        _, rec4 = genseg.load_or_train(samples, other, seed=0, root=tmp_path, progress=False)
    assert rec4["cached"] is False and rec4["key"] == key_other
    assert genseg.cache_key(samples, TINY, 1) != rec1["key"] != genseg.cache_key(samples[:2], TINY, 0)


# (e) params
@pytest.mark.parametrize("bad, match", [
    (dict(size=100), "power of two"), (dict(size=16), "power of two"), (dict(steps=0), "steps"), (dict(epochs=0), "epochs"),
    (dict(lr=0.0), "lr"), (dict(betas=(0.5, 1.5)), "betas"), (dict(lambda_l1=-1.0), "lambda_l1"),
    (dict(ngf=0), "ngf"), (dict(flip_prob=1.5), "flip_prob"), (dict(crop_pad=0.6), "crop_pad"),
    (dict(scale_range=(1.2, 0.8)), "scale_range"), (dict(scale_range=(0.0, 1.0)), "scale_range"),
    (dict(translate=-0.1), "translate"), (dict(rotate=200.0), "rotate"), (dict(shear=90.0), "shear"),
])
def test_invalid_params(bad, match):
    with pytest.raises(ValueError, match=match):
        genseg.GenSegParams(**bad)


def test_steps_follow_epochs():
    """A generator trains a fixed number of epochs (GenSeg's and pix2pix's convention): steps grow with n."""
    p = genseg.GenSegParams()
    assert [p.n_steps(n) for n in (100, 40, 10, 3, 1)] == [1500, 600, 150, 60, 60]  # batch min(4, n)
    assert genseg.GenSegParams(epochs=2.5, batch_size=4).n_steps(10) == 7  # ceil(6.25)
    assert genseg.GenSegParams(steps=5).n_steps(1000) == 5  # an explicit step count wins


def test_bad_samples():
    with pytest.raises(ValueError, match="at least one"):
        genseg.train_generator([], TINY)
    with pytest.raises(ValueError, match="does not match"):
        genseg.train_generator([(np.zeros((8, 8), np.uint8), np.zeros((9, 8), bool))], TINY)


# (f) determinism
def test_training_is_deterministic(hypo_samples):
    samples = hypo_samples[:3]
    state = torch.get_rng_state()
    a = weights(genseg.train_generator(samples, TINY, seed=0, progress=False))
    assert torch.equal(state, torch.get_rng_state())  # the caller's torch RNG is untouched
    b = weights(genseg.train_generator(samples, TINY, seed=0, progress=False))
    c = weights(genseg.train_generator(samples, TINY, seed=1, progress=False))
    assert same_weights(a, b) and not same_weights(a, c)


def test_low_data_sizes_and_table(tmp_data_root, monkeypatch):
    from sas_kit.experiment.low_data import curve_sizes, curve_table
    from sas_kit.experiment.protocol import make_plan

    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    plan = make_plan("quick", data="phantom", arms=("none", "sas", "genseg"))  # quick: low_data (3,), 6 images
    assert curve_sizes(plan) == [3, 6] and plan.train_images == 6
    small = plan.curve_tasks()
    assert sorted(t.spec.arm for t in small) == ["genseg", "none", "sas"] and {t.spec.train_limit for t in small} == {3}
    assert all(t.score_on == (plan.internal,) for t in small)
    assert not {t.spec.data_key for t in small} & {t.spec.data_key for t in plan.main_tasks()}  # 3 images, not 6
    assert not make_plan("quick", data="phantom", arms=("none", "sas")).curve_tasks()  # the curve comes with genseg
    import pandas as pd

    rows = pd.DataFrame({"n_train": [10] * 4 + [20] * 4, "arm": ["none", "none", "sas", "sas"] * 2,
                         "prompt": "box", "dice": [0.5, 0.7, 0.6, 0.8, 0.6, 0.8, 0.7, 0.9]})
    table = curve_table(rows, n_boot=200)
    assert list(table.n_images) == [2] * 4
    assert table.set_index(["n_train", "arm"]).dice.to_dict() == pytest.approx(
        {(10, "none"): 0.6, (10, "sas"): 0.7, (20, "none"): 0.7, (20, "sas"): 0.8})
    assert (table.ci_low <= table.dice).all() and (table.dice <= table.ci_high).all()


def test_the_policy_repr_names_its_generator_so_runs_are_reused_only_with_the_same_one():
    generator = pix2pix.UNetGenerator(32, 1, 1, 4, False)
    a = genseg.GenSegPolicy(generator, genseg.GenSegParams(size=32), key="abc")
    b = genseg.GenSegPolicy(generator, genseg.GenSegParams(size=32), key="xyz")
    assert "abc" in repr(a) and repr(a) != repr(b)
