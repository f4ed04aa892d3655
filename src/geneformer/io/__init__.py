"""Readers for single-cell count files; each yields row chunks of raw counts (see :class:`CellReader`).

Formats: ``.h5ad``, ``.zarr``, ``.loom``, 10x HDF5 (``.h5``), 10x MTX folders, and in-memory AnnData.
The cell-table rules shared by every consumer (``n_counts``, ``filter_pass``) are :class:`CellTotals`.
"""

from .._utils import InputFileError
from ._base import CellReader, check_counts, select_columns, to_csr
from ._cells import QC_COLUMNS, CellTotals, anndata_counts, filter_pass_mask
from ._anndata import read_anndata
from ._open import FORMATS, detect_format, open_reader

__all__ = [
    "FORMATS", "QC_COLUMNS", "CellReader", "CellTotals", "check_counts", "InputFileError", "anndata_counts", "detect_format",
    "filter_pass_mask", "open_reader", "read_anndata", "select_columns", "to_csr",
]
