"""Try the model yourself: draw a box or click points, compare zero-shot and fine-tuned masks with Dice."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from sas_kit import config
from sas_kit.experiment import metrics
from sas_kit.models import precision as policy
from sas_kit.models import registry
from sas_kit.report.viz import load_items

GT_COLOUR = POS_COLOUR = (40, 220, 90)  # ground-truth outline, positive clicks
PRED_COLOUR = NEG_COLOUR = (255, 60, 60)  # predicted mask tint, negative clicks
BOX_COLOUR = (255, 220, 0)


MAX_CHECKPOINTS = 4  # models answering side by side: each fine-tuned one holds ≈ 30 MiB and one decode per prompt


def find_checkpoints(root: str | Path, limit: int | None = MAX_CHECKPOINTS) -> dict[str, Path]:
    """Fine-tuned ``best.pt`` files under ``root`` (runs of notebooks 04/05, `sas-kit train`), labelled by
    their folder relative to ``root``: the ``limit`` newest (``None``: all), in label order. After chapter 07's
    ablation (17 runs) a runs folder holds dozens; loading them all took chapter 03's kernel from 1.1 to 2.0 GiB
    (`sas-kit bench memory`, docs/notes.md), past a Binder session's memory. :func:`left_out` says what was skipped."""
    root = Path(root)
    found = sorted(root.glob("**/best.pt")) if root.is_dir() else []
    if limit is not None:
        found = sorted(sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:limit])
    return {str(p.parent.relative_to(root)): p for p in found}


def left_out(root: str | Path, chosen: dict[str, Path]) -> list[str]:
    """Labels of the ``best.pt`` files under ``root`` that :func:`find_checkpoints` did not choose."""
    root = Path(root)
    every = find_checkpoints(root, limit=None)
    return [label for label in every if label not in chosen]


def load_models(model: str = "litemedsam", checkpoints: dict[str, str | Path] | None = None,
                device: str | None = None, base: torch.nn.Module | None = None) -> dict[str, torch.nn.Module]:
    """``{"zero-shot": base, label: fine-tuned, ...}``. A checkpoint that left the image encoder untouched
    (decoder-only fine-tuning) shares the base model's encoder module: less memory, one encode per image.
    Pass an already loaded zero-shot ``base`` to reuse it."""
    device = device or config.device()
    base = base if base is not None else registry.load_model(model, device=device)
    loaded = {"zero-shot": base}
    for label, path in (checkpoints or {}).items():
        sam = registry.load_model(model, checkpoint=path, device=device)
        same = all(torch.equal(a, b) for a, b in zip(sam.image_encoder.state_dict().values(),
                                                     base.image_encoder.state_dict().values()))
        if same:
            sam.image_encoder = base.image_encoder
        loaded[label] = sam
    return loaded


