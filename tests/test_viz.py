"""The augmentation figures and the widget callback: they return Figures and draw what the record says."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from sas_kit.augment import make_policy
from sas_kit.data.phantom import make_phantom
from sas_kit.report import viz


@pytest.fixture(scope="module")
def phantoms():
    return make_phantom(4)


def test_show_pair_draws_paste_and_roi_boxes(phantoms):
    image, mask, _ = phantoms[0]
    out, out_mask, rec = make_policy("sas", p_scale=1.0, p_noise=1.0, scale_range=(0.6, 0.6), roi_crop_prob=0.0)(
        image, mask, 0)
    fig = viz.show_pair(image, mask, out, out_mask, rec)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # a large thumbnail: no enlarged panel
    labels = {p.get_label() for p in fig.axes[1].patches}
    assert labels == {"paste box", "noise ROI box"}
    assert "sas" in fig.get_suptitle() and str(rec["mask_area"]) in fig.get_suptitle()
    fig.canvas.draw()  # renders without error


@pytest.mark.parametrize("scale", [0.1, 0.3])
def test_show_pair_enlarges_a_small_paste_box(phantoms, scale):
    image, mask, _ = phantoms[0]
    fig = viz.render_sas(image, mask, scale=scale, noise_model="gaussian", strength=0.3)
    record_box = [p for p in fig.axes[1].patches if p.get_label() == "paste box"][0]
    assert len(fig.axes) == 3 and "paste box enlarged" in fig.axes[2].get_title()
    zoomed = fig.axes[2].images[0].get_array()
    w, h = record_box.get_width(), record_box.get_height()
    assert max(w / image.shape[1], h / image.shape[0]) < viz.ZOOM_BELOW
    assert zoomed.shape[0] < image.shape[0] / 2 and zoomed.shape[0] >= h  # the paste box and a small margin
    assert {p.get_label() for p in fig.axes[2].patches} == {"paste box", "noise ROI box"}
    fig.canvas.draw()
    for large in (0.5, 1.0):
        assert len(viz.render_sas(image, mask, scale=large).axes) == 2


def test_slider_params_are_sasparams_fields_and_reproduce_render_sas(phantoms):
    from sas_kit.augment import SASParams

    image, mask, _ = phantoms[1]
    settings = dict(scale=0.3, noise_model="texture", strength=0.2, roi_margin=0.5, roi_crop=True)
    fields = viz.slider_params(**settings)
    SASParams(**fields)  # every key is a field (an unknown one would raise)
    out, out_mask, record = make_policy("sas", **fields)(image, mask, np.random.default_rng(3))
    fig = viz.render_sas(image, mask, seed=3, **settings)
    assert fig.get_suptitle() == viz.describe(record)
    assert np.array_equal(fig.axes[1].images[0].get_array(), out)
    assert viz.slider_params(scale=1.0)["p_scale"] == 0 == viz.slider_params(noise_model="none")["p_noise"]
    with pytest.raises(ValueError):
        viz.slider_params(noise_model="salt")


def test_show_pair_without_record_and_empty_mask(phantoms):
    image, _, _ = phantoms[1]
    empty = np.zeros(image.shape, bool)
    fig = viz.show_pair(image, empty, image, empty)
    assert isinstance(fig, Figure) and not fig.axes[1].patches


@pytest.mark.parametrize("policy", ["none", "classic", "sas", "stsnet"])
def test_sample_grid(phantoms, policy):
    fn = make_policy(policy, seed=0)
    samples = [fn(im, m) for im, m, _ in phantoms[:3]]
    fig = viz.sample_grid(samples, ncols=2, title=policy)
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # 3 samples + 1 blank cell
    fig.canvas.draw()
    with pytest.raises(ValueError):
        viz.sample_grid([])


def test_area_histogram_counts_and_empty():
    before = [0.2, 0.05, 0.01, 0.0]
    after = [0.02, 0.004, 0.01, 0.0]
    fig = viz.area_histogram(before, after)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_xscale() == "log"
    heights = [sum(p.get_height() for p in c) for c in ax.containers]
    assert heights == [3, 3]  # empty masks are not plotted...
    assert "1 empty" in ax.get_legend().get_texts()[0].get_text()  # ...but counted in the legend


@pytest.mark.parametrize("noise", viz.NOISE_CHOICES)
def test_render_sas_applies_the_slider_values(phantoms, noise):
    image, mask, _ = phantoms[2]
    fig = viz.render_sas(image, mask, scale=0.5, noise_model=noise, strength=0.2, roi_margin=0.1)
    title = fig.get_suptitle()
    assert "scale 0.50" in title
    assert (noise in title) == (noise != "none")
    with pytest.raises(ValueError):
        viz.render_sas(image, mask, noise_model="salt")


def _controls(ui):
    return {c.description: c for box in ui.children[0].children if hasattr(box, "children") for c in box.children}


def test_sas_explorer_calls_render_and_updates(phantoms):
    calls = []

    def render(image, mask, **settings):
        calls.append(settings)
        return viz.show_pair(image, mask, image, mask, {"policy": "sas", "scale": {"applied": False}})

    loaded = []
    pairs = {"a": [("x", im, m) for im, m, _ in phantoms[:2]],
             "b": lambda: loaded.append(1) or [("y", im, m) for im, m, _ in phantoms[2:3]]}
    ui = viz.sas_explorer(pairs, render=render)
    assert calls and calls[-1]["scale"] == 0.5 and calls[-1]["noise_model"] == "gamma"
    record, out = ui.children[1], ui.children[2]
    assert len(out.outputs) == 1 and "no scale step" in record.value
    params = ui.children[0].children[-1]  # the SASParams fields the sliders set, under the controls
    assert '"scale_range": [0.5, 0.5]' in params.value and '"noise_models": ["gamma"]' in params.value
    controls = _controls(ui)
    controls["scale"].value = 0.3
    assert calls[-1]["scale"] == 0.3 and len(out.outputs) == 1
    assert not loaded  # lazy: "b" is loaded only when picked
    controls["dataset"].value = "b"
    assert loaded and controls["image"].max == 0


def test_sas_explorer_says_what_was_applied_once(phantoms):
    ui = viz.sas_explorer({"a": [("x", im, m) for im, m, _ in phantoms[:1]]})
    record, out = ui.children[1], ui.children[2]
    assert record.value.startswith("applied: sas, scale 0.50")
    figure = out.outputs[0]["data"]["text/plain"]
    assert "Figure" in figure
    _controls(ui)["scale"].value = 0.3
    assert "scale 0.30" in record.value and '"scale_range": [0.3, 0.3]' in ui.children[0].children[-1].value


def test_sas_explorer_figure_has_no_title_repeating_the_record(phantoms):
    shown = []
    render = lambda image, mask, **s: shown.append(viz.render_sas(image, mask, **s)) or shown[-1]  # noqa: E731
    ui = viz.sas_explorer({"a": [("x", im, m) for im, m, _ in phantoms[:1]]}, render=render)
    assert shown and shown[-1].get_suptitle() == ""  # said once, in the line above the figure
    assert "gamma 0.15" in ui.children[1].value


def test_sas_explorer_disables_noise_controls_without_noise(phantoms):
    ui = viz.sas_explorer({"a": [("x", im, m) for im, m, _ in phantoms[:1]]})
    controls = _controls(ui)
    assert not controls["strength"].disabled
    controls["noise"].value = "none"
    assert controls["strength"].disabled and controls["ROI margin"].disabled
    assert "no noise step" in ui.children[1].value and "gamma" not in ui.children[1].value


def test_sas_explorer_shows_errors_instead_of_a_blank(phantoms):
    def broken(image, mask, **settings):
        raise RuntimeError("boom")

    ui = viz.sas_explorer({"a": [("x", im, m) for im, m, _ in phantoms[:1]]}, render=broken)
    out = ui.children[2]
    assert out.outputs and "RuntimeError: boom" in out.outputs[0]["text"]


def test_dataset_sources_say_how_to_get_missing_data(monkeypatch, tmp_path):
    monkeypatch.setenv("SAS_KIT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    sources = viz.dataset_sources(["phantom", "busi"], limit=2)
    assert list(sources) == ["phantom", "busi (needs data)"]
    with pytest.raises(RuntimeError, match="sas-kit data prepare busi"):
        sources["busi (needs data)"]()
    ui = viz.sas_explorer(sources)
    _controls(ui)["dataset"].value = "busi (needs data)"
    assert "SAS_KIT_MIRROR" in ui.children[2].outputs[0]["text"]


def test_describe_names_the_steps_not_drawn():
    assert viz.describe({"scale": {"applied": False}, "noise": {"applied": False}}) == "no scale step, no noise step"
