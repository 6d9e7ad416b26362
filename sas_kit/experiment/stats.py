"""Pre-registered endpoints of a reproduction and their CIs from a bootstrap over seeds and images together."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sas_kit.experiment.evaluate import SIZE_BINS, size_bin
from sas_kit.models.prompts import PROMPTS

N_BOOT = 2000
CLUSTERS = {"usgra_nerve": "usgra", "usgra_vessel": "usgra"}  # same images: one cluster (docs/protocol.md)
PRIMARY_PROMPTS = ("1click", "2click")


def cluster_of(dataset: str) -> str:
    return CLUSTERS.get(dataset, dataset)


def _matrix(per_image: pd.DataFrame, arm: str, ref: str, prompt: str, ref_prompt: str | None = None) -> pd.DataFrame:
    """Per (dataset, id) x seed: Dice of ``arm`` at ``prompt`` minus Dice of ``ref`` at ``ref_prompt`` (same
    seed; a reference with one seed only, such as zero_shot, is broadcast to every seed)."""
    ref_prompt = ref_prompt or prompt
    a = per_image[(per_image.arm == arm) & (per_image.prompt == prompt)]
    b = per_image[(per_image.arm == ref) & (per_image.prompt == ref_prompt)]
    if a.empty or b.empty:
        return pd.DataFrame()
    a = a.pivot_table(index=["dataset", "id"], columns="seed", values="dice")
    b = b.pivot_table(index=["dataset", "id"], columns="seed", values="dice")
    if b.shape[1] == 1 and a.shape[1] > 1:
        b = pd.DataFrame({s: b.iloc[:, 0] for s in a.columns})
    seeds = [s for s in a.columns if s in b.columns]
    return (a[seeds] - b[seeds]).dropna()


def clustered_mean(diff: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05,
                   by_dataset: bool = True) -> tuple[float, float, float, int, int]:
    """(estimate, low, high, n images, n seeds) of the mean gain in ``diff`` (rows (dataset, id), columns seeds).

    Estimate: mean over clusters of the mean over their datasets of the mean over images and seeds
    (``by_dataset``; else every row weighs the same). Each bootstrap replicate resamples the seeds (shared by
    all datasets: a seed is one training run) and, within each cluster, the image ids (an id drawn in USGRA
    brings its nerve and its vessel row), so the CI holds seed and image variance together."""
    if diff.empty:
        return float("nan"), float("nan"), float("nan"), 0, 0
    values = diff.to_numpy(dtype=np.float64)
    datasets = diff.index.get_level_values(0).to_numpy().astype(str)
    ids = diff.index.get_level_values(1).to_numpy().astype(str)
    n_rows, n_seeds = values.shape
    rng = np.random.default_rng(seed)
    # weights: replicate 0 is the data itself; replicates 1.. resample ids within clusters and seeds overall
    weights = np.ones((n_boot + 1, n_rows))
    clusters = np.array([cluster_of(d) for d in datasets])
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        uniq, unit = np.unique(ids[rows], return_inverse=True)
        draws = rng.integers(0, len(uniq), (n_boot, len(uniq)))
        counts = np.zeros((n_boot, len(uniq)))
        np.add.at(counts, (np.repeat(np.arange(n_boot), len(uniq)), draws.ravel()), 1)
        weights[1:, rows] = counts[:, unit]
    seed_w = np.ones((n_boot + 1, n_seeds)) / n_seeds
    seed_draws = rng.integers(0, n_seeds, (n_boot, n_seeds))
    seed_w[1:] = np.stack([np.bincount(s, minlength=n_seeds) for s in seed_draws]) / n_seeds
    per_row = seed_w @ values.T  # (replicates, rows): each row's mean over the drawn seeds
    if by_dataset:
        cluster_means = []
        for c in np.unique(clusters):
            ds_means = []
            for d in np.unique(datasets[clusters == c]):
                m = datasets == d
                w = weights[:, m]
                ds_means.append((w * per_row[:, m]).sum(1) / np.maximum(w.sum(1), 1e-12))
            cluster_means.append(np.mean(ds_means, axis=0))
        est = np.mean(cluster_means, axis=0)
    else:
        est = (weights * per_row).sum(1) / weights.sum(1)
    lo, hi = np.quantile(est[1:], [alpha / 2, 1 - alpha / 2])
    return float(est[0]), float(lo), float(hi), int(len(set(zip(datasets, ids)))), n_seeds


def _row(endpoint: str, kind: str, comparison: str, prompt: str, scope: str, diff: pd.DataFrame, **kw) -> dict:
    gain, lo, hi, n, s = clustered_mean(diff, **kw)
    return {"endpoint": endpoint, "kind": kind, "comparison": comparison, "prompt": prompt, "scope": scope,
            "n_images": n, "n_seeds": s, "gain": gain, "ci_low": lo, "ci_high": hi}


def endpoints(per_image: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Every endpoint of docs/protocol.md that the arms present allow, one row each (gains.csv).

    primary: external-average paired gain SAS − none at 1 and 2 clicks. secondary: the same at box; box
    forgetting (fine-tuned box − zero-shot box, per external set, arms none and sas); SAS − none by target size
    on external sets (< 1 %, 1–5 %, 5–20 %, > 20 % of the image), the > 20 % rows being the "large organs do not
    lose" check; 2-click − box after SAS (external average). per-dataset: SAS − none per dataset and prompt,
    controls (classic, stsnet, genseg) − none at the external average: labelled exploratory."""
    ext = per_image[per_image.role == "external"]
    arms, prompts = set(per_image.arm), [p for p in PROMPTS if p in set(per_image.prompt)]
    rows = []
    if {"sas", "none"} <= arms and not ext.empty:
        for p in prompts:
            kind = "primary" if p in PRIMARY_PROMPTS else "secondary"
            rows.append(_row("gain", kind, "sas-none", p, "external average", _matrix(ext, "sas", "none", p),
                             n_boot=n_boot))
        for p in prompts:
            d = _matrix(ext, "sas", "none", p)
            if d.empty:
                continue
            area = ext.drop_duplicates(["dataset", "id"]).set_index(["dataset", "id"]).area_fraction
            bins = area.reindex(d.index).map(size_bin)  # the one binning rule (evaluate.size_bin)
            for b in SIZE_BINS:
                sub = d[(bins == b).to_numpy()]
                if not sub.empty:
                    rows.append(_row("gain by size" + (" (large-organ check)" if b == ">20%" else ""), "secondary",
                                     "sas-none", p, f"external {b}", sub, n_boot=n_boot, by_dataset=False))
    if "zero_shot" in arms and "box" in prompts:
        for arm in ("none", "sas"):
            if arm in arms:
                for ds in sorted(set(ext.dataset)):
                    rows.append(_row("box forgetting", "secondary", f"{arm}-zero_shot", "box", ds,
                                     _matrix(ext[ext.dataset == ds], arm, "zero_shot", "box"), n_boot=n_boot))
    if "sas" in arms and {"box", "2click"} <= set(prompts) and not ext.empty:
        rows.append(_row("2-click minus box", "secondary", "sas 2click-box", "2click", "external average",
                         _matrix(ext, "sas", "sas", "2click", "box"), n_boot=n_boot))
    for arm in sorted(arms - {"zero_shot", "none", "sas"}):
        if "none" in arms:
            for p in prompts:
                rows.append(_row("control gain", "exploratory", f"{arm}-none", p, "external average",
                                 _matrix(ext, arm, "none", p), n_boot=n_boot))
    if {"sas", "none"} <= arms:
        for ds in sorted(set(per_image.dataset)):
            for p in prompts:
                rows.append(_row("gain per dataset", "exploratory", "sas-none", p, ds,
                                 _matrix(per_image[per_image.dataset == ds], "sas", "none", p), n_boot=n_boot))
    cols = ["endpoint", "kind", "comparison", "prompt", "scope", "n_images", "n_seeds", "gain", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=cols)


def detectable(gains: pd.DataFrame) -> float:
    """Largest CI half-width among the primary endpoints: an effect about 1.4x this size would be detected
    with ~80 % power at alpha 0.05 (half-width = 1.96 SE; 80 % power needs 2.8 SE)."""
    prim = gains[gains.kind == "primary"]
    return float(((prim.ci_high - prim.ci_low) / 2).max()) if not prim.empty else float("nan")