class Session:
    """One image, its ground truth and the current prompt (a box and/or clicks), answered by every model.

    The image is encoded once per distinct image encoder; each prompt then costs one decoder pass per
    model. Clicks after the first feed back each model's previous low-res logits (SAM's interactive use)."""

    def __init__(self, sams: dict[str, torch.nn.Module], model: str = "litemedsam", decode_threads: int | None = 1):
        if not sams:
            raise ValueError("Session needs at least one model")
        self.sams, self.spec = sams, registry.get_spec(model)
        # The decoder's small ops ran faster and steadier on one thread than on two busy cores (measured:
        # median 0.15 s vs 0.29-0.46 s for two models, worst 0.2 s vs 2.6 s); None keeps torch's setting.
        self.decode_threads = decode_threads
        device = next(iter(sams.values())).device
        self.precision = policy.resolve(None, str(device))  # the policy the kit trains and evaluates with
        self.image = self.gt = None
        self.encode_seconds = self.prompt_seconds = 0.0
        self.encoder_calls = 0
        self._embeddings: dict[int, tuple] = {}
        self.clear()

    def set_image(self, image: np.ndarray, gt: np.ndarray) -> None:
        """Use ``image`` (HxW or HxWx3 uint8) with ground truth ``gt``; encodes it and clears the prompt."""
        self.image, self.gt = np.asarray(image), np.asarray(gt, bool)
        t0 = time.perf_counter()
        self._embeddings = {}
        for sam in self.sams.values():
            key = id(sam.image_encoder)
            if key not in self._embeddings:
                self._embeddings[key] = registry.encode(sam, self.spec, self.image, precision=self.precision)
                self.encoder_calls += 1
        self.encode_seconds = time.perf_counter() - t0
        self.clear()

    def clear(self) -> None:
        """Forget the box, the clicks and the masks."""
        self.box, self.points, self.labels = None, [], []
        self._logits: dict[str, torch.Tensor | None] = {}
        self.results: dict[str, dict] = {}

    def set_box(self, box: Sequence[float]) -> dict[str, dict]:
        """Prompt with box (x0, y0, x1, y1) in image pixels (kept with any clicks); returns :meth:`predict`."""
        x0, y0, x1, y1 = box
        self.box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        self._logits = {}
        return self.predict()

    def add_point(self, x: float, y: float, positive: bool = True) -> dict[str, dict]:
        """Add a click at (x, y) image pixels (positive: on the target; negative: background)."""
        self.points.append([float(x), float(y)])
        self.labels.append(1 if positive else 0)
        return self.predict()

    def predict(self) -> dict[str, dict]:
        """``{label: {"mask", "dice", "iou_pred"}}`` for the current prompt; empty when there is none."""
        if self.image is None:
            raise RuntimeError("no image: call set_image first")
        if self.box is None and not self.points:
            self.results = {}
            return self.results
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        if self.decode_threads:
            torch.set_num_threads(self.decode_threads)
        try:
            results = self._decode_all()
        finally:
            torch.set_num_threads(threads)
        self.prompt_seconds = time.perf_counter() - t0
        self.results = results
        return results

    def _decode_all(self) -> dict[str, dict]:
        results = {}
        with torch.no_grad(), policy.decoder(next(iter(self.sams.values())).device, self.precision):
            for label, sam in self.sams.items():
                embedding, meta = self._embeddings[id(sam.image_encoder)]
                box = None if self.box is None else np.array([self.box], np.float32)
                low_res, iou, full = registry.decode(
                    sam, self.spec, embedding, meta, boxes=box,
                    points=np.array(self.points, np.float32) if self.points else None,
                    labels=np.array(self.labels) if self.points else None, mask_input=self._logits.get(label))
                mask = (full[0, 0] > 0).cpu().numpy()
                if self.points:
                    self._logits[label] = low_res
                results[label] = {"mask": mask, "dice": metrics.dice(mask, self.gt), "iou_pred": float(iou[0, 0])}
        return results


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _png(rgb: np.ndarray, scale: float) -> bytes:
    img = Image.fromarray(rgb.astype(np.uint8))
    if scale != 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def render_mask(image: np.ndarray, mask: np.ndarray | None, gt: np.ndarray | None, scale: float = 1.0) -> bytes:
    """PNG: ``image`` with the predicted mask tinted red and the ground truth outlined green."""
    rgb = _rgb(image).astype(float)
    if mask is not None and mask.any():
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.array(PRED_COLOUR)
    if gt is not None and gt.any():
        rgb[ndimage.binary_dilation(_outline(gt))] = GT_COLOUR
    return _png(rgb, scale)


