"""The try-the-model session: one encode per image and distinct encoder, every model answers each prompt."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sas_kit.data.phantom import make_phantom
from sas_kit.experiment import metrics
from sas_kit.report import try_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A decoder-only 'fine-tuned' checkpoint: the base decoder perturbed (so its masks differ)."""
    from sas_kit.models import registry

    base = registry.load_model("litemedsam")
    g = torch.Generator().manual_seed(0)
    state = {f"mask_decoder.{k}": v + 0.02 * torch.randn(v.shape, generator=g)
             for k, v in base.mask_decoder.state_dict().items() if v.is_floating_point()}
    path = tmp_path_factory.mktemp("runs") / "perturbed" / "best.pt"
    path.parent.mkdir()
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="module")
def session(checkpoint):
    sams = try_model.load_models("litemedsam", try_model.find_checkpoints(checkpoint.parent.parent), device="cpu")
    s = try_model.Session(sams)
    image, mask, _ = make_phantom(2)[1]
    s.set_image(image, mask)
    return s


def test_find_checkpoints_labels_by_folder(checkpoint):
    assert try_model.find_checkpoints(checkpoint.parent.parent) == {"perturbed": checkpoint}
    assert try_model.find_checkpoints(checkpoint.parent / "missing") == {}


def test_find_checkpoints_keeps_the_newest_few(tmp_path):
    """A runs folder after chapter 07 holds dozens of best.pt files: the widget loads the newest
    MAX_CHECKPOINTS (each ≈ 30 MiB), in label order, and says which it left out."""
    import os

    for i, name in enumerate(["e", "a", "d", "b", "f", "c"]):  # written in this order: c newest, e oldest
        path = tmp_path / name / "best.pt"
        path.parent.mkdir()
        path.write_bytes(b"")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    chosen = try_model.find_checkpoints(tmp_path, limit=4)
    assert list(chosen) == ["b", "c", "d", "f"]
    assert try_model.left_out(tmp_path, chosen) == ["a", "e"]
    assert len(try_model.find_checkpoints(tmp_path)) == try_model.MAX_CHECKPOINTS
    assert list(try_model.find_checkpoints(tmp_path, limit=None)) == ["a", "b", "c", "d", "e", "f"]


def test_decoder_only_checkpoint_shares_the_encoder_and_encodes_once(session):
    assert list(session.sams) == ["zero-shot", "perturbed"]
    assert session.sams["zero-shot"].image_encoder is session.sams["perturbed"].image_encoder
    assert session.encoder_calls == 1


def test_box_then_clicks_answer_for_every_model(session):
    ys, xs = np.nonzero(session.gt)
    results = session.set_box((xs.max(), ys.max(), xs.min(), ys.min()))  # corners in any order
    assert session.box == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert set(results) == {"zero-shot", "perturbed"}
    for r in results.values():
        assert r["mask"].shape == session.gt.shape and r["dice"] == metrics.dice(r["mask"], session.gt)
    assert results["zero-shot"]["dice"] > 0.5  # LiteMedSAM with a tight box on the phantom
    assert not np.array_equal(results["zero-shot"]["mask"], results["perturbed"]["mask"])
    session.add_point(xs.mean(), ys.mean(), positive=True)
    session.add_point(0, 0, positive=False)
    assert session.labels == [1, 0] and set(session._logits) == {"zero-shot", "perturbed"}
    session.clear()
    assert session.predict() == {} and session.box is None and not session.points


def test_predict_restores_the_thread_count(session):
    threads = torch.get_num_threads()
    session.add_point(*np.argwhere(session.gt)[0][::-1])
    assert torch.get_num_threads() == threads and session.prompt_seconds > 0
    session.clear()


def test_renders_are_pngs_at_the_display_scale(session):
    png = try_model.render_prompt(session.image, [1, 2, 30, 40], [[5, 5]], [1], scale=0.5)
    assert Image.open(io.BytesIO(png)).size == (session.image.shape[1] // 2, session.image.shape[0] // 2)
    png = try_model.render_mask(session.image, session.gt, session.gt)
    assert Image.open(io.BytesIO(png)).size == session.image.shape[::-1]


def test_widget_builds_and_reports_errors_in_its_status_line(session):
    def fail():
        raise RuntimeError("no data here")

    ui = try_model.try_model_widget({"phantom": [("p0", session.image, session.gt)], "gone": fail}, session.sams)
    assert ui.session.encoder_calls == 1 and ui.session.results == {}
    status = ui.children[2]
    assert "drag a box" in status.value
    ui.children[0].children[0].value = "gone"  # the dataset picker
    assert "RuntimeError: no data here" in status.value
