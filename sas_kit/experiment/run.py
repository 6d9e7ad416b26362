"""One fine-tuning run as a frozen, validated, serialisable spec (:class:`RunSpec`); its content key names its folder.

A spec is resolved once, from a profile and overrides (:func:`sas_kit.experiment.protocol.make_plan`) or from the
``sas-kit train`` options, and is the only thing a worker receives: device and precision are settled, the arm's
augmentation parameters are their validated dataclass, the training images are pinned by their pixel digest, and
the key includes a digest of the training code (:func:`code_version`), so a finished run is reused only when the
code that would make it again is the code that made it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

from sas_kit import config
from sas_kit.augment.baselines import ClassicParams, StsNetParams
from sas_kit.augment.genseg import GenSegParams
from sas_kit.augment.sas import SASParams
from sas_kit.augment.sas_size import SASSizeParams

TRAINED_ARMS = ("none", "classic", "stsnet", "genseg", "sas", "sas_size")
ARMS = ("zero_shot", *TRAINED_ARMS)
PARAMS = {"sas": SASParams, "classic": ClassicParams, "stsnet": StsNetParams, "genseg": GenSegParams,
          "sas_size": SASSizeParams}
DEFAULT_LR = {"decoder": 5e-5, "full": 1e-5}
MODES = tuple(DEFAULT_LR)
SELECT = ("best", "last")
LOSS_SIZES = ("low", "full")  # the training loss on 256x256 logits or at the original size (train_step.step_loss)

# The modules whose code decides what a training run produces (views, prompts, loss, optimiser, models) and those
# that decide a score. Their digests go into run keys and score keys: edit one and finished runs are redone.
TRAINING_CODE = ("experiment/train.py", "experiment/train_step.py", "experiment/embed_cache.py",
                 "experiment/distributed.py", "augment/*.py", "models/*.py", "digest.py")
SCORING_CODE = ("experiment/evaluate.py", "experiment/metrics.py", "experiment/executor.py", "models/*.py")


@lru_cache(maxsize=None)
def code_version(patterns: tuple[str, ...] = TRAINING_CODE) -> str:
    """A digest of the code of the package modules matching ``patterns`` (relative to ``sas_kit/``), parsed and
    with docstrings dropped, so comments, docstrings and formatting do not count but any change of code does."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted({p for pattern in patterns for p in package.glob(pattern)}):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + ast.dump(tree).encode() + b"\0")
    return digest.hexdigest()


