"""Per-gene sketches of a corpus's normalised expression, the basis of new gene medians.

The gene median of a corpus (used to scale counts before ranking) is the median, over the cells in
which a gene is detected, of ``count / n_counts * 10,000``. :class:`GeneDigests` accumulates these
values chunk by chunk in a mergeable per-gene sketch: exact (every value kept, medians computed
with one sort) while the corpus is small, otherwise a t-digest per gene (``fastdigest``).
"""

from __future__ import annotations

import io
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from .._constants import TARGET_SUM, DigestMode
from .._utils import InputFileError, write_bytes

logger = logging.getLogger(__name__)

#: In automatic mode, sketches stay exact until this many non-zero values are held (~12 bytes each).
DEFAULT_EXACT_LIMIT = 20_000_000
#: t-digest size per gene: more centroids, closer medians and more memory (16 bytes per centroid).
DEFAULT_MAX_CENTROIDS = 500
#: In t-digest mode, values are buffered and fed to the digests in batches of about this many.
DEFAULT_FLUSH_VALUES = 4_000_000
_SAVE_FORMAT = "geneformer-gene-digests-1"


def _new_digest(max_centroids: int, values: np.ndarray | None = None):
    from fastdigest import TDigest

    if values is None:
        return TDigest(max_centroids=max_centroids)
    return TDigest.from_values(values, max_centroids=max_centroids)


