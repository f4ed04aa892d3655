"""AnnData sources: ``.h5ad`` and ``.zarr`` stores read lazily, and in-memory ``AnnData`` objects."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset

from .._utils import InputFileError
from ._base import CellReader, indptr_block_sums, to_csr
from ._cells import anndata_counts

logger = logging.getLogger(__name__)


def read_anndata(path: str | os.PathLike) -> ad.AnnData:
    """A whole ``.h5ad`` file (or ``.zarr`` store) in memory; a missing, truncated or non-AnnData
    file is an :class:`InputFileError` naming it (as the streaming reader reports it)."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"Input file {p} does not exist.")
    try:
        return ad.read_zarr(p) if p.suffix == ".zarr" or p.is_dir() else ad.read_h5ad(p)
    except Exception as exc:  # noqa: BLE001 - h5py, zarr and anndata fail on bad bytes in many ways
        raise InputFileError(f"Could not read {p} as AnnData: {exc}. The file may be truncated or not an "
                             "AnnData file.") from exc


class AnnDataReader(CellReader):
    """Reads an AnnData store without loading its matrix: X (or a layer, or ``raw``) in row chunks.

    ``layer``: ``None`` for ``X``, ``"raw"`` for ``raw.X`` (with ``raw.var`` as the gene table),
    or the name of an entry of ``layers``.
    """

    def __init__(self, source: "str | os.PathLike | ad.AnnData", layer: str | None = None):
        self.layer = layer
        self._file = None
        if isinstance(source, ad.AnnData):
            self.path, self.format = None, "AnnData"
            self._init_memory(source)
        else:
            self.path = str(source)
            self.format = "zarr" if Path(self.path).suffix == ".zarr" or Path(self.path).is_dir() else "h5ad"
            self._init_store()

    # ---- opening ------------------------------------------------------------------------------
    def _init_memory(self, adata: ad.AnnData) -> None:
        self._adata = adata
        self._X, self._var = anndata_counts(adata, self.layer)
        self._obs = adata.obs
        self._n = adata.n_obs

    def _init_store(self) -> None:
        p = Path(self.path)
        if not p.exists():
            raise InputFileError(f"Input file {p} does not exist.")
        try:
            if self.format == "zarr":
                import zarr

                self._file = zarr.open(str(p), mode="r")
            else:
                import h5py

                self._file = h5py.File(p, "r")
            root = self._file
            if self.layer is None:
                x_elem, var_elem = root["X"], root["var"]
            elif self.layer == "raw":
                x_elem, var_elem = root["raw/X"], root["raw/var"]
            else:
                x_elem, var_elem = root[f"layers/{self.layer}"], root["var"]
            self._obs_group = root["obs"]
            self._var = read_elem(var_elem)
            self._X = self._open_matrix(x_elem)
            self._n = int(self._X.shape[0])
        except KeyError as exc:
            self.close()
            raise InputFileError(f"{self.describe()} lacks an expected element: {exc}. "
                                 "Is it an AnnData file, and does the layer exist?") from exc
        except (OSError, ValueError) as exc:
            self.close()
            raise InputFileError(f"Could not read {self.describe()}: {exc}. "
                                 "The file may be truncated or not an AnnData store.") from exc

    def _open_matrix(self, elem):
        enc = elem.attrs.get("encoding-type", "")
        if isinstance(enc, bytes):
            enc = enc.decode()
        if enc in ("csr_matrix", "csc_matrix"):
            m = sparse_dataset(elem)
            if enc == "csc_matrix":
                logger.warning("%s stores its matrix column-wise (CSC): reading rows is slow. "
                               "Convert it to CSR for faster tokenization.", self.describe())
            return m
        return elem  # dense array: row slices are cheap

    # ---- CellReader ---------------------------------------------------------------------------
    @property
    def obs_columns(self) -> list[str]:
        if self._file is None:
            return list(self._obs.columns)
        order = self._obs_group.attrs.get("column-order", [])
        return [str(c) for c in np.atleast_1d(order)]

    def read_obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        if self._file is None:
            obs = self._obs
            return obs.copy() if columns is None else obs[list(columns)].copy()
        if columns is None:
            return read_elem(self._obs_group)
        g = self._obs_group
        index = read_elem(g[g.attrs.get("_index", "_index")])
        data = {c: read_elem(g[c]) for c in columns}
        return pd.DataFrame(data, index=pd.Index(np.asarray(index, dtype=object)).astype(str))

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        try:
            block = self._X[start:stop]
        except (OSError, ValueError) as exc:
            raise InputFileError(f"Could not read rows {start}:{stop} of {self.describe()}: {exc}. "
                                 "The file may be truncated.") from exc
        return to_csr(block)

    def block_nnz(self, block: int) -> np.ndarray | None:
        X = self._X
        if sp.issparse(X):
            return indptr_block_sums(X.indptr, self._n, block) if X.format == "csr" else None
        if getattr(X, "format", None) == "csr" and hasattr(X, "group"):  # a lazy CSR store
            return indptr_block_sums(X.group["indptr"], self._n, block)
        return None

    def reopen_args(self) -> tuple | None:
        return None if self.path is None else (self.path, {"layer": self.layer})