def arm_params(arm: str, given=None):
    """The arm's augmentation parameters as their dataclass (validated now), from a dict, the dataclass or None
    (the kit's defaults). ``none`` and ``zero_shot`` take none."""
    cls = PARAMS.get(arm)
    if cls is None:
        if given:
            raise ValueError(f"arm {arm!r} takes no augmentation parameters (got {given!r})")
        return None
    if isinstance(given, cls):
        return given
    given = dict(given or {})
    unknown = sorted(set(given) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown parameter(s) {unknown}; valid: {sorted(f.name for f in fields(cls))}")
    return cls(**given)


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides what one fine-tuning run produces, resolved and checked when it is built.

    ``data``: the internal dataset (its train split trains, its val split selects); ``train_limit`` /
    ``val_limit``: the first N images of each (``val_limit=0``: no val images); ``data_key``: the digest of those
    images' pixels (:func:`sas_kit.digest.data_key`). ``arm``: ``zero_shot`` (no training) or an augmentation
    policy whose ``params`` are its dataclass. ``view_seed``: seed of the pre-drawn views (decoder mode; full mode
    draws views afresh each epoch from it). ``lr``: resolved from DEFAULT_LR[mode] when not given. ``device`` and
    ``precision`` are settled once; the device is not part of the key (a checkpoint is a checkpoint wherever it
    was made), the precision is. ``code``: :func:`code_version` of the training code."""

    model: str
    data: str
    arm: str
    seed: int
    data_key: str
    train_limit: int | None = None
    val_limit: int | None = None
    view_seed: int = 0
    epochs: int = 4
    views: int = 3
    batch_size: int = 4
    lr: float = 5e-5
    weight_decay: float = 0.01
    select: str = "best"
    mode: str = "decoder"
    click_fraction: float = 0.5
    max_clicks: int = 3
    box_jitter: float = 0.05
    loss_size: str = "low"
    params: SASParams | ClassicParams | StsNetParams | GenSegParams | SASSizeParams | None = None
    precision: str = "fp32"
    device: str = "cpu"
    code: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.arm in ARMS, f"arm one of {ARMS} (got {self.arm!r})"),
            (self.mode in MODES, f"mode one of {MODES} (got {self.mode!r})"),
            (self.select in SELECT, f"select one of {SELECT} (got {self.select!r})"),
            (self.loss_size in LOSS_SIZES, f"loss_size one of {LOSS_SIZES} (got {self.loss_size!r})"),
            (self.precision in ("fp32", "bf16"), f"precision fp32 or bf16, resolved (got {self.precision!r})"),
            (0.0 <= self.click_fraction <= 1.0, f"click_fraction in [0, 1] (got {self.click_fraction})"),
            (min(self.epochs, self.batch_size, self.views, self.max_clicks) >= 1,
             "epochs, batch_size, views and max_clicks >= 1"),
            (self.lr > 0 and self.weight_decay >= 0, f"lr > 0 and weight_decay >= 0 (got {self.lr}, {self.weight_decay})"),
            (all(v is None or v >= 0 for v in (self.train_limit, self.val_limit)), "limits None or >= 0"),
            (self.params is None or isinstance(self.params, PARAMS.get(self.arm, ())),
             f"params of arm {self.arm!r} as {getattr(PARAMS.get(self.arm), '__name__', 'None')}"),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"RunSpec: expected {what}")

    @classmethod
    def build(cls, model: str = "litemedsam", data: str = "phantom", arm: str = "none", seed: int = 0,
              params=None, view_seed: int | None = None, lr: float | None = None, precision: str | None = None,
              device: str | None = None, data_key: str | None = None, **settings) -> RunSpec:
        """Resolve a spec: defaults filled (view seed = seed, lr from the mode), ``params`` (dict) turned into the
        arm's dataclass, device and precision settled, the training images' digest taken (loaded once if
        ``data_key`` is not given) and the training code's version stamped."""
        from sas_kit.models import precision as policy
        from sas_kit.models import registry

        try:
            registry.get_spec(model)  # an unknown model name fails here, not in a worker
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        device = config.device(device)
        mode = settings.get("mode", "decoder")
        if mode not in MODES:
            raise ValueError(f"RunSpec: expected mode one of {MODES} (got {mode!r})")
        if data_key is None:
            data_key = images_key(data, settings.get("train_limit"), settings.get("val_limit"))
        return cls(model=model, data=data, arm=arm, seed=int(seed), data_key=data_key,
                   view_seed=int(seed if view_seed is None else view_seed),
                   lr=float(DEFAULT_LR[mode] if lr is None else lr), params=arm_params(arm, params),
                   precision=policy.resolve(precision, device), device=device, code=code_version(), **settings)

    @property
    def trains(self) -> bool:
        return self.arm != "zero_shot"

    def plain(self) -> dict:
        """The spec as JSON primitives (``params`` as a dict)."""
        return json.loads(json.dumps(asdict(self)))

    @property
    def key(self) -> str:
        """Content key: a digest of every field but ``device``."""
        blob = json.dumps({k: v for k, v in self.plain().items() if k != "device"}, sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()

    @property
    def name(self) -> str:
        """The run's folder name: readable, then the key (``sas_seed0-1a2b3c4d5e``)."""
        return f"{self.arm}_seed{self.seed}-{self.key[:10]}"

    def to_json(self) -> str:
        return json.dumps(self.plain(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, record: dict) -> RunSpec:
        """The spec back from :meth:`plain` (what ``spec.json`` in a run folder holds); validated again."""
        record = dict(record)
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(record) - known):
            raise ValueError(f"RunSpec: unknown field(s) {unknown} (written by another version of the kit?)")
        record["params"] = arm_params(record["arm"], record.get("params"))
        return cls(**record)

    def but(self, **changes) -> RunSpec:
        """A copy with ``changes`` (validated again; ``params`` may be a dict)."""
        if "params" in changes:
            changes["params"] = arm_params(changes.get("arm", self.arm), changes["params"])
        return replace(self, **changes)

    def differs(self, other: RunSpec) -> dict:
        """Fields (other than ``device``) where ``other`` differs: {field: (other's, mine)}."""
        mine, theirs = self.plain(), other.plain()
        return {k: (theirs.get(k), v) for k, v in mine.items() if k != "device" and theirs.get(k) != v}


@lru_cache(maxsize=32)
def images_key(data: str, train_limit: int | None, val_limit: int | None) -> str:
    """:func:`sas_kit.digest.data_key` of the first ``train_limit`` train and ``val_limit`` val images of ``data``."""
    from sas_kit.digest import data_key

    train, val = load_images(data, train_limit, val_limit)
    return data_key(train, val)


def load_samples(name: str, split: str, limit: int | None = None) -> list[tuple]:
    """(image, mask) arrays of the first ``limit`` examples of ``split`` of dataset ``name`` (``limit=0``: none)."""
    from sas_kit.data import datasets

    return [] if limit == 0 else [datasets.to_arrays(ex) for ex in datasets.load(name, split=split, limit=limit)]


def load_images(data: str, train_limit: int | None, val_limit: int | None) -> tuple[list, list]:
    """(train, val) (image, mask) arrays of a spec's internal dataset; ``val_limit=0``: no val images."""
    return load_samples(data, "train", train_limit), load_samples(data, "val", val_limit)
