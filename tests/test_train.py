"""Fine-tuning: one decoder epoch on phantoms, exact resume, determinism, embedding cache, checkpoints."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sas_kit.data.phantom import make_phantom
from sas_kit.digest import pixel_key
from sas_kit.experiment.embed_cache import EmbeddingCache, build_views
from sas_kit.digest import data_key
from sas_kit.experiment.run import RunSpec
from sas_kit.experiment.train import epoch_views, train_arrays
from sas_kit.experiment.train_step import dice_bce_loss, draw_prompts, lowres_target, step_loss
from sas_kit.models import precision, registry

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def data():
    pairs = [(img, m) for img, m, _ in make_phantom(4, seed=11)]
    return pairs[:3], pairs[3:]


@pytest.fixture(scope="module")
def cache():
    """One in-memory cache for the module: each phantom is encoded once for all tests."""
    return EmbeddingCache("litemedsam")


def config(train=None, val=None, **kw) -> RunSpec:
    """A run spec for (train, val) phantom arrays (the module's ``data`` by default)."""
    pairs = [(img, m) for img, m, _ in make_phantom(4, seed=11)]
    train, val = (pairs[:3] if train is None else train), (pairs[3:] if val is None else val)
    base = dict(epochs=1, views=1, batch_size=2, lr=3e-4, click_fraction=0.5, max_clicks=2, seed=0,
                device="cpu", precision="fp32", data_key=data_key(train, val))
    return RunSpec.build(**{**base, **kw})


def train(spec, data, out, **kw):
    return train_arrays(spec, *data, out, progress=False, disk_cache=False, **kw)


@pytest.fixture(scope="module")
def run_a(data, cache, tmp_path_factory):
    """An uninterrupted 2-epoch run."""
    return train(config(epochs=2), data, tmp_path_factory.mktemp("a"), cache=cache)


@pytest.fixture(scope="module")
def run_c(data, cache, tmp_path_factory):
    """A 1-epoch run in its own folder (resumed to 2 epochs by a test)."""
    return train(config(), data, tmp_path_factory.mktemp("c"), cache=cache)


def test_one_epoch_decoder_finetune(run_c):
    assert run_c.last.exists() and run_c.best.exists()
    assert len(run_c.train_loss) == 1 and np.isfinite(run_c.train_loss[0])
    assert 0.0 <= run_c.val_dice[0] <= 1.0 and 0.0 <= run_c.val_dice_initial <= 1.0
    assert run_c.steps == 2 and run_c.samples == 3  # 3 images x 1 view / batch 2: a full batch and a single
    state = torch.load(run_c.last, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["spec"]["views"] == 1 and state["model_name"] == "litemedsam"
    assert state["model"] and not any(k.startswith("image_encoder.") for k in state["model"])
    assert any(k.startswith("mask_decoder.") for k in state["model"])
    assert not list(run_c.out.glob("*.tmp"))  # atomic writes leave no temporaries


def test_resume_equals_uninterrupted(run_a, run_c, data, cache, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(run_c.out, out)  # leave run_c's folder as it was for the other tests
    resumed = train(config(epochs=2), data, out, cache=cache, resume=True)
    assert resumed.resumed_from == 1 and resumed.steps == 2
    assert resumed.train_loss == run_a.train_loss
    assert resumed.val_dice == run_a.val_dice
    a = torch.load(run_a.last, weights_only=True)["model"]
    b = torch.load(resumed.last, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = train(config(epochs=2), data, out, cache=cache, resume=True)
    assert again.steps == 0 and again.train_loss == run_a.train_loss  # finished runs are not redone
    with pytest.raises(ValueError, match="lr"):
        train(config(epochs=3, lr=1e-3), data, out, cache=cache, resume=True)
    with pytest.raises(ValueError, match="data key"):  # other images than the spec names
        train(config(epochs=2), (data[0][:2], data[1]), out, cache=cache, resume=True)


def test_same_seed_same_losses_and_dice(run_a, run_c):
    # two separate runs with seed 0 (one stopped after epoch 1): identical first epochs, to the bit
    assert run_c.train_loss[0] == run_a.train_loss[0] and run_c.val_dice[0] == run_a.val_dice[0]
    assert run_c.val_dice_initial == run_a.val_dice_initial
    assert run_c.encoder_calls == 0 or run_a.encoder_calls == 0  # the second run took everything from the cache


@pytest.fixture(scope="module")
def base_model():
    return registry.load_model("litemedsam")


@pytest.fixture(scope="module")
def tuned_model(run_a):
    return registry.load_model("litemedsam", checkpoint=run_a.last)


def test_checkpoint_loads_and_changes_predictions(run_a, data, cache, base_model, tuned_model):
    spec = registry.get_spec("litemedsam")
    image, mask = data[1][0]
    embedding, meta = cache.get(base_model, spec, image)
    box = np.array([[60, 60, 180, 180]], np.float32)
    with torch.no_grad():
        before = registry.decode(base_model, spec, embedding, meta, boxes=box)[2]
        after = registry.decode(tuned_model, spec, embedding, meta, boxes=box)[2]
    assert (after - before).abs().max() > 1e-3
    best = torch.load(run_a.best, weights_only=True)  # best.pt: same layout, no optimiser state
    assert best["model"].keys() == torch.load(run_a.last, weights_only=True)["model"].keys()
    assert "optimizer" not in best and best["epoch"] == run_a.best_epoch


def test_decoder_mode_leaves_encoder_unchanged(base_model, tuned_model):
    base, tuned = base_model.image_encoder.state_dict(), tuned_model.image_encoder.state_dict()
    assert all(torch.equal(base[k], tuned[k]) for k in base)
    assert any(not torch.equal(p, q) for p, q in zip(base_model.mask_decoder.parameters(),
                                                      tuned_model.mask_decoder.parameters()))


def _fake_encoder(monkeypatch) -> list:
    calls = []

    def encode(sam, spec, image, precision="fp32"):
        calls.append(pixel_key(image))
        return torch.zeros(1, 256, 64, 64), registry.preprocess(spec, image)[1]

    monkeypatch.setattr(registry, "encode", encode)
    return calls


def flip(image, mask, rng):
    """A policy with distinct views: a flip plus a seeded brightness shift."""
    shift = int(rng.integers(1, 40))
    return np.clip(image[:, ::-1].astype(int) + shift, 0, 255).astype(np.uint8), mask[:, ::-1], {"shift": shift}


def test_cache_encodes_each_view_once(data, monkeypatch, tmp_path):
    calls = _fake_encoder(monkeypatch)
    train, val = data[0][:1], data[1][:1]
    disk = tmp_path / "emb"
    first = EmbeddingCache("litemedsam", root=disk)
    cfg = config(train, val, epochs=2, views=2, click_fraction=0.0, batch_size=4)
    r = train_arrays(cfg, train, val, tmp_path / "r1", cache=first, policy_fn=flip, progress=False)
    assert r.encoder_calls == len(calls) == 1 * 2 + 1  # every view and val image once, not once per epoch
    assert len(set(calls)) == len(calls) and r.steps == 2 and len(first) == 3
    views = build_views(train, flip, 2, seed=0) + build_views(val, "none", 1)
    assert first.fill(None, "litemedsam", views, progress=False) == 0  # all in memory already
    again = EmbeddingCache("litemedsam", root=disk)  # a new process reads the files instead
    assert again.fill(None, "litemedsam", views, progress=False) == 0 and again.disk_hits == 3
    same = build_views(train, "none", 3)  # policy none: identical views share one embedding
    fresh = EmbeddingCache("litemedsam")
    assert fresh.fill(None, "litemedsam", same, progress=False) == 1 and len(calls) == 4


def test_build_views_original_first_and_seeded(data):
    train, _ = data
    views = build_views(train, "sas", 3, seed=5)
    assert [(v.sample, v.view) for v in views[:3]] == [(0, 0), (0, 1), (0, 2)]
    assert np.array_equal(views[0].image, train[0][0]) and np.array_equal(views[0].mask, train[0][1])
    assert len({v.key for v in views}) == len(views)  # distinct views (redrawn when SAS drew "not applied")
    assert all(not v.record["duplicate"] for v in views if v.view)
    again = build_views(train[:2], "sas", 3, seed=5)  # per-view streams: independent of the other samples
    assert [v.key for v in again] == [v.key for v in views[:6]]
    assert [v.key for v in build_views(train[:1], "sas", 3, seed=6)][1:] != [v.key for v in views[1:3]]
    with pytest.raises(ValueError, match="sample 0"):
        build_views([(train[0][0], train[0][1][:10])], "none", 1)


def _draws_three_clicks(seed: int) -> bool:
    rng = np.random.default_rng(seed)
    rng.random()  # box-or-click draw (one part, so no part draw before it)
    return int(rng.integers(1, 4)) == 3


def test_click_steps_feed_back_previous_logits(base_model, data, monkeypatch):
    calls = []
    decode = registry.decode_batch

    def spy(sam, embeddings, scales, **kw):
        calls.append({"points": None if kw.get("points") is None else np.asarray(kw["points"]).shape[1],
                      "boxes": kw.get("boxes") is not None, "mask_input": kw.get("mask_input") is not None,
                      "grad": torch.is_grad_enabled()})
        return decode(sam, embeddings, scales, **kw)

    monkeypatch.setattr(registry, "decode_batch", spy)
    spec = registry.get_spec("litemedsam")
    image, mask = data[0][0]
    pair = (torch.zeros(1, 256, 64, 64), registry.preprocess(spec, image)[1])
    seed = next(s for s in range(100) if _draws_three_clicks(s))
    loss = step_loss(base_model, spec, [pair], [mask], np.random.default_rng(seed), click_fraction=1.0, max_clicks=3)
    assert loss.requires_grad
    assert [c["points"] for c in calls] == [1, 2, 3] and not any(c["boxes"] for c in calls)
    assert [c["mask_input"] for c in calls] == [False, True, True]  # the previous logits are fed back
    assert [c["grad"] for c in calls] == [False, False, True]  # only the last decode is trained
    calls.clear()
    step_loss(base_model, spec, [pair], [mask], np.random.default_rng(0), click_fraction=0.0)
    assert len(calls) == 1 and calls[0]["boxes"] and calls[0]["points"] is None


def test_batch_decodes_equal_prompts_together(base_model, data, monkeypatch):
    spec = registry.get_spec("litemedsam")
    pairs = [(torch.zeros(1, 256, 64, 64), registry.preprocess(spec, img)[1]) for img, _ in data[0]]
    masks = [m for _, m in data[0]]
    drawn = draw_prompts(base_model, spec, pairs, masks, np.random.default_rng(0), 0.0, 3, 0.05)
    assert all(p.box is not None for p, _, _ in drawn)
    sizes = []
    decode = registry.decode_batch
    monkeypatch.setattr(registry, "decode_batch", lambda sam, e, s, **kw: sizes.append(e.shape[0]) or decode(sam, e, s, **kw))
    step_loss(base_model, spec, pairs, masks, np.random.default_rng(0), click_fraction=0.0)
    assert sizes == [len(pairs)]  # all boxes in one decoder call


def test_lowres_target_keeps_tiny_targets_and_marks_padding():
    spec = registry.get_spec("litemedsam")
    mask = np.zeros((300, 600), bool)
    mask[100:101, 200:201] = True  # one pixel: half a low-res pixel after resizing by 256/600
    meta = registry.preprocess(spec, np.zeros((300, 600), np.uint8))[1]
    target, valid = lowres_target(spec, meta, mask)
    assert target.shape == valid.shape == (1, 1, 256, 256)
    assert 0 < float(target.sum()) < 1.0  # a soft trace, not erased by thresholding
    assert float(valid[..., :128, :].min()) == 1.0 and float(valid[..., 129:, :].max()) == 0.0


def test_full_mode_draws_fresh_views_each_epoch(data):
    cfg = config(mode="full", arm="sas", views=2, seed=0)
    one, two = epoch_views(cfg, data[0], 1), epoch_views(cfg, data[0], 2)
    assert [v.key for v in one if v.view == 0] == [v.key for v in two if v.view == 0]  # originals kept
    assert [v.key for v in one if v.view] != [v.key for v in two if v.view]  # augmented views redrawn
    cfg = config(mode="decoder", arm="sas", views=2, seed=0)  # decoder mode: the same cached views
    assert [v.key for v in epoch_views(cfg, data[0], 1)] == [v.key for v in epoch_views(cfg, data[0], 2)]


def test_bf16_training_and_evaluation_share_one_precision(data, tmp_path):
    cfg = config(precision="bf16", click_fraction=0.0)
    with pytest.raises(ValueError, match="fp32"):  # an fp32 cache cannot serve a bf16 run
        train(cfg, data, tmp_path / "bf16", cache=EmbeddingCache("litemedsam", precision="fp32"))
    cfg = config(data[0][:2], precision="bf16", click_fraction=0.0)
    result = train(cfg, (data[0][:2], data[1]), tmp_path / "bf16b", cache=EmbeddingCache("litemedsam", precision="bf16"))
    assert result.precision == "bf16" and np.isfinite(result.train_loss[0]) and result.samples == 2


def test_dice_bce_loss():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    target[..., 2:6, 2:6] = True
    good = torch.where(target, 20.0, -20.0)
    assert float(dice_bce_loss(good, target)) < 1e-3
    assert float(dice_bce_loss(-good, target)) > 1.5
    other = torch.zeros_like(target)
    other[..., 0, :] = True
    spurious = good.clone()
    spurious[..., 0, :] = 20.0  # predicting another part is not an error when that part is ignored
    assert float(dice_bce_loss(spurious, target, weight=~other)) < 1e-3 < float(dice_bce_loss(spurious, target))


def test_cli_train_prints_epochs(monkeypatch, tmp_data_root, tmp_path, capsys):
    _fake_encoder(monkeypatch)
    from sas_kit.cli import main

    out = tmp_path / "cli"
    args = ["train", "--data", "phantom", "--epochs", "1", "--limit", "1", "--val-limit", "1", "--views", "1",
            "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "epoch 1: train loss" in text and str(out / "last.pt") in text
    assert main(args[:-2] + ["--epochs", "1", "--resume", "--device", "cpu"]) == 0
    assert main(["train", "--data", "phantom", "--out", str(out), "--lr", "1", "--resume", "--epochs", "2"]) == 2


_HEAP_PROBE = """
import ctypes, numpy as np, psutil
from sas_kit.models import precision
rss = lambda: psutil.Process().memory_info().rss / 2**20
libc = ctypes.CDLL("libc.so.6")
big = np.ones(30 * 2**20, np.uint8); del big  # glibc's default then serves blocks < 30 MiB from the heap
before = rss()
blocks, pins = [], []
for _ in range(40):  # 2 MiB blocks, each followed by a small live malloc block (no trimming from the top)
    blocks.append(np.ones(2 * 2**20, np.uint8)); pins.append(libc.malloc(4096))
del blocks
print(rss() - before)
"""


@pytest.mark.parametrize("threshold, retained", [("0", (60, 200)), ("1048576", (0, 20))])
def test_bounded_heap_returns_freed_tensors_to_the_os(threshold, retained):
    """With the kit's mmap threshold (set on import of sas_kit.models.precision) freed 2 MiB blocks leave the
    process; with glibc's dynamic default (0: left alone) they stay resident: the working set the first
    fine-tuning run used to keep."""
    import os
    import subprocess
    import sys

    if precision._LIBC is None:
        pytest.skip("not glibc")
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "SAS_KIT_MMAP_THRESHOLD": threshold}).stdout
    assert retained[0] <= float(out.split()[-1]) < retained[1]
    assert isinstance(precision.trim_heap(), bool)


def test_full_size_loss_is_taken_at_the_original_size(base_model, data, monkeypatch):
    """loss_size="full": the decoder's logits are upsampled by the model's postprocess and compared with the mask
    at its own size; "low" never upsamples. Both give a finite loss with a gradient; a bad name is refused."""
    spec = registry.get_spec("litemedsam")
    image, mask = data[0][0]
    pair = (torch.zeros(1, 256, 64, 64), registry.preprocess(spec, image)[1])
    shapes = []
    post = registry.postprocess
    monkeypatch.setattr(registry, "postprocess", lambda s, low, meta: shapes.append(tuple(meta["original_hw"])) or post(s, low, meta))
    step_loss(base_model, spec, [pair], [mask], np.random.default_rng(0), click_fraction=0.0)
    assert shapes == []
    full = step_loss(base_model, spec, [pair], [mask], np.random.default_rng(0), click_fraction=0.0, loss_size="full")
    assert shapes == [mask.shape] and full.requires_grad and torch.isfinite(full)
    with pytest.raises(ValueError, match="loss_size must be one of"):
        step_loss(base_model, spec, [pair], [mask], np.random.default_rng(0), loss_size="half")
