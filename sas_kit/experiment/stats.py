"""Pre-registered endpoints of a reproduction (gains.csv) and their 95 % CIs.

Since amendment v2 of docs/protocol.md the CIs come from a two-stage t interval that holds seed variance (a seed
is one training run) and acquisition-group variance (frames of one recording, images of one subject or patient
move together): :mod:`sas_kit.experiment.intervals`. The v1 percentile bootstrap over seeds and images is kept
(``method="v1"``, :func:`clustered_mean`) to reproduce v1 numbers."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as st

from sas_kit.experiment import intervals
from sas_kit.experiment.evaluate import SIZE_BINS, size_bin
from sas_kit.models.prompts import PROMPTS

N_BOOT = 2000
CLUSTERS = {"usgra_nerve": "usgra", "usgra_vessel": "usgra"}  # same images: one cluster (docs/protocol.md)
PRIMARY_PROMPTS = ("1click", "2click")
# The named endpoints of amendment v2: (size bin, prompt) -> (endpoint, kind). External targets, pooled.
NAMED = {**{(b, p): ("small-target gain", "named") for b in ("<1%", "1-5%") for p in PRIMARY_PROMPTS},
         **{(">20%", p): ("large-target check", "named") for p in ("box", *PRIMARY_PROMPTS)}}
FAMILIES = ("primary", "named")  # Holm within each (p_values)


def control_arms(arms) -> list[str]:
    """The arms reported as exploratory control gains against ``none``: every arm but zero-shot, none and sas."""
    return sorted(set(arms) - {"zero_shot", "none", "sas"})


def cluster_of(dataset: str) -> str:
    return CLUSTERS.get(dataset, dataset)


def _matrix(per_image: pd.DataFrame, arm: str, ref: str, prompt: str, ref_prompt: str | None = None,
            value: str = "dice") -> pd.DataFrame:
    """Per (dataset, id, group) x seed: ``value`` (Dice; or a per-image column such as ``noc90``) of ``arm`` at
    ``prompt`` minus that of ``ref`` at ``ref_prompt`` (same seed; a reference with one seed only, such as
    zero_shot, is broadcast to every seed). ``group`` is the
    acquisition group of the image (recording, subject, patient: the prepared datasets' ``group`` field) when
    per_image has a ``group`` column, and the image id where it has none or the value is missing."""
    ref_prompt = ref_prompt or prompt
    a = per_image[(per_image.arm == arm) & (per_image.prompt == prompt)]
    b = per_image[(per_image.arm == ref) & (per_image.prompt == ref_prompt)]
    if a.empty or b.empty:
        return pd.DataFrame()
    a, b = with_group(a), with_group(b)
    if value not in a.columns or value not in b.columns:
        return pd.DataFrame()
    a = a.pivot_table(index=["dataset", "id", "group"], columns="seed", values=value)
    b = b.pivot_table(index=["dataset", "id", "group"], columns="seed", values=value)
    if b.shape[1] == 1 and a.shape[1] > 1:
        b = pd.DataFrame({s: b.iloc[:, 0] for s in a.columns})
    seeds = [s for s in a.columns if s in b.columns]
    return (a[seeds] - b[seeds]).dropna()


def with_group(per_image: pd.DataFrame) -> pd.DataFrame:
    """``per_image`` with a string ``group`` column: its own where present and non-empty, else the image id
    (datasets without acquisition groups — BUSI, USGRA — and per_image files written before groups were kept)."""
    ids = per_image["id"].astype(str)
    if "group" not in per_image.columns:
        return per_image.assign(group=ids)
    g = per_image["group"]
    missing = g.isna() | (g.astype(str).str.strip() == "")
    return per_image.assign(group=g.astype(str).where(~missing, ids))


def _layout(diff: pd.DataFrame, by_dataset: bool) -> tuple[intervals.Layout, np.ndarray, np.ndarray, np.ndarray]:
    datasets = diff.index.get_level_values(0).to_numpy().astype(str)
    ids = diff.index.get_level_values(1).to_numpy().astype(str)
    groups = (diff.index.get_level_values("group").to_numpy().astype(str) if "group" in diff.index.names else ids)
    clusters = np.array([cluster_of(d) for d in datasets])
    return intervals.make_layout(datasets, clusters, groups, by_dataset), datasets, clusters, ids


class GainInterval(NamedTuple):
    gain: float
    ci_low: float
    ci_high: float
    n_groups: int
    n_seeds: int
    se: float


def paired_gain_interval(diff: pd.DataFrame, alpha: float = 0.05, by_dataset: bool = True) -> GainInterval:
    """(gain, ci_low, ci_high, n_groups, n_seeds, se) of the mean paired gain in ``diff`` by method v2
    (:func:`sas_kit.experiment.intervals.two_stage`: a t interval whose variance is seed variance / S plus the
    cluster-robust acquisition-group variance; docs/protocol.md, amendment v2).

    ``diff``: rows (dataset, id[, group]) — the ``group`` index level from :func:`_matrix`; without it every image
    is its own group — columns seeds. Estimate: ``by_dataset`` — mean over clusters (external sets; USGRA nerve
    and vessel one cluster) of the mean over their datasets of the mean over images and seeds; else every row
    weighs the same. ``n_groups``: acquisition units, (cluster, group) pairs."""
    r = _interval(diff, alpha=alpha, by_dataset=by_dataset)
    return GainInterval(r["gain"], r["ci_low"], r["ci_high"], r["n_groups"], r["n_seeds"], r["se"])


def _interval(diff: pd.DataFrame, alpha: float = 0.05, by_dataset: bool = True, method: str = "v2",
              n_boot: int = N_BOOT) -> dict:
    if diff.empty:
        return {"gain": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_images": 0,
                "n_groups": 0, "n_seeds": 0, "se": float("nan"), "df": float("nan"), "seed_gains": "",
                "method": intervals.V2 if method == "v2" else intervals.V1}
    layout, datasets, clusters, ids = _layout(diff, by_dataset)
    values = diff.to_numpy(dtype=np.float64)
    per_seed = " ".join(f"{s}:{g:+.4f}" for s, g in zip(diff.columns, values.T @ layout.weight))
    if method == "v2":
        r = intervals.two_stage(values, layout, alpha=alpha)
        name = intervals.V2 if values.shape[1] > 1 else intervals.V2 + "; 1 seed: no seed variance"
    elif method == "v1":
        r = intervals.percentile_bootstrap(values, datasets, clusters, ids, by_dataset=by_dataset, n_boot=n_boot,
                                           alpha=alpha)
        name = intervals.V1
    else:
        raise ValueError(f"unknown interval method {method!r} (v2, v1)")
    return {"gain": float(r["gain"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"]),
            "n_images": int(len(set(zip(datasets, ids)))), "n_groups": layout.n_units, "n_seeds": values.shape[1],
            "se": float(r["se"]), "df": float(r["df"]), "seed_gains": per_seed, "method": name}


def clustered_mean(diff: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05,
                   by_dataset: bool = True) -> tuple[float, float, float, int, int]:
    """Method v1, kept to reproduce v1 numbers: (estimate, low, high, n images, n seeds) by a percentile
    bootstrap that resamples the seeds and, within each cluster, the image ids (frames of one recording treated
    as independent; :func:`sas_kit.experiment.intervals.percentile_bootstrap`). Superseded by
    :func:`paired_gain_interval` (docs/protocol.md, amendment v2): with few seeds it under-covers."""
    if diff.empty:
        return float("nan"), float("nan"), float("nan"), 0, 0
    _, datasets, clusters, ids = _layout(diff, by_dataset)
    r = intervals.percentile_bootstrap(diff.to_numpy(dtype=np.float64), datasets, clusters, ids,
                                       by_dataset=by_dataset, n_boot=n_boot, seed=seed, alpha=alpha)
    return float(r["gain"]), float(r["ci_low"]), float(r["ci_high"]), int(len(set(zip(datasets, ids)))), diff.shape[1]


def _row(endpoint: str, kind: str, comparison: str, prompt: str, scope: str, diff: pd.DataFrame, **kw) -> dict:
    r = _interval(diff, **kw)
    return {"endpoint": endpoint, "kind": kind, "comparison": comparison, "prompt": prompt, "scope": scope,
            "n_images": r["n_images"], "n_seeds": r["n_seeds"], "gain": r["gain"], "ci_low": r["ci_low"],
            "ci_high": r["ci_high"], "n_groups": r["n_groups"], "se": r["se"], "df": r["df"], "method": r["method"],
            "seed_gains": r["seed_gains"]}


def p_values(gains: pd.DataFrame) -> pd.DataFrame:
    """``gains`` with ``p`` (two-sided t test of gain = 0 with the row's SE and df; v1 rows, which have no SE,
    get none) and ``p_holm``: Holm's step-down adjustment within each family of :data:`FAMILIES` (the primary
    endpoints; the named small- and large-target endpoints), NaN outside them. docs/protocol.md, amendment v2."""
    out = gains.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(out.gain.to_numpy(float) / out.se.to_numpy(float))
    out["p"] = 2 * st.t.sf(t, out.df.to_numpy(float))
    out["p_holm"] = np.nan
    for kind in FAMILIES:
        family = out.p[(out.kind == kind) & out.p.notna()]
        out.loc[family.index, "p_holm"] = holm(family)
    return out


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjusted p-values of one family (same index as ``p``)."""
    order = p.sort_values()
    m = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * order.to_numpy(float))) if m else []
    return pd.Series(adjusted, index=order.index).reindex(p.index)


