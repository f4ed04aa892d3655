"""10x Genomics Cell Ranger outputs: the HDF5 matrix (``*.h5``) and MTX folders.

Only "Gene Expression" features are kept (antibody capture, CRISPR guides and custom features
are dropped), so gene columns and ``n_counts`` computed from them concern genes only. The gene
table has the feature ids (Ensembl) as index and in ``ensembl_id``, the symbols in
``gene_symbol``; the cell table has the barcodes as index and in ``cell_id``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import InputFileError
from ._base import CellReader, select_columns
from ._loom import read_h5_column

GENE_EXPRESSION = "Gene Expression"


def _gene_table(ids, names, types=None) -> tuple[pd.DataFrame, np.ndarray]:
    """The gene table of the kept features and the positions of those features in the file."""
    ids = np.asarray(ids, dtype=object).astype(str)
    names = np.asarray(names, dtype=object).astype(str)
    keep = np.arange(len(ids)) if types is None else np.flatnonzero(np.asarray(types).astype(str) == GENE_EXPRESSION)
    var = pd.DataFrame({"ensembl_id": ids[keep], "gene_symbol": names[keep]},
                       index=pd.Index(ids[keep]))
    return var, keep


def _column_map(n_features: int, keep: np.ndarray) -> np.ndarray | None:
    """Feature position -> kept gene column (-1 when dropped); None when every feature is kept."""
    if len(keep) == n_features:
        return None
    cmap = np.full(n_features, -1, dtype=np.int64)
    cmap[keep] = np.arange(len(keep))
    return cmap


def _select(indptr, indices, data, cmap: np.ndarray | None, n_genes: int, n_rows: int) -> sp.csr_matrix:
    """CSR rows from raw CSR arrays, keeping only mapped columns (renumbered)."""
    m = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_genes if cmap is None else len(cmap)))
    return m if cmap is None else select_columns(m, cmap, n_genes)


def _barcode_obs(barcodes: np.ndarray, columns: list[str] | None, source: str) -> pd.DataFrame:
    """The cell table of a 10x matrix: barcodes as index and ``cell_id``, the only attribute."""
    obs = pd.DataFrame({"cell_id": barcodes}, index=pd.Index(barcodes))
    if columns is None:
        return obs
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        raise KeyError(f"{source} has no cell attribute(s) {missing}; available: ['cell_id'].")
    return obs[list(columns)]


class TenxH5Reader(CellReader):
    """Streams a Cell Ranger ``filtered_feature_bc_matrix.h5`` (v3+, or v2 with ``genome``) by barcode chunks.

    The file stores a CSC genes × barcodes matrix, i.e. CSR barcodes × genes, so a chunk of cells
    is one contiguous slice of ``data``/``indices`` delimited by ``indptr``.
    """

    format = "10x_h5"

    def __init__(self, path: str | os.PathLike, genome: str | None = None):
        self.path = str(path)
        self.genome = genome
        self._open_h5(self._init_layout, "a Cell Ranger feature-barcode matrix")

    def _init_layout(self, f) -> None:
        if "matrix" in f and "features" in f["matrix"]:  # Cell Ranger v3+
            g = f["matrix"]
            feats = g["features"]
            types = read_h5_column(feats["feature_type"]) if "feature_type" in feats else None
            self._var, self._keep = _gene_table(read_h5_column(feats["id"]), read_h5_column(feats["name"]), types)
        else:  # v2: one group per genome
            genomes = [k for k in f.keys() if hasattr(f[k], "keys") and "genes" in f[k]]
            if self.genome is not None:
                if self.genome not in genomes:
                    raise InputFileError(f"{self.describe()} has no genome {self.genome!r}; genomes: {genomes}.")
                name = self.genome
            elif len(genomes) == 1:
                name = genomes[0]
            elif not genomes:
                raise InputFileError(f"{self.describe()} has neither a 'matrix/features' group (Cell Ranger v3) "
                                     "nor a genome group with 'genes' (v2); is it a 10x HDF5 matrix?")
            else:
                raise InputFileError(f"{self.describe()} holds several genomes {genomes}; pass genome=NAME.")
            g = f[name]
            names = read_h5_column(g["gene_names"]) if "gene_names" in g else read_h5_column(g["genes"])
            self._var, self._keep = _gene_table(read_h5_column(g["genes"]), names)
        self._group = g
        n_features, n_barcodes = (int(s) for s in g["shape"][...])
        self._indptr = np.asarray(g["indptr"][...], dtype=np.int64)
        if len(self._indptr) != n_barcodes + 1:
            raise InputFileError(f"{self.describe()}: indptr has {len(self._indptr)} entries for "
                                 f"{n_barcodes} barcodes.")
        self._n = n_barcodes
        self._n_features = n_features
        self._cmap = _column_map(n_features, self._keep)

    # ---- CellReader ---------------------------------------------------------------------------
    @property
    def obs_columns(self) -> list[str]:
        return ["cell_id"]

    def read_obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        try:
            barcodes = read_h5_column(self._group["barcodes"]).astype(str)
        except OSError as exc:
            raise InputFileError(f"Could not read the barcodes of {self.describe()}: {exc}.") from exc
        return _barcode_obs(barcodes, columns, self.describe())

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        stop = min(stop, self._n)
        ptr = self._indptr[start:stop + 1]
        a, b = int(ptr[0]), int(ptr[-1])
        try:
            data = self._group["data"][a:b]
            indices = np.asarray(self._group["indices"][a:b], dtype=np.int64)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"Could not read cells {start}:{stop} of {self.describe()}: {exc}. "
                                 "The file may be truncated.") from exc
        return _select(ptr - a, indices, data, self._cmap, len(self._keep), stop - start)

    def reopen_args(self) -> tuple:
        return (self.path, {"genome": self.genome})



def _find(folder: Path, *names: str) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / f"{n}.gz"):
            if cand.is_file():
                return cand
    return None


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, dtype=str, compression="infer", quoting=3,
                       keep_default_na=False, na_filter=False)


class TenxMtxReader(CellReader):
    """A Cell Ranger MTX folder: ``matrix.mtx[.gz]``, ``features.tsv[.gz]`` (or ``genes.tsv``), ``barcodes.tsv[.gz]``.

    Matrix Market coordinate files are unordered text, so they cannot be streamed: the matrix is
    parsed once (on the first ``read_rows``) into memory and row chunks are served from it. Convert
    large MTX data to ``.h5ad`` or a 10x ``.h5`` file to stream it.
    """

    format = "10x_mtx"

    def __init__(self, folder: str | os.PathLike):
        self.path = str(folder)
        p = Path(self.path)
        if not p.is_dir():
            raise InputFileError(f"10x MTX folder {p} does not exist (or is not a folder).")
        self._matrix_path = _find(p, "matrix.mtx")
        self._features_path = _find(p, "features.tsv", "genes.tsv")
        self._barcodes_path = _find(p, "barcodes.tsv")
        absent = [n for n, q in (("matrix.mtx[.gz]", self._matrix_path),
                                 ("features.tsv[.gz] or genes.tsv[.gz]", self._features_path),
                                 ("barcodes.tsv[.gz]", self._barcodes_path)) if q is None]
        if absent:
            raise InputFileError(f"10x MTX folder {p} lacks {', '.join(absent)}.")
        self._X: sp.csr_matrix | None = None
        try:
            feats = _read_tsv(self._features_path)
            self._barcodes = _read_tsv(self._barcodes_path)[0].to_numpy(dtype=object).astype(str)
            n_features, n_barcodes = self._mm_shape()
        except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
            raise InputFileError(f"Could not read 10x MTX folder {p}: {exc}. A file may be truncated.") from exc
        names = feats[1] if feats.shape[1] > 1 else feats[0]
        types = feats[2] if feats.shape[1] > 2 else None
        self._var, self._keep = _gene_table(feats[0].to_numpy(), names.to_numpy(), types)
        if n_features != len(feats) or n_barcodes != len(self._barcodes):
            raise InputFileError(f"10x MTX folder {p}: the matrix is {n_features} × {n_barcodes} but there are "
                                 f"{len(feats)} features and {len(self._barcodes)} barcodes.")
        self._n = n_barcodes

    def _mm_shape(self) -> tuple[int, int]:
        """Matrix shape from the Matrix Market header (no full parse)."""
        opener = gzip.open if self._matrix_path.suffix == ".gz" else open
        with opener(self._matrix_path, "rt") as fh:
            for line in fh:
                if not line.startswith("%"):
                    parts = line.split()
                    return int(parts[0]), int(parts[1])
        raise ValueError(f"{self._matrix_path} has no size line")

    def _matrix(self) -> sp.csr_matrix:
        if self._X is None:
            from scipy.io import mmread

            try:
                m = mmread(str(self._matrix_path))
            except (OSError, EOFError, ValueError) as exc:
                raise InputFileError(f"Could not read {self._matrix_path}: {exc}. "
                                     "The file may be truncated.") from exc
            # genes × cells CSC == cells × genes CSR; keep gene-expression features only
            x = sp.csc_matrix(m).T.tocsr()
            if len(self._keep) != x.shape[1]:
                x = x[:, self._keep]
            x.sort_indices()
            self._X = x
        return self._X

    # ---- CellReader ---------------------------------------------------------------------------
    @property
    def obs_columns(self) -> list[str]:
        return ["cell_id"]

    def read_obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        return _barcode_obs(self._barcodes, columns, self.describe())

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self._matrix()[start:stop]

    def reopen_args(self) -> tuple:
        return (self.path, {})

    def describe(self) -> str:
        return f"10x MTX folder {self.path}"
