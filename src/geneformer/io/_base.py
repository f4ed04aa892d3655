"""The reader interface: every single-cell file format yields row chunks of raw counts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import InputFileError


class CellReader(ABC):
    """Streams a cells × genes count matrix in row chunks, plus its cell and gene tables.

    Subclasses read one format. ``var`` is the gene table (index = the file's gene names, plus any
    gene columns such as ``ensembl_id``); ``read_obs`` returns cell attributes in file order;
    ``iter_counts`` yields ``(start_row, csr_matrix)`` chunks in file gene order, never the whole
    matrix at once.
    """

    path: str | None = None
    format: str = ""
    _file: Any = None  # the open file or store, closed by close()
    # subclasses set these when opening
    _n: int = 0
    _var: pd.DataFrame

    @property
    def n_cells(self) -> int:
        return self._n

    @property
    def var(self) -> pd.DataFrame:
        return self._var

    @property
    @abstractmethod
    def obs_columns(self) -> list[str]: ...

    @abstractmethod
    def read_obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Cell attributes (all cells, file order); ``columns=None`` reads every column."""

    def read_obs_rows(self, columns: list[str], start: int, stop: int) -> pd.DataFrame:
        """Cell attributes of the cells ``start:stop`` (formats that can read part of a column
        override this; the others read the columns whole)."""
        return self.read_obs(columns).iloc[start:stop]

    @abstractmethod
    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Counts of cells ``start:stop`` as CSR (cells × file genes)."""

    def iter_counts(self, chunk_size: int = 512, start: int = 0, stop: int | None = None
                    ) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(start_row, counts)`` chunks of cells ``start:stop``; counts that are negative, NaN or
        infinite are an :class:`InputFileError` naming the file, the first such cell and gene."""
        stop = self.n_cells if stop is None else min(stop, self.n_cells)
        for s in range(start, stop, chunk_size):
            counts = self.read_rows(s, min(s + chunk_size, stop))
            check_counts(counts, s, self)
            yield s, counts

    def block_nnz(self, block: int) -> np.ndarray | None:
        """Stored values in each run of ``block`` rows (the last may be shorter), when the format
        tells them without reading the matrix (a CSR row pointer); None otherwise. Shards balance
        by them."""
        return None

    def reopen_args(self) -> tuple | None:
        """Arguments for :func:`geneformer.io.open_reader` that reopen this file in a worker, or None."""
        return None

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None and hasattr(f, "close"):  # zarr groups have nothing to close
            f.close()

    def _open_h5(self, init: Callable[[Any], None], kind: str) -> None:
        """Open ``self.path`` with h5py and run ``init(file)`` to read the layout. Any failure closes
        the file and raises InputFileError naming it; ``kind`` says what the file should be."""
        import h5py

        p = Path(self.path)
        if not p.is_file():
            raise InputFileError(f"Input file {p} does not exist.")
        try:
            self._file = h5py.File(p, "r")
            init(self._file)
        except InputFileError:
            self.close()
            raise
        except (OSError, ValueError, KeyError) as exc:
            self.close()
            raise InputFileError(f"Could not read {self.describe()}: {exc}. The file may be truncated or "
                                 f"not {kind}.") from exc

    def __enter__(self) -> "CellReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.format} file {self.path}" if self.path else f"in-memory {self.format}"


def check_counts(counts: sp.csr_matrix, start: int, reader: CellReader) -> None:
    """Raise unless every stored count of the chunk starting at cell ``start`` is finite and >= 0.

    Negative values would be dropped and infinite ones ranked first without a word, and NaN would
    poison a cell's total: none of them is a count. (Non-integer values are only warned about by the
    tokenizer: normalised data is a mistake, but a recoverable one.)
    """
    data = counts.data
    if data.size == 0 or data.dtype.kind not in "fi":
        return
    lo, hi = data.min(), data.max()
    if lo >= 0 and (data.dtype.kind == "i" or np.isfinite(hi)):  # NaN fails the first test
        return
    bad = (data < 0) | ~np.isfinite(data) if data.dtype.kind == "f" else data < 0
    k = int(np.flatnonzero(bad)[0])
    row = int(np.searchsorted(counts.indptr, k, side="right")) - 1
    value = data[k]
    kind = "NaN" if value != value else ("negative" if value < 0 else "infinite")
    cell, gene = _names_of(reader, start + row, int(counts.indices[k]))
    raise InputFileError(
        f"{reader.describe()} holds {kind} counts: the first is {value} in cell {cell}, gene {gene}. Counts "
        "must be raw, non-negative and finite (check the matrix, layer or normalisation the file holds)."
    )


def _names_of(reader: CellReader, row: int, col: int) -> tuple[str, str]:
    """``"NAME (row R)"`` of a cell and the name of a gene column, for messages."""
    try:
        gene = str(reader.var.index[col])
    except Exception:  # noqa: BLE001 - only a message is at stake
        gene = f"column {col}"
    try:
        name = str(reader.read_obs([]).index[row])
        cell = f"{name!r} (row {row})"
    except Exception:  # noqa: BLE001
        cell = f"row {row}"
    return cell, gene


def select_columns(m: sp.csr_matrix, column_map: np.ndarray, n_columns: int) -> sp.csr_matrix:
    """The columns of a CSR matrix renumbered through ``column_map`` (-1: dropped), without densifying.

    Sorted indices stay sorted when the kept columns map in increasing order.
    """
    target = np.asarray(column_map)[m.indices]
    keep = target >= 0
    # each row boundary moves to the number of kept entries before it
    indptr = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])[m.indptr]
    return sp.csr_matrix((m.data[keep], target[keep], indptr), shape=(m.shape[0], n_columns))


def to_csr(block: Any, dtype: Any = None) -> sp.csr_matrix:
    """Any 2-D block (dense, sparse, backed) as CSR."""
    if sp.issparse(block):
        m = block.tocsr()
    else:
        m = sp.csr_matrix(np.asarray(block))
    if dtype is not None and m.dtype != dtype:
        m = m.astype(dtype)
    return m


def indptr_block_sums(indptr: Any, n_rows: int, block: int) -> np.ndarray:
    """Stored values per run of ``block`` rows from a CSR row pointer (array or lazy dataset),
    reading only every ``block``-th entry."""
    edges = np.asarray(indptr[0:n_rows:block], dtype=np.int64)
    last = np.asarray(indptr[n_rows:n_rows + 1], dtype=np.int64)
    return np.diff(np.concatenate([edges, last]))