def clicks_to_box(gains: pd.DataFrame) -> pd.DataFrame:
    """How many clicks reach box Dice, per arm, from the "k-click minus box" rows of ``gains`` (external average,
    the same arm's k-click Dice minus its box Dice, v2 interval): ``clicks`` — the first k whose estimate is ≥ 0;
    ``clicks_low`` — the first k whose CI reaches 0 (box quality not excluded); ``clicks_high`` — the first k whose
    CI lies above 0 (box quality reached with 95 % confidence). ``None`` where no k scored qualifies ("> k_max")."""
    rows = []
    sub = gains[gains.endpoint == "k-click minus box"]
    sub = sub.assign(arm=sub.comparison.str.split().str[0])
    for arm, g in sub.groupby("arm", sort=False):
        g = g.assign(k=g.prompt.str[0].astype(int)).sort_values("k")

        def first(mask):
            hit = g.k[mask.to_numpy()]
            return int(hit.iloc[0]) if len(hit) else None

        rows.append({"arm": arm, "k_max": int(g.k.max()), "clicks": first(g.gain >= 0),
                     "clicks_low": first(g.ci_high >= 0), "clicks_high": first(g.ci_low >= 0)})
    return pd.DataFrame(rows, columns=["arm", "k_max", "clicks", "clicks_low", "clicks_high"])


