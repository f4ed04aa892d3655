"""What every consumer of an input reads the same way: the two cell-table columns that tokenization
and gene-median estimation both use, ``n_counts`` (the cell's total count, else the sum over all its
genes) and ``filter_pass`` (cells other than 1 are skipped), and the count matrix of an AnnData."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import InputFileError
from ._base import CellReader

#: Cell-table columns read for every input when present.
QC_COLUMNS = ("n_counts", "filter_pass")


def filter_pass_mask(values: pd.Series) -> np.ndarray:
    """Keep a cell iff its ``filter_pass`` equals 1 (True, 1 and 1.0 pass; the string "1" does not)."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return np.asarray(values.to_numpy() == 1, dtype=bool)
    return np.array([v == 1 for v in values.tolist()], dtype=bool)


@dataclass
class CellTotals:
    """Per cell of one input: its ``n_counts`` (None: each chunk's row totals) and ``filter_pass`` mask
    (None: every cell passes)."""

    n_counts: np.ndarray | None
    keep: np.ndarray | None

    @classmethod
    def from_obs(cls, obs: pd.DataFrame) -> "CellTotals":
        """From a cell table holding any of :data:`QC_COLUMNS` (non-numeric ``n_counts`` become NaN)."""
        n_counts = keep = None
        if "n_counts" in obs.columns:
            n_counts = pd.to_numeric(obs["n_counts"], errors="coerce").to_numpy(dtype=np.float64)
        if "filter_pass" in obs.columns:
            keep = filter_pass_mask(obs["filter_pass"])
        return cls(n_counts, keep)

    @classmethod
    def read(cls, reader: CellReader) -> "CellTotals":
        """Read the columns of :data:`QC_COLUMNS` that ``reader``'s cell table has."""
        wanted = [c for c in QC_COLUMNS if c in reader.obs_columns]
        return cls.from_obs(reader.read_obs(wanted) if wanted else pd.DataFrame())

    @property
    def source(self) -> str:
        """Where ``n_counts`` come from, for reports."""
        if self.n_counts is not None:
            return "obs['n_counts']"
        return "the sum of all genes of each cell (no obs['n_counts'])"

    def n_counts_of(self, start: int, counts: sp.spmatrix) -> np.ndarray:
        """``n_counts`` (float64) of the chunk of cells ``counts`` starting at cell ``start``."""
        if self.n_counts is not None:
            return np.asarray(self.n_counts[start:start + counts.shape[0]], dtype=np.float64)
        return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()

    def keep_of(self, start: int, stop: int) -> np.ndarray:
        """A new boolean mask of the cells ``start:stop`` that pass ``filter_pass``."""
        if self.keep is None:
            return np.ones(stop - start, dtype=bool)
        return self.keep[start:stop].copy()


def anndata_counts(adata: "anndata.AnnData", layer: str | None = None) -> tuple[Any, pd.DataFrame]:  # noqa: F821
    """The count matrix of an in-memory AnnData and its gene table.

    ``layer``: None for ``X``, ``"raw"`` for ``raw.X`` (with ``raw.var``), or the name of a layer.
    """
    if layer is None:
        X, var = adata.X, adata.var
    elif layer == "raw":
        if adata.raw is None:
            raise InputFileError("layer='raw' was asked for but the AnnData has no .raw.")
        X, var = adata.raw.X, adata.raw.var
    else:
        if layer not in adata.layers:
            raise InputFileError(f"The AnnData has no layer {layer!r}; layers: {list(adata.layers)}.")
        X, var = adata.layers[layer], adata.var
    if X is None:
        raise InputFileError("The AnnData has no count matrix (X is None).")
    return X, var
