"""Loom files read directly with h5py, read-only, in column blocks.

Loom stores ``/matrix`` (or ``/layers/<name>``) as genes × cells, with gene attributes in
``/row_attrs`` and cell attributes in ``/col_attrs``. A chunk of cells is a column block, which is
read and transposed to CSR cells × genes; the whole matrix is never loaded. The file is opened
read-only, so unlike the reference tokenizer nothing is ever written into the input.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import InputFileError
from ._base import CellReader

#: Attribute names used as the gene / cell index, in order of preference.
GENE_INDEX_ATTRS = ("Gene", "var_names")
CELL_INDEX_ATTRS = ("CellID", "obs_names")
#: Index attributes written by anndata's ``write_loom``; they are not repeated as columns.
_ANNDATA_INDEX_ATTRS = ("var_names", "obs_names")
#: Cells per dense read: bounds memory to about genes × 256 values per block.
_BLOCK_CELLS = 256


def read_h5_column(ds) -> np.ndarray:
    """A 1-D HDF5 dataset as a numpy array, with byte/variable-length strings decoded to ``str``."""
    import h5py

    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[...], dtype=object)
    arr = ds[...]
    if arr.dtype.kind == "S":
        return arr.astype(str).astype(object)
    return arr


def _attr_table(group, index_attrs: tuple[str, ...], names: list[str] | None = None,
                n: int | None = None) -> pd.DataFrame:
    """Build a DataFrame from the 1-D attribute datasets of a loom attribute group."""
    index_name = next((a for a in index_attrs if a in group), None)
    one_d = [k for k in group.keys() if getattr(group[k], "ndim", 0) == 1]
    if names is None:
        names = [k for k in one_d if not (k == index_name and k in _ANNDATA_INDEX_ATTRS)]
    missing = [c for c in names if c not in group]
    if missing:
        raise KeyError(f"no attribute(s) {missing}; available: {one_d}")
    data = {c: read_h5_column(group[c]) for c in names}
    if index_name is not None:
        index = pd.Index(read_h5_column(group[index_name]).astype(str))
    else:
        index = pd.Index(np.arange(n if n is not None else len(next(iter(data.values()), []))).astype(str))
    return pd.DataFrame(data, index=index)


class LoomReader(CellReader):
    """Streams a ``.loom`` file's counts in cell chunks (``layer=None`` for ``/matrix``)."""

    format = "loom"

    def __init__(self, path: str | os.PathLike, layer: str | None = None):
        self.path = str(path)
        self.layer = layer
        self._open_h5(self._init_layout, "a loom file")

    def _init_layout(self, f) -> None:
        layer = self.layer
        key = "matrix" if layer in (None, "", "matrix") else f"layers/{layer}"
        if key not in f:
            layers = list(f["layers"].keys()) if "layers" in f else []
            raise InputFileError(f"{self.describe()} has no {key!r} dataset (layers: {layers}).")
        self._X = f[key]
        if self._X.ndim != 2:
            raise InputFileError(f"{self.describe()}: {key!r} is not a 2-D matrix.")
        self._n_genes, self._n = (int(s) for s in self._X.shape)
        if "row_attrs" not in f or "col_attrs" not in f:
            raise InputFileError(f"{self.describe()} lacks /row_attrs or /col_attrs; is it a loom file?")
        self._var = _attr_table(f["row_attrs"], GENE_INDEX_ATTRS, n=self._n_genes)
        if len(self._var) != self._n_genes:
            raise InputFileError(f"{self.describe()}: {len(self._var)} gene attributes for a matrix with "
                                 f"{self._n_genes} rows.")

    # ---- CellReader ---------------------------------------------------------------------------
    @property
    def obs_columns(self) -> list[str]:
        g = self._file["col_attrs"]
        return [k for k in g.keys() if getattr(g[k], "ndim", 0) == 1 and k not in _ANNDATA_INDEX_ATTRS]

    def read_obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        try:
            return _attr_table(self._file["col_attrs"], CELL_INDEX_ATTRS,
                               None if columns is None else list(columns), n=self._n)
        except KeyError as exc:
            raise KeyError(f"{self.describe()}: {exc.args[0]}") from exc
        except OSError as exc:
            raise InputFileError(f"Could not read the cell attributes of {self.describe()}: {exc}.") from exc

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        stop = min(stop, self._n)
        # the matrix is dense on disk: read column blocks aligned to the HDF5 chunks (each chunk is
        # decompressed once) and small enough that the dense genes × block stays modest
        width = (self._X.chunks or (0, 256))[1]
        step = max(width, (_BLOCK_CELLS // width) * width)
        parts = []
        try:
            s = start
            while s < stop:
                e = min(stop, (s // step + 1) * step)
                parts.append(sp.csr_matrix(np.ascontiguousarray(self._X[:, s:e].T)))
                s = e
        except (OSError, ValueError) as exc:
            raise InputFileError(f"Could not read cells {start}:{stop} of {self.describe()}: {exc}. "
                                 "The file may be truncated.") from exc
        if not parts:
            return sp.csr_matrix((0, self._n_genes), dtype=self._X.dtype)
        return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")

    def reopen_args(self) -> tuple:
        return (self.path, {"layer": self.layer})

