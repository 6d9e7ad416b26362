"""Notebook widgets in a real browser: JupyterLab on 127.0.0.1 driven by headless Chromium (Playwright).

Run alone with ``.venv/bin/python -m pytest -q tests/test_browser.py``. Needs a Chromium executable
(``apt-get install chromium``, or ``SAS_KIT_CHROMIUM=/path/to/chrome``) and the ``playwright`` package;
without them the tests are skipped with the reason. Playwright's own browser download is never used."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("SAS_KIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
LAB_LIFETIME_S = 900  # the server is killed by its PID at teardown, and by `timeout` at the latest
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="pip install playwright (the test extra) to run browser tests")
pytest.importorskip("jupyterlab", reason="pip install jupyterlab (the lab extra) to run browser tests")
expect = sync_api.expect
expect.set_options(timeout=120_000)  # readiness waits on a loaded 2-core machine; checks meant to fail pass 5 s

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: `apt-get install chromium` or set "
                                                        "SAS_KIT_CHROMIUM (see README, 'Browser tests')")]

BROKEN_EXPLORERS = '''# test only: an explorer whose callback ignores the sliders, and one that raises after the first draw
def _stale(image, mask, **settings):
    return viz.render_sas(image, mask)

def _raising(image, mask, scale=0.5, **settings):
    if scale != 0.5:
        raise RuntimeError("deliberately broken callback")
    return viz.render_sas(image, mask, scale=scale, **settings)

display(viz.sas_explorer(pairs, render=_stale))
display(viz.sas_explorer(pairs, render=_raising))'''

BROKEN_TRY = '''# test only: a second widget whose prediction fails
broken = try_model.try_model_widget(viz.dataset_sources(["phantom"], split="test", limit=TRY_LIMIT), sams, MODEL)
def _fail():
    raise RuntimeError("deliberately broken prediction")
broken.session.predict = _fail
display(broken)'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path, keep=None, params: dict | None = None, extra: list[str] = ()) -> nbformat.NotebookNode:
    """A copy of ``path`` (only the setup, parameters and ``keep``-tagged cells when ``keep`` is given),
    with ``params`` appended to the parameters cell and ``extra`` code cells at the end."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if keep:
        nb.cells = [code[0]] + [c for c in code[1:] if {"parameters", keep} & set(c.metadata.get("tags", []))]
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            cell.source += "".join(f"\n{k} = {v!r}" for k, v in (params or {}).items())
    nb.cells += [nbformat.v4.new_code_cell(src) for src in extra]
    return nb


def _fake_checkpoint(path: Path) -> None:
    """A 'fine-tuned' LiteMedSAM: the decoder perturbed, so its masks differ from zero-shot."""
    import torch

    from sas_kit.models import registry

    base = registry.load_model("litemedsam")
    g = torch.Generator().manual_seed(0)
    state = {f"mask_decoder.{k}": v + 0.02 * torch.randn(v.shape, generator=g)
             for k, v in base.mask_decoder.state_dict().items() if v.is_floating_point()}
    path.parent.mkdir(parents=True)
    torch.save({"model": state}, path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base_url, token, data_dir): JupyterLab serving a folder of prepared notebook copies."""
    root = tmp_path_factory.mktemp("lab")
    work, data, config, settings = root / "notebooks", root / "data", root / "config", root / "settings"
    for d in (work, data, config / "labconfig", settings / "@jupyterlab" / "notebook-extension"):
        d.mkdir(parents=True)
    # the announcements toast can cover outputs; windowing "none" keeps every cell in the DOM
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    nbformat.write(_notebook(ROOT / "notebooks" / "02_sas_augmentation.ipynb", extra=[BROKEN_EXPLORERS]),
                   work / "explorer.ipynb")
    _fake_checkpoint(root / "runs" / "perturbed" / "best.pt")
    nbformat.write(_notebook(ROOT / "notebooks" / "03_zero_shot.ipynb", keep="try-model",
                             params={"RUNS": str(root / "runs")}, extra=[BROKEN_TRY]), work / "try_model.ipynb")
    env = {**os.environ, "SAS_KIT_DATA_DIR": str(data), "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    env.pop("SAS_KIT_MIRROR", None)  # only the phantom is available: the picker's message is tested
    token, port = secrets.token_hex(16), _free_port()
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        ["timeout", str(LAB_LIFETIME_S), sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--ServerApp.open_browser=False"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # readiness: the REST API answers (no fixed sleep decides success)
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, token, data
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group we started: timeout, jupyter and kernels
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def _errors(page) -> str:
    """The notebook's outputs as shown (for failure messages)."""
    return "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())[-3000:]


