"""The shared persistent stores (embedding cache, atomic files) under concurrent and killed writers."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from sas_kit import files
from sas_kit.data.phantom import make_phantom
from sas_kit.digest import pixel_key
from sas_kit.experiment.embed_cache import EmbeddingCache
from sas_kit.models import registry


ROOT = Path(__file__).resolve().parents[1]
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX-only")


def _images(n: int = 2) -> list:
    return [image for image, _, _ in make_phantom(n, seed=5)]


@contextmanager
def one_thread():
    """Encode with one torch thread, as the worker processes do: equal embeddings to the bit, and two
    workers on a small machine are not oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return registry.load_model("litemedsam", device="cpu")


@pytest.fixture(scope="module")
def reference(model):
    """In-memory encodings of the phantom images (no disk)."""
    cache = EmbeddingCache("litemedsam")
    spec = registry.get_spec("litemedsam")
    with one_thread():
        return {pixel_key(img): cache.get(model, spec, img)[0] for img in _images()}


# ----------------------------------------------------------------------------- 1. threads, one path

def _hammer(path: Path, objects: list, write, read, rounds: int, equal) -> None:
    """``len(objects)`` threads write ``path`` at once (a barrier per round) while a reader loads it."""
    n = len(objects)
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    seen = []
    done = threading.Event()

    def writer(obj):
        try:
            for _ in range(rounds):
                barrier.wait(timeout=30)
                write(path, obj)
        except BaseException as err:  # noqa: BLE001 - collected and reported below
            errors.append(err)
            barrier.abort()

    def reader():
        while not done.is_set():
            try:
                got = read(path)
            except FileNotFoundError:
                continue
            except BaseException as err:  # noqa: BLE001 - a half-written file was visible
                errors.append(err)
                return
            if not any(equal(got, obj) for obj in objects):
                errors.append(AssertionError(f"{path} held none of the written objects"))
                return
            seen.append(1)

    threads = [threading.Thread(target=writer, args=(obj,)) for obj in objects]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    watcher.join(60)
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
    final = read(path)
    assert any(equal(final, obj) for obj in objects)
    assert not list(path.parent.glob("*.tmp")), "temporaries left behind"


def test_threads_torch_save_same_path(tmp_path):
    objects = [{"i": i, "embedding": torch.full((64, 1024), float(i))} for i in range(8)]
    _hammer(tmp_path / "k.pt", objects, files.torch_save,
            lambda p: torch.load(p, map_location="cpu", weights_only=True), rounds=25,
            equal=lambda a, b: a["i"] == b["i"] and torch.equal(a["embedding"], b["embedding"]))


def test_threads_write_text_same_path(tmp_path):
    objects = [f"{i}:" + str(i) * 200_000 for i in range(8)]
    _hammer(tmp_path / "k.txt", objects, files.write_text, lambda p: p.read_text(), rounds=40,
            equal=lambda a, b: a == b)


def test_atomic_path_cleans_up_on_error(tmp_path):
    target = tmp_path / "x.txt"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- 2. processes, one cache

def _fill_child(root: str) -> int:
    """A spawn-started worker: encode the phantoms into the cache at ``root``; return its encoder calls."""
    torch.set_num_threads(1)
    sam = registry.load_model("litemedsam", device="cpu")
    cache = EmbeddingCache("litemedsam", root=root, memory=False)
    cache.fill(sam, registry.get_spec("litemedsam"), _images(), progress=False)
    return cache.encoder_calls


def test_two_processes_fill_one_cache(tmp_path, reference):
    root = tmp_path / "emb"
    with mp.get_context("spawn").Pool(2) as pool:
        results = [pool.apply_async(_fill_child, (str(root),)) for _ in range(2)]
        calls = [r.get(timeout=180) for r in results]
    assert sum(calls) >= len(reference)  # everything was encoded (some of it by both workers at once)
    cache = EmbeddingCache("litemedsam", root=root)
    entries = sorted(cache.root.glob("*.pt"))
    assert {p.stem for p in entries} == set(reference)
    for p in entries:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        assert obj["model"] == "litemedsam" and torch.equal(obj["embedding"], reference[p.stem])
    for key, want in reference.items():
        got, meta = cache.get(None, None, None, key=key)  # a disk hit: no model needed
        assert torch.equal(got, want) and meta
    assert cache.encoder_calls == 0 and cache.disk_hits == len(reference)
    assert not list(cache.root.glob("*.tmp"))


# ----------------------------------------------------------------------------- 3. a writer killed mid-write