def endpoints(per_image: pd.DataFrame, n_boot: int = N_BOOT, method: str = "v2") -> pd.DataFrame:
    """Every endpoint of docs/protocol.md that the arms present allow, one row each (gains.csv).

    primary: external-average paired gain SAS − none at 1 and 2 clicks. secondary: the same at box; box
    forgetting (fine-tuned box − zero-shot box, per external set, arms none and sas); SAS − none by target size
    on external sets (< 1 %, 1–5 %, 5–20 %, > 20 % of the image), the > 20 % rows being the "large organs do not
    lose" check; 2-click − box after SAS (external average). per-dataset: SAS − none per dataset and prompt,
    controls (classic, stsnet, genseg) − none at the external average: labelled exploratory.

    CIs: ``method="v2"`` (default, amendment v2) the two-stage t interval of :func:`paired_gain_interval` —
    acquisition groups from per_image's ``group`` column when it has one, else each image its own group;
    ``method="v1"`` the v1 percentile bootstrap with ``n_boot`` replicates (``n_boot`` is used by v1 only).
    Columns: the v1 ones, then ``n_groups``, ``se``, ``df`` (t degrees of freedom) and ``method``."""
    ext = per_image[per_image.role == "external"]
    arms, prompts = set(per_image.arm), [p for p in PROMPTS if p in set(per_image.prompt)]
    kw = {"n_boot": n_boot, "method": method}
    rows = []
    if {"sas", "none"} <= arms and not ext.empty:
        for p in prompts:
            kind = "primary" if p in PRIMARY_PROMPTS else "secondary"
            rows.append(_row("gain", kind, "sas-none", p, "external average", _matrix(ext, "sas", "none", p), **kw))
        area = ext.drop_duplicates(["dataset", "id"]).set_index(["dataset", "id"]).area_fraction
        for p in prompts:
            d = _matrix(ext, "sas", "none", p)
            if d.empty:
                continue
            bins = area.reindex(d.index.droplevel("group")).map(size_bin)  # the one binning rule (evaluate.size_bin)
            for b in SIZE_BINS:
                sub = d[(bins == b).to_numpy()]
                if not sub.empty:
                    name, kind = NAMED.get((b, p), ("gain by size", "secondary"))
                    rows.append(_row(name, kind, "sas-none", p, f"external {b}", sub, by_dataset=False, **kw))
        for col in [c for c in ext.columns if c.startswith("noc")]:
            first = prompts[0]  # NoC is the same on every prompt row of an image: read it once
            rows.append(_row("NoC gain (negative: fewer clicks)", "secondary", "sas-none", col, "external average",
                             _matrix(ext, "sas", "none", first, value=col), **kw))
    if "zero_shot" in arms and "box" in prompts:
        for arm in ("none", "sas"):
            if arm in arms:
                for ds in sorted(set(ext.dataset)):
                    rows.append(_row("box forgetting", "secondary", f"{arm}-zero_shot", "box", ds,
                                     _matrix(ext[ext.dataset == ds], arm, "zero_shot", "box"), **kw))
    if "box" in prompts and not ext.empty:  # the click curve against box Dice: how many clicks reach the box
        for arm in ("none", "sas"):
            if arm in arms:
                for p in prompts[1:]:
                    rows.append(_row("k-click minus box", "secondary", f"{arm} {p}-box", p, "external average",
                                     _matrix(ext, arm, arm, p, "box"), **kw))
    for arm in control_arms(arms):
        if "none" in arms:
            for p in prompts:
                rows.append(_row("control gain", "exploratory", f"{arm}-none", p, "external average",
                                 _matrix(ext, arm, "none", p), **kw))
    if {"sas", "none"} <= arms:
        for ds in sorted(set(per_image.dataset)):
            for p in prompts:
                rows.append(_row("gain per dataset", "exploratory", "sas-none", p, ds,
                                 _matrix(per_image[per_image.dataset == ds], "sas", "none", p), **kw))
    return p_values(pd.DataFrame(rows, columns=GAINS_COLUMNS[:-2]))


