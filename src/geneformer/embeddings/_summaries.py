"""Summaries of embeddings over cells: exact mean/median, and streaming t-digest approximations.

The reference feeds a pure-Python t-digest one scalar at a time. Here each batch becomes one digest
per dimension (``fastdigest``, Rust) merged into the running one, and "mean" is computed exactly as a
running sum (a t-digest's untrimmed mean is the plain mean anyway).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._constants import SUMMARY_STATS
from .._utils import write_pickle


def check_summary_stat(stat: str | None) -> str | None:
    """``stat`` when it is a known summary (None, "mean", "median", "exact_mean", "exact_median")."""
    if stat not in SUMMARY_STATS:
        raise ValueError(f"summary_stat must be one of {SUMMARY_STATS}, got {stat!r}.")
    return stat


def exact_summary(embs: np.ndarray, stat: str) -> np.ndarray:
    """Mean or median over rows of an (N, H) array, as float32 (H,)."""
    embs = np.asarray(embs, dtype=np.float32)
    if stat in ("exact_mean", "mean"):
        return embs.mean(axis=0, dtype=np.float64).astype(np.float32)
    if stat in ("exact_median", "median"):
        return np.median(embs, axis=0).astype(np.float32)
    raise ValueError(f"Unknown summary {stat!r}")


class StreamingSummary:
    """Running per-dimension summary of (n, H) batches: exact mean, t-digest median."""

    def __init__(self, stat: str, dims: int):
        if stat not in ("mean", "median"):
            raise ValueError("streaming summaries are 'mean' or 'median'")
        self.stat = stat
        self.dims = dims
        self.total = np.zeros(dims, dtype=np.float64)
        self.n = 0
        self.digests: list[Any] | None = None

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(-1, self.dims)
        if len(values) == 0:
            return
        self.total += values.sum(axis=0)
        self.n += len(values)
        if self.stat == "median":
            from fastdigest import TDigest

            fresh = [TDigest.from_values(values[:, d]) for d in range(self.dims)]
            if self.digests is None:
                self.digests = fresh
            else:
                for dg, f in zip(self.digests, fresh):
                    dg.merge_inplace(f)

    def result(self) -> np.ndarray:
        if self.n == 0:
            raise ValueError("no values were summarised")
        if self.stat == "mean":
            return (self.total / self.n).astype(np.float32)
        return np.array([d.median() for d in self.digests], dtype=np.float32)

    def save_digests(self, path: str | Path) -> None:
        """Pickle the per-dimension t-digests (as fastdigest dicts)."""
        digests = [d.to_dict() for d in self.digests] if self.digests else []
        write_pickle(path, {"stat": self.stat, "n": self.n, "sum": self.total, "digests": digests})


class StreamingGeneSummary:
    """Running per-gene, per-dimension summary of (token, vector) pairs."""

    def __init__(self, stat: str, dims: int):
        self.stat = stat
        self.dims = dims
        self.by_token: dict[int, StreamingSummary] = {}

    def update(self, tokens: np.ndarray, vectors: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        order = np.argsort(tokens, kind="stable")
        tokens, vectors = tokens[order], np.asarray(vectors)[order]
        uniq, starts = np.unique(tokens, return_index=True)
        ends = np.append(starts[1:], len(tokens))
        for t, s, e in zip(uniq.tolist(), starts, ends):
            summ = self.by_token.get(t)
            if summ is None:
                summ = self.by_token[t] = StreamingSummary(self.stat, self.dims)
            summ.update(vectors[s:e])

    def result(self) -> dict[int, np.ndarray]:
        return {t: s.result() for t, s in sorted(self.by_token.items())}

    def save_digests(self, path: str | Path) -> None:
        payload = {t: {"n": s.n, "sum": s.total, "digests": [d.to_dict() for d in (s.digests or [])]}
                   for t, s in self.by_token.items()}
        write_pickle(path, {"stat": self.stat, "genes": payload})