def _segments(sorted_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique values of a sorted array with their start and stop offsets."""
    if len(sorted_pos) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_pos)) + 1])
    stops = np.concatenate([starts[1:], [len(sorted_pos)]])
    return sorted_pos[starts], starts, stops


class GeneDigests:
    """Per-gene sketches of the non-zero normalised expression ``count / n_counts * 10,000``.

    ``exact=True`` keeps every value (exact medians), ``False`` uses a t-digest per gene from the
    start, and ``None`` (default) stays exact until ``exact_limit`` values are held, then switches
    to t-digests. Sketches from different files or processes combine with :meth:`merge`; the
    result is saved and loaded without pickle (:meth:`save` / :meth:`load`, an ``.npz`` file).
    """

    def __init__(self, *, exact: bool | None = None, exact_limit: int = DEFAULT_EXACT_LIMIT,
                 max_centroids: int = DEFAULT_MAX_CENTROIDS, flush_values: int = DEFAULT_FLUSH_VALUES):
        self.exact = exact
        self.exact_limit = int(exact_limit)
        self.max_centroids = int(max_centroids)
        self.flush_values = int(flush_values)
        self.gene_ids: list[str] = []
        self.gene_symbols: dict[str, str] = {}
        self.n_cells = 0
        self._pos: dict[str, int] = {}
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (gene positions, values)
        self._n_pending = 0
        self._digests: list | None = None if exact is not False else []
        self._cmap_cache: tuple[object, np.ndarray, bool] | None = None

    # ---- state --------------------------------------------------------------------------------
    @property
    def mode(self) -> DigestMode:
        """``"exact"`` while every value is kept, else ``"digest"``."""
        return "exact" if self._digests is None else "digest"

    @property
    def n_values(self) -> int:
        """Total number of non-zero values seen (sum of the detection counts)."""
        return int(self._counts.sum())

    def __len__(self) -> int:
        return len(self.gene_ids)

    def __repr__(self) -> str:
        return (f"GeneDigests(mode={self.mode!r}, genes={len(self.gene_ids)}, cells={self.n_cells}, "
                f"values={self.n_values})")

    def _ensure_genes(self, ids: Iterable[str]) -> None:
        added = False
        for g in ids:
            if g not in self._pos:
                self._pos[g] = len(self.gene_ids)
                self.gene_ids.append(g)
                added = True
        if added:
            grow = len(self.gene_ids) - len(self._counts)
            self._counts = np.concatenate([self._counts, np.zeros(grow, dtype=np.int64)])
            if self._digests is not None:
                self._digests.extend([None] * grow)

    def _column_map(self, gene_ids: Sequence) -> tuple[np.ndarray, bool]:
        """Column -> gene position (-1: skipped) and whether several columns share a gene."""
        cache = self._cmap_cache
        if cache is not None and cache[0] is gene_ids:
            return cache[1], cache[2]
        ids = ["" if g is None or (isinstance(g, float) and math.isnan(g)) else str(g) for g in gene_ids]
        self._ensure_genes(g for g in ids if g)
        cmap = np.array([self._pos[g] if g else -1 for g in ids], dtype=np.int64)
        kept = cmap[cmap >= 0]
        dup = len(np.unique(kept)) != len(kept)
        self._cmap_cache = (gene_ids, cmap, dup)
        return cmap, dup

    # ---- accumulation -------------------------------------------------------------------------
    def update(self, counts: sp.spmatrix | np.ndarray, n_counts: np.ndarray, gene_ids: Sequence) -> None:
        """Add a chunk: ``counts`` cells × columns (raw counts), ``n_counts`` per cell, a gene id per column.

        Columns whose id is empty or None are skipped; columns sharing an id are summed per cell.
        Cells with a non-positive or missing ``n_counts`` contribute nothing.
        """
        m = counts.tocsr() if sp.issparse(counts) else sp.csr_matrix(np.asarray(counts))
        n_counts = np.asarray(n_counts, dtype=np.float64).reshape(-1)
        if m.shape[0] != len(n_counts):
            raise ValueError(f"{m.shape[0]} cells in the chunk but {len(n_counts)} n_counts values.")
        if m.shape[1] != len(gene_ids):
            raise ValueError(f"{m.shape[1]} columns in the chunk but {len(gene_ids)} gene ids.")
        cmap, dup = self._column_map(gene_ids)
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        pos = cmap[m.indices]
        data = m.data.astype(np.float64, copy=False)
        sel = pos >= 0
        rows, pos, data = rows[sel], pos[sel], data[sel]
        if dup:  # sum the columns of one gene within each cell before normalising
            agg = sp.csr_matrix((data, (rows, pos)), shape=(m.shape[0], len(self.gene_ids)))
            agg.sum_duplicates()
            rows = np.repeat(np.arange(agg.shape[0]), np.diff(agg.indptr))
            pos, data = agg.indices.astype(np.int64), agg.data
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = data / n_counts[rows] * TARGET_SUM
        ok = (vals != 0) & np.isfinite(vals) & (n_counts[rows] > 0)
        pos, vals = pos[ok].astype(np.int32), vals[ok]
        self._counts += np.bincount(pos, minlength=len(self._counts))
        self.n_cells += int(m.shape[0])
        self._add_pending(pos, vals)

    def _add_pending(self, pos: np.ndarray, vals: np.ndarray) -> None:
        if len(pos):
            self._pending.append((pos, vals))
            self._n_pending += len(pos)
        if self._digests is None:
            if self.exact is None and self._n_pending > self.exact_limit:
                logger.info("More than %d non-zero values: switching gene medians to t-digests.", self.exact_limit)
                self.to_digest()
        elif self._n_pending >= self.flush_values:
            self._flush()

    def _pending_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._pending:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float64)
        if len(self._pending) > 1:
            self._pending = [(np.concatenate([p for p, _ in self._pending]),
                              np.concatenate([v for _, v in self._pending]))]
        return self._pending[0]

    def _flush(self) -> None:
        """Feed buffered values to the per-gene t-digests, one batch call per gene."""
        pos, vals = self._pending_arrays()
        self._pending, self._n_pending = [], 0
        if not len(pos):
            return
        order = np.argsort(pos, kind="stable")  # stable: values keep their arrival order per gene
        pos, vals = pos[order], vals[order]
        genes, starts, stops = _segments(pos)
        digests = self._digests
        for g, a, b in zip(genes.tolist(), starts.tolist(), stops.tolist()):
            d = digests[g]
            if d is None:
                digests[g] = _new_digest(self.max_centroids, vals[a:b])
            else:
                d.batch_update(vals[a:b])

    def to_digest(self) -> "GeneDigests":
        """Switch to t-digest mode (in place): the exact values are fed to per-gene digests."""
        if self._digests is None:
            self._digests = [None] * len(self.gene_ids)
        self._flush()
        return self

    def merge(self, other: "GeneDigests") -> "GeneDigests":
        """Add another sketch's genes, values and counts to this one (in place); returns self."""
        self._ensure_genes(other.gene_ids)
        remap = np.array([self._pos[g] for g in other.gene_ids], dtype=np.int64)
        self._counts[remap] += other._counts
        self.n_cells += other.n_cells
        for k, v in other.gene_symbols.items():
            self.gene_symbols.setdefault(k, v)
        if other.mode == "digest" and self.mode == "exact":
            if self.exact:
                logger.warning("Merging an approximate (t-digest) sketch: the medians are no longer exact.")
            self.to_digest()
        if other._n_pending:
            pos, vals = other._pending_arrays()
            self._add_pending(remap[pos].astype(np.int32), vals)
        if other.mode == "digest":
            digests = self._digests
            for i, d in enumerate(other._digests):
                if d is None:
                    continue
                g = int(remap[i])
                if digests[g] is None:
                    digests[g] = d.copy()
                else:
                    digests[g].merge_inplace(d)
        return self

    # ---- results ------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Number of cells in which each gene was detected (non-zero)."""
        return {g: int(c) for g, c in zip(self.gene_ids, self._counts)}

    def medians(self) -> dict[str, float]:
        """Non-zero median per detected gene (genes never detected are left out)."""
        if self.mode == "exact":
            pos, vals = self._pending_arrays()
            order = np.lexsort((vals, pos))
            pos, vals = pos[order], vals[order]
            genes, starts, stops = _segments(pos)
            n = stops - starts
            med = (vals[starts + (n - 1) // 2] + vals[starts + n // 2]) / 2.0
            return {self.gene_ids[g]: float(v) for g, v in zip(genes.tolist(), med.tolist())}
        self._flush()
        return {g: float(d.median()) for g, d in zip(self.gene_ids, self._digests) if d is not None}

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the sketch to an ``.npz`` file (no pickle): exact values, or t-digest bytes per gene."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_SAVE_FORMAT),
            "mode": np.array(self.mode),
            "exact": np.array("" if self.exact is None else str(bool(self.exact))),
            "params": np.array([self.exact_limit, self.max_centroids, self.flush_values, self.n_cells], np.int64),
            "gene_ids": np.array(self.gene_ids, dtype=str),
            "counts": self._counts,
            "symbol_keys": np.array(list(self.gene_symbols), dtype=str),
            "symbol_values": np.array(list(self.gene_symbols.values()), dtype=str),
        }
        if self.mode == "exact":
            arrays["pos"], arrays["vals"] = self._pending_arrays()
        else:
            self._flush()
            blobs = [b"" if d is None else d.to_bytes() for d in self._digests]
            arrays["digest_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
            arrays["digest_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GeneDigests":
        """Read a sketch written by :meth:`save`."""
        from fastdigest import TDigest

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != _SAVE_FORMAT:
                    raise ValueError(f"unknown format {str(z['format'])!r}")
                exact_s = str(z["exact"])
                limit, max_c, flush, n_cells = (int(x) for x in z["params"])
                self = cls(exact=None if exact_s == "" else exact_s == "True", exact_limit=limit,
                           max_centroids=max_c, flush_values=flush)
                self._ensure_genes(z["gene_ids"].tolist())
                self._counts = z["counts"].astype(np.int64)
                self.n_cells = n_cells
                self.gene_symbols = dict(zip(z["symbol_keys"].tolist(), z["symbol_values"].tolist()))
                if str(z["mode"]) == "exact":
                    self._digests = None
                    pos, vals = z["pos"].astype(np.int32), z["vals"].astype(np.float64)
                    self._pending, self._n_pending = ([(pos, vals)] if len(pos) else []), len(pos)
                else:
                    off, raw = z["digest_offsets"], z["digest_bytes"].tobytes()
                    self._digests = [TDigest.from_bytes(raw[a:b]) if b > a else None
                                     for a, b in zip(off[:-1].tolist(), off[1:].tolist())]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise InputFileError(f"Could not read gene digests from {path}: {exc} (truncated, or not a "
                                 "--save-digests file)") from exc
        return self
