"""Intervals for a paired gain measured on several training seeds and on clustered test images.

The data of one endpoint is a matrix ``values[row, seed]``: the paired per-image gain (say Dice of SAS − Dice of
none, same image, prompt and seed). Each row belongs to a *cell* (a dataset: the estimate averages cells with
fixed weights) and to an acquisition *unit* (a recording, subject or patient: its frames are not independent).
Three things make the estimate vary, and the interval must hold all three:

- **seeds**: a seed is one whole training run; a new run moves the gain of every image at once;
- **acquisition groups**: other recordings/subjects of the same set would give other images;
- **images** (within a group) — they travel with their group.

Method v2 (:func:`two_stage`, docs/protocol.md, amendment v2) — a variance-components t interval
---------------------------------------------------------------------------------------------
Point estimate: the weighted average of the rows (weight ``a_r``: each external set weighs the same, USGRA nerve
and vessel share one set's weight) of each row's mean over seeds — equally, the mean over seeds of the per-seed
estimates ``T_s``.

    Var = Var_seed + Var_group
    Var_seed  = sample variance of the S per-seed estimates T_s / S              (S − 1 degrees of freedom)
    Var_group = cluster-robust ("sandwich", CR1) variance of the seed-averaged gains, groups as the clusters,
                minus the seed-by-image noise that Var_seed already holds           (G − 1 df per set)

The seed stage is an ordinary t interval on S numbers — with 5 seeds a bootstrap over seeds can produce only a
handful of distinct means and its percentiles are too narrow (they behave like z with a variance shrunk by
(S−1)/S, i.e. ~85 % coverage where 95 % is asked). The group stage is the textbook variance of a mean of cluster
totals. The seed-by-image noise (a run being lucky on one image) appears in both stages; it is estimated from the
residuals of the seed x row table and subtracted once. The two parts are combined into one t interval whose
degrees of freedom come from the Welch–Satterthwaite formula: near S − 1 when seeds dominate (the usual case),
large when groups do. Everything is a closed form in numpy, vectorised over any leading axes (a coverage
simulation scores thousands of data sets in one call).

Method v1 (:func:`percentile_bootstrap`) is kept unchanged to reproduce v1 numbers and as the comparison in
tests/test_stats.py: it resamples seeds and image ids (not groups) and takes percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as st

V2 = "two-stage t (seeds + groups)"
V1 = "v1 percentile bootstrap (seeds + images)"


@dataclass(frozen=True)
class Layout:
    """How the rows of a ``values`` matrix are weighted and grouped (fixed across repeats of a simulation)."""

    weight: np.ndarray  # (rows,) a_r, sums to 1
    cell: np.ndarray  # (rows,) int: cell (dataset) of the row, for centring
    unit: np.ndarray  # (rows,) int: acquisition unit of the row (units numbered stratum by stratum)
    unit_stratum: np.ndarray  # (units,) int: stratum (set / cluster) of each unit
    n_cells: int
    n_units: int
    n_strata: int

    @property
    def units_per_stratum(self) -> np.ndarray:
        return np.bincount(self.unit_stratum, minlength=self.n_strata)


def dataset_shares(cells: np.ndarray, clusters: np.ndarray):
    """The external average's weights: for each dataset, (its rows as a mask, the number of equal parts its share
    is: clusters x datasets in its cluster). Each cluster weighs the same, and inside it each of its datasets."""
    cluster_names = np.unique(clusters)
    for c in cluster_names:
        ds = np.unique(cells[clusters == c])
        for d in ds:
            yield cells == d, len(cluster_names) * len(ds)


def make_layout(cells, clusters, groups, by_dataset: bool = True) -> Layout:
    """Layout of rows given each row's cell (dataset), cluster (external set; USGRA nerve and vessel share one)
    and acquisition group. ``by_dataset``: each cluster weighs the same and, inside it, each of its datasets
    (the external average); else every row weighs the same (pooled, e.g. size bins) and all groups form one
    stratum. A unit is (cluster, group): a USGRA group brings its nerve and its vessel rows."""
    cells, clusters, groups = (np.asarray(x).astype(str) for x in (cells, clusters, groups))
    cell_names, cell = np.unique(cells, return_inverse=True)
    n = len(cells)
    if by_dataset:
        weight = np.zeros(n)
        for m, parts in dataset_shares(cells, clusters):
            weight[m] = 1.0 / (parts * m.sum())
        stratum_of_row = np.unique(clusters, return_inverse=True)[1]
    else:
        weight = np.full(n, 1.0 / n)
        cell = np.zeros(n, dtype=int)
        cell_names = np.array(["all"])
        stratum_of_row = np.zeros(n, dtype=int)
    # units numbered stratum by stratum: key (stratum, cluster, group)
    keys = np.array([f"{s:06d}\x1f{c}\x1f{g}" for s, c, g in zip(stratum_of_row, clusters, groups)])
    unit_names, unit = np.unique(keys, return_inverse=True)
    unit_stratum = np.array([int(k.split("\x1f")[0]) for k in unit_names], dtype=int)
    return Layout(weight=weight, cell=cell, unit=unit, unit_stratum=unit_stratum, n_cells=len(cell_names),
                  n_units=len(unit_names), n_strata=int(stratum_of_row.max()) + 1 if n else 0)


def _sum_by(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sum the last axis of ``x`` into bins 0, 1, ... by ``index`` (every bin non-empty; vectorised over leading
    axes): sort once, then add contiguous runs."""
    order = np.argsort(index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(index[order]) != 0])
    return np.add.reduceat(x[..., order], starts, axis=-1)


