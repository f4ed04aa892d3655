"""Readers for single-cell count files; each yields row chunks of raw counts (see :class:`CellReader`).

Formats: ``.h5ad``, ``.zarr``, ``.loom``, 10x HDF5 (``.h5``), 10x MTX folders, and in-memory AnnData.
"""

from .._utils import InputFileError
from ._base import CellReader, to_csr
from ._open import FORMATS, detect_format, open_reader

__all__ = ["FORMATS", "CellReader", "InputFileError", "detect_format", "open_reader", "to_csr"]