GAINS_COLUMNS = ["endpoint", "kind", "comparison", "prompt", "scope", "n_images", "n_seeds", "gain", "ci_low",
                 "ci_high", "n_groups", "se", "df", "method", "seed_gains", "p", "p_holm"]


def detectable(gains: pd.DataFrame, alpha: float = 0.05, power: float = 0.80) -> float:
    """Smallest true gain the run would detect with ``power`` (80 %) at two-sided ``alpha`` (0.05) on the
    primary endpoints (the largest over them): (t_{1−alpha/2, df} + t_{power, df}) x SE from the same two-stage
    interval — 2.8 x SE when the degrees of freedom are large, about 3.7 x SE when five seeds dominate (df ≈ 4).
    A gains table without ``se``/``df`` (written by v1) gives (z_{1−alpha/2} + z_{power}) x SE with SE = CI
    half-width / z_{1−alpha/2}: 2.8 x SE, the v1 reading."""
    prim = gains[gains.kind == "primary"]
    if prim.empty:
        return float("nan")
    if {"se", "df"} <= set(prim.columns) and prim.se.notna().all():
        return float(np.max(intervals.detectable_effect(prim.se.to_numpy(float), prim.df.to_numpy(float),
                                                        alpha, power)))
    z = st.norm.ppf(1 - alpha / 2)
    return float(((prim.ci_high - prim.ci_low) / 2).max() / z * (z + st.norm.ppf(power)))