def two_stage(values: np.ndarray, layout: Layout, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """The v2 interval (module docstring) for ``values`` of shape (..., rows, seeds).

    Returns arrays over the leading axes: ``gain``, ``ci_low``, ``ci_high``, ``se``, ``df`` (Welch–Satterthwaite),
    ``var_seed``, ``var_group``, and ``per_seed`` (..., seeds): each training run's own estimate (their mean is
    ``gain``). With one seed the seed variance cannot be estimated and is set to 0 (the
    interval then holds group variance only); a stratum with a single group contributes no group variance."""
    values = np.asarray(values, dtype=np.float64)
    n_seeds = values.shape[-1]
    a = layout.weight
    row_mean = values.mean(-1)  # (..., rows): each image's gain averaged over seeds
    gain = row_mean @ a
    per_seed = np.swapaxes(values, -1, -2) @ a  # (..., seeds): T_s, the estimate of each training run
    # centring: each cell (dataset) at its own mean (cells have equal weights inside)
    cell_n = np.bincount(layout.cell, minlength=layout.n_cells).astype(float)
    cell_mean = _sum_by(row_mean, layout.cell) / cell_n  # (..., cells)
    centred = (row_mean - cell_mean[..., layout.cell]) * a
    h = _sum_by(centred, layout.unit)  # (..., units): each group's influence on the estimate
    g = layout.units_per_stratum.astype(float)
    factor = np.where(g > 1, g / np.maximum(g - 1, 1), 0.0)
    var_strata = _sum_by(h**2, layout.unit_stratum) * factor  # (..., strata), CR1
    var_cluster = var_strata.sum(-1)
    if n_seeds > 1:
        var_seed = per_seed.var(-1, ddof=1) / n_seeds
        # seed-by-row residuals: what is left after row means and each cell's per-seed mean
        vs = np.swapaxes(values, -1, -2)  # (..., seeds, rows)
        cell_seed_mean = _sum_by(vs, layout.cell) / cell_n  # (..., seeds, cells)
        resid = vs - row_mean[..., None, :] - (cell_seed_mean - cell_mean[..., None, :])[..., layout.cell]
        r_unit = _sum_by(resid * a, layout.unit)  # (..., seeds, units)
        double = (r_unit**2).sum((-1, -2)) / ((n_seeds - 1) * n_seeds)
    else:
        var_seed = np.zeros_like(gain)
        double = np.zeros_like(gain)
    var_group = np.maximum(var_cluster - double, 0.0)
    var = var_seed + var_group
    with np.errstate(divide="ignore", invalid="ignore"):
        df_strata = np.where(g > 1, g - 1, np.inf)
        df_group = var_cluster**2 / (var_strata**2 / df_strata).sum(-1)
        df_group = np.where(var_cluster > 0, df_group, np.inf)
        denom = (var_seed**2 / max(n_seeds - 1, 1) if n_seeds > 1 else 0.0) + var_group**2 / df_group
        df = np.where(denom > 0, var**2 / denom, np.inf)
    df = np.where(np.isfinite(df), df, 1e9)
    se = np.sqrt(var)
    half = st.t.ppf(1 - alpha / 2, df) * se
    return {"gain": gain, "ci_low": gain - half, "ci_high": gain + half, "se": se, "df": df,
            "var_seed": var_seed, "var_group": var_group, "per_seed": per_seed}


def detectable_effect(se, df, alpha: float = 0.05, power: float = 0.80):
    """Smallest true gain found with probability ``power`` by a two-sided t test at ``alpha`` with this SE and
    these degrees of freedom: (t_{1−alpha/2, df} + t_{power, df}) x SE — 2.8 x SE for large df (1.96 + 0.84),
    3.7 x SE for df = 4 (five seeds dominating). The usual approximation to the noncentral-t power."""
    return (st.t.ppf(1 - alpha / 2, df) + st.t.ppf(power, df)) * np.asarray(se)


def percentile_bootstrap(values: np.ndarray, cells, clusters, ids, by_dataset: bool = True, n_boot: int = 2000,
                         seed: int = 0, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Method v1, unchanged in its draws (same generator calls in the same order as the v1 code, so v1 numbers
    reproduce): each replicate resamples the seeds and, within each cluster, the image ids — frames of one
    recording are treated as independent — and the CI is the percentile interval. ``values``: (..., rows, seeds);
    the same replicates serve every leading index."""
    values = np.asarray(values, dtype=np.float64)
    cells, clusters, ids = (np.asarray(x).astype(str) for x in (cells, clusters, ids))
    n_rows, n_seeds = values.shape[-2:]
    rng = np.random.default_rng(seed)
    weights = np.ones((n_boot + 1, n_rows))  # replicate 0 is the data itself
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
    if by_dataset:  # row weight inside each replicate: cluster share / datasets in it x resampled share in dataset
        a = np.zeros_like(weights)
        for m, parts in dataset_shares(cells, clusters):
            a[:, m] = weights[:, m] / np.maximum(weights[:, m].sum(1, keepdims=True), 1e-12) / parts
    else:
        a = weights / weights.sum(1, keepdims=True)
    est = ((a @ values) * seed_w).sum(-1)  # (..., replicates)
    lo, hi = np.quantile(est[..., 1:], [alpha / 2, 1 - alpha / 2], axis=-1)
    return {"gain": est[..., 0], "ci_low": lo, "ci_high": hi, "se": est[..., 1:].std(-1, ddof=1),
            "df": np.full(np.shape(lo), np.inf)}