def _wait_count(page, selector: str, n: int) -> None:
    try:
        expect(page.locator(selector)).to_have_count(n)
    except AssertionError as error:
        raise AssertionError(f"{error}\nnotebook outputs:\n{_errors(page)}") from None


def _run_all(browser, lab, name: str):
    """Open notebook ``name`` in its own fresh workspace (no restored tabs) and run all its cells."""
    url, token, _ = lab
    page = browser.new_page(viewport={"width": 1600, "height": 1200})
    page.set_default_timeout(180_000)
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.context && w.context.path.endsWith(name)"
                           " && w.sessionContext && w.sessionContext.session; }", arg=name)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    return page


@pytest.fixture(scope="module")
def explorer_page(browser, lab):
    page = _run_all(browser, lab, "explorer.ipynb")
    _wait_count(page, ".sas-record", 3)  # the notebook's explorer + two broken ones
    yield page
    page.close()


def _explorer(page, i: int):
    return page.locator(".sas-record").nth(i).locator("xpath=..")


def move_scale_and_check(page, i: int, timeout: float = 60_000) -> None:
    """Press ArrowLeft on explorer ``i``'s scale slider: its figure and applied record must change."""
    box = _explorer(page, i)
    record, figure = box.locator(".sas-record"), box.locator(".sas-figure img")
    expect(figure).to_have_count(1, timeout=timeout)
    before_text, before_src = record.inner_text(), figure.get_attribute("src")
    box.locator(".sas-scale .noUi-handle").focus()
    page.keyboard.press("ArrowLeft")  # one step: 0.50 -> 0.45
    expect(record).to_contain_text("scale 0.45", timeout=timeout)
    expect(figure).not_to_have_attribute("src", before_src, timeout=timeout)
    assert record.inner_text() != before_text


def test_explorer_slider_redraws_figure_and_record(explorer_page):
    move_scale_and_check(explorer_page, 0)


def test_explorer_noise_none_disables_its_controls_and_changes_the_record(explorer_page):
    box = _explorer(explorer_page, 0)
    record, figure = box.locator(".sas-record"), box.locator(".sas-figure img")
    expect(record).to_contain_text("gamma")
    before = figure.get_attribute("src")
    box.locator(".sas-noise-model select").select_option("none")
    expect(record).to_contain_text("no noise step")
    expect(figure).not_to_have_attribute("src", before)
    for name in ("strength", "roi-margin"):
        expect(box.locator(f".sas-{name} [disabled]")).to_have_count(1)
        expect(box.locator(f".sas-{name} .widget-readout")).to_have_attribute("contenteditable", "false")
    box.locator(".sas-noise-model select").select_option("gaussian")
    expect(record).to_contain_text("gaussian")
    expect(box.locator(".sas-strength [disabled]")).to_have_count(0)


def test_explorer_dataset_picker_says_how_to_get_data(explorer_page):
    box = _explorer(explorer_page, 0)
    expect(box.locator(".sas-figure img")).to_have_count(1)  # settled: an earlier test's redraw has landed
    expect(box.locator(".sas-record")).not_to_contain_text("nothing")
    picker = box.locator(".sas-dataset select")
    labels = [t.replace("\xa0", " ") for t in picker.locator("option").all_inner_texts()]
    assert labels[0] == "phantom" and "busi (needs data)" in labels
    picker.select_option("busi (needs data)")
    expect(box.locator(".sas-record")).to_contain_text("nothing")
    expect(box.locator(".sas-figure")).to_contain_text("sas-kit data prepare busi")
    expect(box.locator(".sas-figure img")).to_have_count(0)
    picker.select_option("phantom")
    expect(box.locator(".sas-figure img")).to_have_count(1)


def test_the_redraw_check_fails_when_the_callback_ignores_the_sliders(explorer_page):
    with pytest.raises(AssertionError):
        move_scale_and_check(explorer_page, 1, timeout=5_000)


