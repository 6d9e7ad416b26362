"""The paper's protocol on public data: the plan, then arms x seeds trained and scored on every test set."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sas_kit import config
from sas_kit.augment import genseg
from sas_kit.data import datasets, sources
from sas_kit.experiment.embed_cache import EmbeddingCache
from sas_kit.experiment.evaluate import evaluate
from sas_kit.experiment.train import TrainConfig, train_arrays
from sas_kit.models import prompts, registry, segment

ARMS = ("zero_shot", "none", "classic", "stsnet", "genseg", "sas")
HEADLINE_ARMS = ("zero_shot", "none", "sas")
PROMPTS = prompts.PROMPTS[:4]  # box and 1-3 clicks (5click: `sas-kit evaluate` only)
ZERO_SHOT_PROMPTS = ("box",)  # LiteMedSAM's zero-shot clicks score ≈ 0 (docs/notes.md): box is the reference
INTERNAL = "bus_bra"
EXTERNALS = ("busi", "hc18", "carotid_cca", "usgra_nerve", "usgra_vessel")


@dataclass
class Plan:
    """What one reproduction runs: resolved from a profile, a model and the data available."""

    profile: str
    model: str
    internal: str
    externals: tuple[str, ...]
    arms: tuple[str, ...] = HEADLINE_ARMS
    prompts: tuple[str, ...] = PROMPTS
    seeds: tuple[int, ...] = (0,)
    epochs: int = 1
    views: int = 3
    mode: str = "decoder"
    view_seed: int | None = None
    batch_size: int = 4
    select: str = "best"
    precision: str | None = None
    train_limit: int | None = None
    eval_limit: int | None = None  # per external dataset
    internal_limit: int | None = None  # None: the whole internal test split
    sas_params: dict = field(default_factory=dict)
    genseg_params: dict = field(default_factory=dict)  # GenSegParams overrides for the genseg arm's generator
    low_data: tuple[int, ...] = ()  # sizes of the low-data curve (experiment/low_data.py)
    sas_params_source: str = "kit defaults (docs/sas_parameters.md), fixed before the run"
    data_source: str = "phantom"


def make_plan(profile: str = "quick", model: str = "litemedsam", data: str = "auto", arms=None,
              sas_params: str | Path | dict | None = None, **overrides) -> Plan:
    """Real data (bus_bra internal, five externals) when a mirror or prepared copies exist, else the phantom.
    ``sas_params``: a dict or the JSON file written by ``sas-kit sweep`` (its ``params``)."""
    prof = config.PROFILES[profile]
    if data == "auto":
        data = "real" if all(datasets.available(n) for n in (INTERNAL, *EXTERNALS)) else "phantom"
    internal, externals = (INTERNAL, EXTERNALS) if data == "real" else ("phantom", ())
    arms = tuple(arms) if arms else HEADLINE_ARMS
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {ARMS}")
    plan = Plan(profile=profile, model=model, internal=internal, externals=tuple(externals), arms=arms,
                prompts=prof.prompts, seeds=prof.seeds, epochs=prof.epochs, views=prof.views, mode=prof.mode,
                view_seed=prof.view_seed, batch_size=prof.batch_size, select=prof.select,
                train_limit=prof.train_limit, eval_limit=prof.eval_limit, genseg_params=dict(prof.genseg),
                low_data=prof.low_data,
                internal_limit=prof.eval_limit if profile == "quick" else None,
                data_source="real: " + str(config.mirror_dir() or config.data_root()) if data == "real" else "phantom")
    if isinstance(sas_params, (str, Path)):
        path = Path(sas_params)
        try:
            plan.sas_params = dict(json.loads(path.read_text())["params"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a SAS parameter file written by `sas-kit sweep` ({err})") from None
        plan.sas_params_source = f"{path} (chosen by `sas-kit sweep` on the internal val split)"
    elif sas_params:
        plan.sas_params, plan.sas_params_source = dict(sas_params), "given by the caller"
    for key, value in overrides.items():
        setattr(plan, key, tuple(value) if isinstance(value, list) else value)
    return plan


def _rank(ident: str) -> str:
    return hashlib.blake2b(ident.encode(), digest_size=8).hexdigest()


def test_sets(plan: Plan) -> dict[str, list]:
    """The images each dataset is scored on (:func:`test_pools` without the counts)."""
    return test_pools(plan)[0]


def test_pools(plan: Plan) -> tuple[dict[str, list], dict[str, int]]:
    """The images each dataset is scored on, and how many empty masks were left out of each pool.

    Internal: its whole test split. Externals (never trained on): all splits pooled, empty masks left out, then
    the ``eval_limit`` images with the lowest hash of their id — a deterministic draw that does not depend on
    file order, and that picks the same images for USGRA nerve and vessel (one set of encodes)."""
    sets, empty = {}, {}
    for name in (plan.internal, *plan.externals):
        if name == plan.internal:
            pool = list(datasets.load(name, "test", plan.internal_limit))
        else:
            pool = [ex for split in datasets.SPLITS for ex in datasets.load(name, split)]
        empty[name] = sum(bool(ex["empty"]) for ex in pool)
        pool = [ex for ex in pool if not ex["empty"]]
        if name != plan.internal:
            pool = sorted(pool, key=lambda ex: _rank(str(ex["id"])))[:plan.eval_limit]
        sets[name] = pool
    return sets, empty


def arm_config(plan: Plan, arm: str, seed: int, out: Path, progress: bool = True, policy=None, **extra) -> TrainConfig:
    """The TrainConfig of one fine-tuned arm: every arm takes the same views, steps and prompts; ``none`` sees
    ``views`` copies of the original (same steps, no extra encodes), the others ``views - 1`` policy views.
    ``policy``: a callable that replaces the arm's named policy (the genseg arm's, see :func:`genseg_policy`)."""
    return TrainConfig(model=plan.model, data=plan.internal, policy=policy or arm, mode=plan.mode, epochs=plan.epochs,
                       views=plan.views, seed=seed, view_seed=plan.view_seed, batch_size=plan.batch_size,
                       select=plan.select, precision=plan.precision,
                       policy_params=plan.sas_params if arm == "sas" else {},
                       out=str(out / "runs" / f"{arm}_seed{seed}"), progress=progress, **extra)


def reuse_or_train(cfg: TrainConfig, train, val, cache):
    """A finished run in ``cfg.out`` with the same settings and the same training images is reused (a warm rerun
    costs no training); an interrupted one is resumed; one made from other settings or images is replaced."""
    if (Path(cfg.out) / "last.pt").exists():
        try:
            result = train_arrays(cfg, train, val, cache=cache, resume=True)
            if result.steps == 0:
                print(f"reused finished run {cfg.out} (same settings and training images)")
            return result
        except ValueError as why:
            print(f"retraining {cfg.out}: {why}")
            shutil.rmtree(cfg.out)
    return train_arrays(cfg, train, val, cache=cache)


def genseg_policy(plan: Plan, train, seed: int, progress: bool = True) -> genseg.GenSegPolicy:
    """The genseg arm's policy: a pix2pix generator trained on ``train`` with ``seed`` (cached by images, seed
    and parameters), turning GenSeg-augmented masks into synthetic images."""
    params = genseg.GenSegParams(**plan.genseg_params)
    generator, record = genseg.load_or_train(train, params, seed, progress=progress)
    if progress:
        how = "cached" if record["cached"] else f"trained {record['steps']} steps"
        print(f"genseg generator {record['key'][:8]} ({len(train)} images): {how} in {record['seconds']:.0f} s")
    return genseg.GenSegPolicy(generator, params, key=record["key"])


def train_arms(plan: Plan, train, val, cache: EmbeddingCache | None, out: Path, progress: bool = True):
    """Fine-tune every arm x seed of ``plan`` (zero_shot excepted). Returns (checkpoints {(arm, seed): path},
    history rows, prompted samples per arm x seed)."""
    checkpoints, history, samples = {}, [], {}
    for seed in plan.seeds:
        for arm in plan.arms:
            if arm == "zero_shot":
                continue
            policy = genseg_policy(plan, train, seed, progress) if arm == "genseg" else None
            cfg = arm_config(plan, arm, seed, out, progress, policy=policy)
            result = reuse_or_train(cfg, train, val, cache if plan.mode == "decoder" else None)
            checkpoints[(arm, seed)] = result.best
            samples[(arm, seed)] = result.samples
            for epoch, (loss, dice) in enumerate(zip(result.train_loss, result.val_dice), start=1):
                history.append({"arm": arm, "seed": seed, "epoch": epoch, "train_loss": loss, "val_dice": dice,
                                "val_dice_initial": result.val_dice_initial, "best_epoch": result.best_epoch,
                                "samples": result.samples, "steps": result.steps})
    return checkpoints, history, samples


def evaluate_arms(plan: Plan, tests: dict[str, list], checkpoints: dict, cache: EmbeddingCache | None,
                  progress: bool = True, zero_shot_prompts=ZERO_SHOT_PROMPTS) -> pd.DataFrame:
    """Score every arm x seed on every test set (zero_shot once, with ``zero_shot_prompts``): one row per
    image x prompt."""
    spec = registry.get_spec(plan.model)
    frames = []
    for arm in plan.arms:
        seeds = plan.seeds[:1] if arm == "zero_shot" else plan.seeds
        prompts = [p for p in plan.prompts if p in zero_shot_prompts] if arm == "zero_shot" else plan.prompts
        for seed in seeds:
            sam = registry.load_model(plan.model, checkpoint=checkpoints.get((arm, seed)), device=config.device())
            for name, items in tests.items():
                df = evaluate(sam, spec, items, prompts, seed=seed, progress=progress, embeddings=cache,
                              precision=cache.precision if cache else "fp32")
                frames.append(df.assign(dataset=name, target=sources.get(name).target, arm=arm, seed=seed,
                                        role="internal" if name == plan.internal else "external"))
            del sam
    return pd.concat(frames, ignore_index=True)


def example_panels(plan: Plan, tests: dict, checkpoints: dict, cache, n: int = 4) -> list[tuple]:
    """Box-prompt predictions of zero-shot, none and SAS (first seed) on the smallest test targets."""
    from sas_kit.models import precision as policy

    arms = [a for a in ("zero_shot", "none", "sas") if a in plan.arms]
    spec = registry.get_spec(plan.model)
    picks = sorted(((ex["area_fraction"], name, ex) for name, items in tests.items() for ex in items),
                   key=lambda t: t[0])[:n]
    sams = {arm: registry.load_model(plan.model, checkpoint=checkpoints.get((arm, plan.seeds[0])), device=config.device())
            for arm in arms}
    panels = []
    for area, name, example in picks:
        image, gt = datasets.to_arrays(example)
        preds = {}
        for arm, sam in sams.items():
            emb, meta = cache.get(sam, spec, image, device=sam.device) if cache else registry.encode(sam, spec, image)
            with policy.decoder(sam.device, cache.precision if cache else "fp32"):
                preds[arm] = segment.predict(sam, spec, image, gt, "box", embedding=emb, meta=meta)
        panels.append((f"{name} {100 * area:.1f}%", image, gt, preds))
    return panels