def render_prompt(image: np.ndarray, box=None, points=(), labels=(), scale: float = 1.0) -> bytes:
    """PNG at ``scale``: ``image`` with the box (yellow) and clicks (green positive, red negative) drawn."""
    img = Image.open(io.BytesIO(_png(_rgb(image), scale))).convert("RGB")
    draw = ImageDraw.Draw(img)
    if box is not None:
        draw.rectangle([v * scale for v in box], outline=BOX_COLOUR, width=2)
    for (x, y), lab in zip(points, labels):
        r = 5
        draw.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r],
                     fill=POS_COLOUR if lab else NEG_COLOUR, outline=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def try_model_widget(pairs: dict[str, list | Callable[[], list]], sams: dict[str, torch.nn.Module],
                     model: str = "litemedsam", display_size: int = 320):
    """An ipywidgets UI: pick a dataset and image from ``pairs`` ({name: [(id, image, mask), ...] or a
    loader}); drag on the image for a box, click to add a point (positive or negative, by the toggle).
    Every model in ``sams`` answers side by side with its Dice against the ground truth."""
    import ipywidgets as w
    from ipyevents import Event

    session = Session(sams, model)
    names = list(pairs)
    dataset = w.Dropdown(options=names, value=names[0], description="dataset")
    index = w.IntSlider(0, 0, 0, description="image")
    kind = w.ToggleButtons(options=["positive", "negative"], description="clicks are")
    clear = w.Button(description="clear prompt", icon="eraser")
    status = w.HTML()
    status.add_class("sas-try-status")
    canvas = w.Image(format="png")
    canvas.add_class("sas-try-canvas")
    titles = {label: w.HTML(f"<b>{label}</b>") for label in sams}
    panels = {label: w.Image(format="png") for label in sams}
    for label in sams:
        titles[label].add_class("sas-try-dice")
    state = {"scale": 1.0, "down": None}

    def show(message: str = "") -> None:
        s = state["scale"]
        canvas.value = render_prompt(session.image, session.box, session.points, session.labels, s)
        for label in sams:
            res = session.results.get(label)
            panels[label].value = render_mask(session.image, res["mask"] if res else None, session.gt, s)
            dice = "—" if res is None else ("n/a" if np.isnan(res["dice"]) else f"{res['dice']:.3f}")
            titles[label].value = f"<b>{label}</b>: Dice {dice}"
        status.value = message or (f"image encoded in {session.encode_seconds:.2f} s; "
                                   + (f"prompt answered in {session.prompt_seconds:.2f} s" if session.results
                                      else "drag a box or click on the image"))

    def guarded(fn):
        def run(*args):
            try:
                fn(*args)
            except Exception as error:  # shown where the student is looking, never a silent blank
                status.value = f"<span style='color:#c00'>error: {type(error).__name__}: {error}</span>"
        return run

    @guarded
    def pick(_=None) -> None:
        items = load_items(pairs, dataset.value)
        index.max = len(items) - 1
        _, image, mask = items[min(index.value, len(items) - 1)]
        state["scale"] = display_size / max(np.asarray(image).shape[:2])
        status.value = "encoding the image…"
        session.set_image(image, mask)
        show()

    @guarded
    def on_mouse(event: dict) -> None:
        x, y = event["dataX"] / state["scale"], event["dataY"] / state["scale"]
        if event["type"] == "mousedown":
            state["down"] = (x, y)
            return
        if state["down"] is None:
            return
        (x0, y0), state["down"] = state["down"], None
        if abs(x - x0) > 3 / state["scale"] or abs(y - y0) > 3 / state["scale"]:
            session.set_box((x0, y0, x, y))
        else:
            session.add_point(x, y, positive=kind.value == "positive")
        show()

    @guarded
    def on_clear(_=None) -> None:
        session.clear()
        show()

    Event(source=canvas, watched_events=["mousedown", "mouseup"], prevent_default_action=True).on_dom_event(on_mouse)
    dataset.observe(pick, names="value")
    index.observe(pick, names="value")
    clear.on_click(on_clear)
    pick()
    results = w.HBox([w.VBox([titles[label], panels[label]]) for label in sams], layout=w.Layout(flex_flow="row wrap"))
    ui = w.VBox([w.HBox([dataset, index]), w.HBox([kind, clear]), status,
                 w.HBox([w.VBox([w.HTML("<b>your prompt</b> (drag: box, click: point)"), canvas]), results])])
    ui.session = session  # for scripted use and tests
    return ui
