"""Readers for single-cell count files; each yields row chunks of raw counts (see :class:`CellReader`).

Formats: ``.h5ad``, ``.zarr``, ``.loom``, 10x HDF5 (``.h5``), 10x MTX folders, in-memory AnnData, and
TileDB-SOMA experiments (the CELLxGENE Census format; ``geneformer[soma]``).
The cell-table rules shared by every consumer (``n_counts``, ``filter_pass``) are :class:`CellTotals`.
"""

from .._utils import InputFileError
from ._anndata import read_anndata
from ._base import CellReader, check_counts, select_columns, to_csr
from ._cells import QC_COLUMNS, CellTotals, anndata_counts, filter_pass_mask
from ._open import FORMATS, detect_format, open_reader
from ._slices import block_costs, shard_rows
from ._soma import SomaReader, is_soma_uri

__all__ = [
    "FORMATS", "QC_COLUMNS", "CellReader", "CellTotals", "InputFileError", "SomaReader", "anndata_counts", "block_costs",
    "check_counts", "detect_format", "filter_pass_mask", "is_soma_uri", "open_reader", "read_anndata", "select_columns",
    "shard_rows", "to_csr",
]