def test_a_failing_callback_shows_its_error(explorer_page):
    box = _explorer(explorer_page, 2)
    expect(box.locator(".sas-figure img")).to_have_count(1)
    box.locator(".sas-scale .noUi-handle").focus()
    explorer_page.keyboard.press("ArrowLeft")
    expect(box.locator(".sas-figure")).to_contain_text("RuntimeError: deliberately broken callback")


# ------------------------------------------------------------------------- try the model yourself

@pytest.fixture(scope="module")
def try_page(browser, lab):
    page = _run_all(browser, lab, "try_model.ipynb")
    _wait_count(page, ".sas-try-status", 2)
    for i in range(2):
        expect(page.locator(".sas-try-status").nth(i)).to_contain_text("drag a box")
    yield page
    page.close()


def _target_box(lab) -> tuple[np.ndarray, tuple[int, int]]:
    """The first phantom test image's target box (x0, y0, x1, y1) and the image (H, W), as the widget shows it."""
    from sas_kit.data import datasets

    saved = os.environ.get("SAS_KIT_DATA_DIR")
    os.environ["SAS_KIT_DATA_DIR"] = str(lab[2])
    try:
        image, mask = datasets.to_arrays(datasets.load("phantom", "test", limit=1)[0])
    finally:
        if saved is None:
            del os.environ["SAS_KIT_DATA_DIR"]
        else:
            os.environ["SAS_KIT_DATA_DIR"] = saved
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], float), mask.shape


def _drag(page, canvas, box, hw) -> None:
    """Mouse-drag on ``canvas`` from box corner to box corner (image pixels -> screen pixels)."""
    canvas.scroll_into_view_if_needed()
    r = canvas.bounding_box()
    sx, sy = r["width"] / hw[1], r["height"] / hw[0]
    page.mouse.move(r["x"] + box[0] * sx, r["y"] + box[1] * sy)
    page.mouse.down()
    page.mouse.move(r["x"] + box[2] * sx, r["y"] + box[3] * sy, steps=5)
    page.mouse.up()


def draw_and_check(page, lab, i: int, timeout: float = 60_000) -> list[str]:
    """Draw a box on widget ``i``, then a wrong box, then click: Dice must appear, change, and the masks redraw."""
    widget = page.locator(".sas-try-status").nth(i).locator("xpath=..")
    canvas, dice, panels = widget.locator(".sas-try-canvas"), widget.locator(".sas-try-dice"), widget.locator("img")
    box, hw = _target_box(lab)
    expect(dice.first).to_contain_text("Dice —", timeout=timeout)
    _drag(page, canvas, box, hw)
    for k in range(dice.count()):  # every model's label, not only the first (they redraw one by one)
        expect(dice.nth(k)).to_contain_text(re.compile(r"Dice \d\.\d{3}"), timeout=timeout)
    first = dice.all_inner_texts()
    assert len(first) == 2 and all("Dice 0." in t or "Dice 1." in t for t in first), first
    masks = [panels.nth(k).get_attribute("src") for k in range(1, 3)]
    corner = np.array([0, 0, (box[2] - box[0]) / 3, (box[3] - box[1]) / 3])  # a small box away from the target
    _drag(page, canvas, corner, hw)
    expect(dice.first).not_to_have_text(first[0], timeout=timeout)
    expect(panels.nth(1)).not_to_have_attribute("src", masks[0], timeout=timeout)
    before = canvas.get_attribute("src")
    canvas.scroll_into_view_if_needed()
    r = canvas.bounding_box()
    centre = ((box[0] + box[2]) / 2 * r["width"] / hw[1], (box[1] + box[3]) / 2 * r["height"] / hw[0])
    page.mouse.click(r["x"] + centre[0], r["y"] + centre[1])
    expect(canvas).not_to_have_attribute("src", before, timeout=timeout)  # the click is drawn
    expect(widget.locator(".sas-try-status")).to_contain_text("prompt answered in", timeout=timeout)
    return first + [widget.locator(".sas-try-status").inner_text()]


def test_try_model_box_and_click_update_masks_and_dice(try_page, lab):
    texts = draw_and_check(try_page, lab, 0)
    print("try-the-model:", texts)


def test_try_model_check_fails_and_error_shows_when_prediction_is_broken(try_page, lab):
    with pytest.raises(AssertionError):
        draw_and_check(try_page, lab, 1, timeout=5_000)
    expect(try_page.locator(".sas-try-status").nth(1)).to_contain_text("RuntimeError: deliberately broken prediction")
