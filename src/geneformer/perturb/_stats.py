"""Statistics primitives of the perturbation statistics: vectorised Wilcoxon rank-sum tests (one
call for every gene), Benjamini-Hochberg FDR, per-group means and the two-component impact model."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.special import ndtr

__all__ = ["bh_fdr", "ranksums_per_group", "ranksums_vs_pool"]


# ---------------------------------------------------------------------------------------------
# vectorised tests
# ---------------------------------------------------------------------------------------------
def _ranksum_p(s: np.ndarray, n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Two-sided normal-approximation p-value of rank sum ``s`` of the first of two samples."""
    n1 = np.asarray(n1, dtype=np.float64)
    n2 = np.asarray(n2, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s - n1 * (n1 + n2 + 1) / 2.0) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)
        return 2.0 * ndtr(-np.abs(z))


def ranksums_vs_pool(pool: np.ndarray, group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """``scipy.stats.ranksums(pool, values[group == g]).pvalue`` for every g at once.

    The rank sum of the pool in ``pool ∪ sample`` is the pool's own rank sum plus, for each
    sample value y, the number of pool values above y plus half of those equal to y.
    """
    pool = np.sort(np.asarray(pool, dtype=np.float64))
    n1 = pool.size
    right = np.searchsorted(pool, values, side="right")
    left = np.searchsorted(pool, values, side="left")
    contrib = (n1 - right) + 0.5 * (right - left)
    n2 = np.bincount(group, minlength=n_groups)
    s = n1 * (n1 + 1) / 2.0 + np.bincount(group, weights=contrib, minlength=n_groups)
    return _ranksum_p(s, n1, n2)


def ranksums_per_group(
    test_group: np.ndarray, test: np.ndarray, null_group: np.ndarray, null: np.ndarray, n_groups: int
) -> np.ndarray:
    """``scipy.stats.ranksums(test_g, null_g, nan_policy="omit").pvalue`` for every group g."""
    tk, nk = ~np.isnan(test), ~np.isnan(null)
    test_group, test, null_group, null = test_group[tk], test[tk], null_group[nk], null[nk]
    group = np.concatenate([test_group, null_group])
    ranks = pd.Series(np.concatenate([test, null])).groupby(group).rank(method="average").to_numpy()
    n1 = np.bincount(test_group, minlength=n_groups)
    n2 = np.bincount(null_group, minlength=n_groups)
    s = np.bincount(test_group, weights=ranks[: test.size], minlength=n_groups)
    return _ranksum_p(s, n1, n2)


def bh_fdr(pvals: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels ``fdr_bh``); NaN p-values count as 1."""
    from statsmodels.stats.multitest import multipletests

    p = np.nan_to_num(np.asarray(pvals, dtype=np.float64), nan=1.0)
    if p.size == 0:
        return p
    return multipletests(p, alpha=0.05, method="fdr_bh")[1]


def _group_mean(group: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.bincount(group, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(group, weights=values, minlength=n_groups) / n, n


class _ImpactModel:
    """Two-component Gaussian mixture on per-gene means; 1 = impact (lower-mean) component."""

    def __init__(self, gm) -> None:
        self.gm = gm
        means = gm.means_.ravel()
        self.low_comp = int(np.argmin(means))
        self.low, self.high = float(means.min()), float(means.max())

    @classmethod
    def fit(cls, means: np.ndarray) -> "_ImpactModel":
        from sklearn.mixture import GaussianMixture

        means = np.asarray(means, dtype=np.float64)
        if means.size < 2:
            raise ValueError(f"The mixture model needs at least 2 perturbed genes with values, got {means.size}.")
        return cls(GaussianMixture(n_components=2, random_state=0).fit(means.reshape(-1, 1)))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        out = np.zeros(v.shape, dtype=np.int64)
        below, above = v < self.low, v > self.high
        mid = ~below & ~above & ~np.isnan(v)
        out[below] = 1
        if mid.any():
            out[mid] = (self.gm.predict(v[mid].reshape(-1, 1)) == self.low_comp).astype(np.int64)
        return out