HALF_THEN_SIGKILL = """
import os, signal, sys, torch
from sas_kit import files
real_save = torch.save
def half_then_die(obj, f, *args, **kwargs):  # write the whole file, cut it in half, die before the rename
    real_save(obj, f, *args, **kwargs)
    with open(f, "r+b") as handle:
        handle.truncate(os.path.getsize(f) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = half_then_die
files.torch_save(sys.argv[1], {"model": "litemedsam", "precision": "fp32",
                               "embedding": torch.randn(1, 256, 64, 64), "meta": {}})
"""

WRITE_FOREVER = """
import sys
from sas_kit import files
text = "x" * (64 << 20)
while True:
    files.write_text(sys.argv[1], text)
"""


def _child(code: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env)


@POSIX
def test_killed_writer_leaves_no_entry_and_cache_recovers(tmp_path, model, reference):
    image = _images(1)[0]
    key = pixel_key(image)
    cache = EmbeddingCache("litemedsam", root=tmp_path / "emb")
    entry = cache.root / f"{key}.pt"
    assert _child(HALF_THEN_SIGKILL, entry).wait(120) == -signal.SIGKILL
    assert not entry.exists() and image not in cache  # no entry, not even a partial one
    strays = list(cache.root.glob("*.tmp"))
    assert len(strays) == 1 and strays[0].stat().st_size > 0  # the half-written temporary
    past = time.time() - 2 * 3600
    os.utime(strays[0], (past, past))  # as if the writer had been killed two hours ago

    spec = registry.get_spec("litemedsam")
    with one_thread():
        embedding, _ = cache.get(model, spec, image)
    assert cache.encoder_calls == 1 and torch.equal(embedding, reference[key])
    obj = torch.load(entry, map_location="cpu", weights_only=True)
    assert torch.equal(obj["embedding"], reference[key])
    assert not strays[0].exists()  # the first save in the folder swept the old stray temporary
    again = EmbeddingCache("litemedsam", root=tmp_path / "emb", memory=False)
    assert torch.equal(again.get(model, spec, image)[0], reference[key]) and again.encoder_calls == 0


@POSIX
def test_sigkill_during_a_large_write(tmp_path):
    target = tmp_path / "big.txt"
    files.write_text(target, "old")
    child = _child(WRITE_FOREVER, target)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(p.stat().st_size > 0 for p in tmp_path.glob("*.tmp")):
            time.sleep(0.001)
    finally:
        child.kill()  # SIGKILL, mid-write (or between two writes)
        child.wait(30)
    text = target.read_text()
    assert text == "old" or text == "x" * (64 << 20)  # whole: the old file or one new one, never a prefix
    assert all(p.name.startswith("big.txt.") for p in tmp_path.glob("*.tmp"))  # only temporaries are partial


def test_corrupt_entry_still_raises(tmp_path):
    cache = EmbeddingCache("litemedsam", root=tmp_path / "emb")
    key = "0" * 32
    cache.root.mkdir(parents=True)
    (cache.root / f"{key}.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(ValueError, match="delete it"):
        cache.get(None, None, None, key=key)


def test_sweep_temps_removes_only_old_temporaries(tmp_path):
    old, new, entry = tmp_path / "a.pt.1-2-x.tmp", tmp_path / "b.pt.1-2-y.tmp", tmp_path / "c.pt"
    for p in (old, new, entry):
        p.write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    os.utime(entry, (past, past))
    assert files.sweep_temps(tmp_path, once=False) == 1
    assert not old.exists() and new.exists() and entry.exists()
    assert files.sweep_temps(tmp_path / "missing", once=False) == 0


# ----------------------------------------------------------------------------- 4. the plan's encode stage

def test_plan_encode_stage_encodes_each_test_image_once(tmp_data_root, monkeypatch):
    """run_plan encodes the plan's non-empty test images in shares before any run: the shares are disjoint, together
    they cover every such image (one encoder call each), a second pass encodes nothing, and scoring then finds every
    embedding stored."""
    from sas_kit.data.datasets import to_arrays
    from sas_kit.experiment import encode_stage as executor
    from sas_kit.experiment.protocol import load_tests, make_plan

    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    plan = make_plan("quick", arms=("zero_shot",), seeds=(0,), precision="fp32")
    assert executor.shares_embeddings(plan)
    images = [image for exs in load_tests(plan.tests, plan.internal).values()
              for image, mask in map(to_arrays, exs) if mask.any()]
    keys = {pixel_key(im) for im in images}
    assert len(keys) >= 4
    with one_thread():
        calls = [executor.encode_share(plan, i, 3, progress=False) for i in range(3)]
        assert sum(calls) == len(keys) and min(calls) >= 1  # disjoint shares, each image once
        assert [executor.encode_share(plan, i, 3, progress=False) for i in range(3)] == [0, 0, 0]
    cache = EmbeddingCache("litemedsam", root=True, precision="fp32")
    assert all(im in cache for im in images)
