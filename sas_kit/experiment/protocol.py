"""The paper's protocol on public data as a finished plan: its runs (one :class:`RunSpec` each) and test sets.

``make_plan`` resolves a profile plus overrides once. The plan is frozen: nothing changes it afterwards, and the
executor (:mod:`sas_kit.experiment.executor`) trains and scores its tasks, serially or on workers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from sas_kit import config
from sas_kit.data import datasets
from sas_kit.digest import data_key
from sas_kit.experiment.run import ARMS, RunSpec, arm_params, code_version, load_samples
from sas_kit.models import precision as policy
from sas_kit.models import prompts as prompt_names

HEADLINE_ARMS = ("zero_shot", "none", "sas")
PROMPTS = prompt_names.PROMPTS[:4]  # box and 1-3 clicks: the default when a profile names none
TEST_DRAWS = ("hash", "by_size")
KEEP_ALL_BINS = ("<1%", ">20%")  # the by-size draw keeps every target of these bins (docs/protocol.md, v2)
ZERO_SHOT_PROMPTS = ("box",)  # LiteMedSAM's zero-shot clicks score ≈ 0 (docs/notes.md): box is the reference
INTERNAL = "bus_bra"
EXTERNALS = ("busi", "hc18", "carotid_cca", "usgra_nerve", "usgra_vessel")
CHECKPOINTS = ("selected", "last")  # the weights a task scores (Task.checkpoint)
CURVE_ARMS = ("none", "sas", "genseg")  # the low-data curve's arms (GenSeg's figure), first seed only


@dataclass(frozen=True)
class Task:
    """One unit of work: train ``spec`` (unless zero-shot), then score it with ``prompts`` on the datasets
    ``score_on``. ``curve``: a point of the low-data curve (its training-set size is ``spec.train_limit``).
    ``noc``: IoU thresholds of the number-of-clicks metric (``()``: none), sessions capped at ``max_clicks``.
    ``checkpoint``: which weights are scored: ``"selected"`` (best.pt: the spec's model selection) or ``"last"``
    (the last epoch's weights in last.pt: both from one training run, e.g. to compare selections)."""

    spec: RunSpec
    score_on: tuple[str, ...]
    prompts: tuple[str, ...]
    curve: bool = False
    noc: tuple[float, ...] = ()
    max_clicks: int = 10
    checkpoint: str = "selected"

    def __post_init__(self) -> None:
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"Task: checkpoint must be one of {CHECKPOINTS}, got {self.checkpoint!r}")


@dataclass(frozen=True)
class Plan:
    """What one reproduction runs, resolved from a profile, a model, overrides and the data available.

    ``tests``: dataset → the ids scored (in order); ``empty``: empty masks left out of each pool; ``tasks``: every
    run to train and score (main arms x seeds, then the low-data curve's smaller runs). The settings fields say
    what every main run shares (the report prints them); each task's spec is the authority for its run."""

    profile: str
    model: str
    internal: str
    externals: tuple[str, ...]
    arms: tuple[str, ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    views: int
    mode: str
    view_seed: int | None
    batch_size: int
    select: str
    precision: str
    device: str
    train_limit: int | None
    eval_limit: int | None  # per external dataset (test_draw "hash") or per external dataset and size bin
    test_draw: str
    noc: tuple[float, ...]
    max_clicks: int
    internal_limit: int | None  # None: the whole internal test split
    train_images: int
    sas_params: dict
    sas_params_source: str
    genseg_params: dict
    low_data: tuple[int, ...]
    data_source: str
    tests: dict[str, tuple[str, ...]] = field(default_factory=dict)
    empty: dict[str, int] = field(default_factory=dict)
    tasks: tuple[Task, ...] = ()

    def main_tasks(self) -> list[Task]:
        return [t for t in self.tasks if not t.curve]

    def curve_tasks(self) -> list[Task]:
        return [t for t in self.tasks if t.curve]

    def record(self) -> dict:
        """The plan as JSON (plan.json): settings, test-set sizes, and each task's run name and key."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("tests", "tasks")}
        return json.loads(json.dumps({**plain, "n_test": {k: len(v) for k, v in self.tests.items()},
                                      "tests_key": tests_key(self.tests), "training_code": code_version(),
                                      "runs": [{"name": t.spec.name, "key": t.spec.key, "curve": t.curve,
                                                "score_on": list(t.score_on), "prompts": list(t.prompts)}
                                               for t in self.tasks]}))


def tests_key(tests: dict[str, tuple[str, ...]]) -> str:
    blob = json.dumps({k: list(v) for k, v in sorted(tests.items())})
    return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


def profile_settings(profile: str, **overrides) -> dict:
    """The run-spec settings a profile fixes (training images, epochs, views, batch, selection, mode, view seed),
    with ``overrides`` for any of them. The one place a profile becomes spec fields."""
    prof = config.PROFILES[profile]
    settings = dict(train_limit=prof.train_limit, epochs=prof.epochs, views=prof.views, batch_size=prof.batch_size,
                    select=prof.select, mode=prof.mode, view_seed=prof.view_seed)
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"unknown run setting(s) {unknown}; choose from {sorted(settings)}")
    return {**settings, **overrides}


def _rank(ident: str) -> str:
    return hashlib.blake2b(ident.encode(), digest_size=8).hexdigest()


def draw_tests(internal: str, externals, eval_limit: int | None, internal_limit: int | None,
               test_draw: str = "hash") -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """The ids each dataset is scored on, and how many empty masks were left out of each pool.

    Internal: its test split (first ``internal_limit``). Externals (never trained on): all splits pooled, empty
    masks left out, then a deterministic draw by the hash of the id (independent of file order):
    ``test_draw="hash"`` keeps the ``eval_limit`` images of lowest hash (the same images for USGRA nerve and
    vessel: one set of encodes); ``"by_size"`` keeps every target in ``KEEP_ALL_BINS`` (< 1 % and > 20 % of the
    image) and the ``eval_limit`` lowest-hash targets of each other size bin (amendment v2 of docs/protocol.md).
    ``eval_limit=None`` keeps every non-empty image either way."""
    from sas_kit.experiment.evaluate import size_bin

    if test_draw not in TEST_DRAWS:
        raise ValueError(f"test_draw must be one of {TEST_DRAWS}, got {test_draw!r}")
    sets, empty = {}, {}
    for name in (internal, *externals):
        pool = load_pool(name, internal=name == internal, limit=internal_limit if name == internal else None)
        empty[name] = sum(bool(ex["empty"]) for ex in pool)
        pool = [ex for ex in pool if not ex["empty"]]
        if name != internal and eval_limit is not None:
            pool = sorted(pool, key=lambda ex: _rank(str(ex["id"])))
            if test_draw == "hash":
                pool = pool[:eval_limit]
            else:
                kept, per_bin = [], {}
                for ex in pool:
                    b = size_bin(float(ex["area_fraction"]))
                    per_bin[b] = per_bin.get(b, 0) + 1
                    if b in KEEP_ALL_BINS or per_bin[b] <= eval_limit:
                        kept.append(ex)
                pool = kept
        sets[name] = tuple(str(ex["id"]) for ex in pool)
    return sets, empty


def load_pool(name: str, internal: bool, limit: int | None = None) -> list:
    """The examples a test set is drawn from: the internal dataset's test split, an external's every split."""
    if internal:
        return list(datasets.load(name, "test", limit))
    return [ex for split in datasets.SPLITS for ex in datasets.load(name, split)]


def load_tests(tests: dict[str, tuple[str, ...]], internal: str, names=None) -> dict[str, list]:
    """The examples of ``tests`` (dataset → ids), in order; an id no longer in the data is an error."""
    out = {}
    for name in names or tests:
        pool = {str(ex["id"]): ex for ex in load_pool(name, internal=name == internal)}
        missing = [i for i in tests[name] if i not in pool]
        if missing:
            raise ValueError(f"{name}: {len(missing)} test id(s) of the plan are not in the prepared data "
                             f"(e.g. {missing[:3]}); rebuild the plan (`sas-kit data prepare {name}` changed it?)")
        out[name] = [pool[i] for i in tests[name]]
    return out


def read_sas_params(sas_params) -> tuple[dict, str]:
    """(params, where they came from) from a dict or the JSON file written by ``sas-kit sweep`` (its ``params``)."""
    if isinstance(sas_params, (str, Path)):
        path = Path(sas_params)
        try:
            params = dict(json.loads(path.read_text())["params"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a SAS parameter file written by `sas-kit sweep` ({err})") from None
        return params, f"{path} (chosen by `sas-kit sweep` on the internal val split)"
    if sas_params:
        return dict(sas_params), "given by the caller"
    return {}, "kit defaults (docs/sas_parameters.md), fixed before the run"


def _source(data: str) -> str:
    """Where the images came from, without this machine's paths (plan.json and reports are committed)."""
    if data != "real":
        return "phantom"
    return "real: the mirror in $SAS_KIT_MIRROR" if config.mirror_dir() else "real: prepared copies in the data root"


def make_plan(profile: str = "quick", model: str = "litemedsam", data: str = "auto", arms=None,
              sas_params: str | Path | dict | None = None, seeds=None, prompts=None, precision: str | None = None,
              device: str | None = None, eval_limit: int | None = -1, test_draw: str | None = None,
              noc: tuple[float, ...] | None = None, max_clicks: int | None = None, **settings) -> Plan:
    """The finished plan: real data (bus_bra internal, five externals) when a mirror or prepared copies exist, else
    the phantom; every run's spec resolved and validated now (a bad SAS parameter fails here, before any training).

    ``sas_params``: a dict or the JSON file written by ``sas-kit sweep``. ``seeds``, ``prompts``, ``precision``,
    ``device``, ``eval_limit``, ``test_draw``, ``noc``, ``max_clicks`` and ``settings`` (the fields of
    :func:`profile_settings`) override the profile's. The number-of-clicks metric is scored on the fine-tuned arms
    only (zero-shot LiteMedSAM clicks score ≈ 0 and are not scored: the box is its reference)."""
    prof = config.PROFILES[profile]
    if data == "auto":
        data = "real" if all(datasets.available(n) for n in (INTERNAL, *EXTERNALS)) else "phantom"
    internal, externals = (INTERNAL, EXTERNALS) if data == "real" else ("phantom", ())
    arms = tuple(arms) if arms else HEADLINE_ARMS
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {ARMS}")
    seeds = tuple(int(s) for s in (seeds if seeds is not None else prof.seeds))
    prompts = tuple(prompts or prof.prompts)
    for p in prompts:
        if p not in prompt_names.PROMPTS:
            raise ValueError(f"unknown prompt {p!r}; choose from {prompt_names.PROMPTS}")
    run = profile_settings(profile, **settings)
    device = config.device(device)
    precision = policy.resolve(precision, device)
    params, source = read_sas_params(sas_params)
    arm_params("sas", params)  # validated now, whether or not the sas arm runs
    genseg_params = dict(prof.genseg)
    arm_params("genseg", genseg_params)
    eval_limit = prof.eval_limit if eval_limit == -1 else eval_limit
    test_draw = test_draw or prof.test_draw
    noc = tuple(float(t) for t in (prof.noc if noc is None else noc))
    max_clicks = int(prof.max_clicks if max_clicks is None else max_clicks)
    if noc and (max_clicks < 1 or not all(0 < t <= 1 for t in noc)):
        raise ValueError(f"noc thresholds must be IoU values in (0, 1] and max_clicks >= 1, got {noc}, {max_clicks}")
    internal_limit = eval_limit if profile == "quick" else None
    val_limit = eval_limit if run["select"] == "best" else 0

    train = load_samples(internal, "train", run["train_limit"])
    if not train and any(a != "zero_shot" for a in arms):
        raise ValueError(f"dataset {internal!r} has no training images; prepare it with `sas-kit data prepare {internal}`")
    val = load_samples(internal, "val", val_limit)
    tests, empty = draw_tests(internal, externals, eval_limit, internal_limit, test_draw)

    def spec(arm: str, seed: int, n: int | None = None) -> RunSpec:
        limit = run["train_limit"] if n is None else n
        key = data_key(train if n is None else train[:n], val)
        given = params if arm == "sas" else genseg_params if arm == "genseg" else None
        return RunSpec.build(model, internal, arm, seed, params=given, precision=precision, device=device,
                             data_key=key, val_limit=val_limit, **{**run, "train_limit": limit})

    names = (internal, *externals)
    tasks = []
    for seed in seeds:
        for arm in arms:
            if arm == "zero_shot":
                if seed == seeds[0]:
                    tasks.append(Task(spec(arm, seed), names, tuple(p for p in prompts if p in ZERO_SHOT_PROMPTS)))
            else:
                tasks.append(Task(spec(arm, seed), names, prompts, noc=noc, max_clicks=max_clicks))
    if "genseg" in arms:  # GenSeg's own figure: Dice against the number of real training images
        for n in sorted({n for n in prof.low_data if 0 < n < len(train)}):
            for arm in (a for a in CURVE_ARMS if a in arms):
                tasks.append(Task(spec(arm, seeds[0], n), (internal,), prompts, curve=True))
    return Plan(profile=profile, model=model, internal=internal, externals=tuple(externals), arms=arms,
                prompts=prompts, seeds=seeds, epochs=run["epochs"], views=run["views"], mode=run["mode"],
                view_seed=run["view_seed"], batch_size=run["batch_size"], select=run["select"], precision=precision,
                device=device, train_limit=run["train_limit"], eval_limit=eval_limit, test_draw=test_draw, noc=noc,
                max_clicks=max_clicks, internal_limit=internal_limit,
                train_images=len(train), sas_params=params, sas_params_source=source, genseg_params=genseg_params,
                low_data=prof.low_data if "genseg" in arms else (),
                data_source=_source(data),
                tests=tests, empty=empty, tasks=tuple(tasks))

