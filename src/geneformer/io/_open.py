"""Opening a reader by file format (detected from the name, or given)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._constants import FILE_FORMATS, FileFormat
from .._utils import InputFileError
from ._base import CellReader
from ._soma import is_soma_uri

#: file_format name -> (module, class)
_READERS = {
    "h5ad": ("geneformer.io._anndata", "AnnDataReader"),
    "zarr": ("geneformer.io._anndata", "AnnDataReader"),
    "anndata": ("geneformer.io._anndata", "AnnDataReader"),
    "loom": ("geneformer.io._loom", "LoomReader"),
    "10x_h5": ("geneformer.io._tenx", "TenxH5Reader"),
    "10x_mtx": ("geneformer.io._tenx", "TenxMtxReader"),
    "soma": ("geneformer.io._soma", "SomaReader"),
}
FORMATS = FILE_FORMATS
#: other names accepted for a format
_ALIASES = {"mtx": "10x_mtx", "h5": "10x_h5", "10x": "10x_h5"}


def detect_format(path: str | os.PathLike) -> FileFormat:
    """Guess the format of ``path`` from its name (and, for folders, contents)."""
    if is_soma_uri(path):
        return "soma"
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".zarr"):
        return "zarr"
    if name.endswith(".loom"):
        return "loom"
    if name.endswith(".h5"):
        return "10x_h5"
    if p.is_dir():
        if any((p / f).exists() for f in ("matrix.mtx", "matrix.mtx.gz")):
            return "10x_mtx"
        if (p / ".zgroup").exists() or (p / "zarr.json").exists():
            return "zarr"
    raise InputFileError(
        f"Cannot tell the format of {p}: expected .h5ad, .zarr, .loom, a 10x .h5 file, a 10x MTX folder or a "
        "TileDB-SOMA experiment. "
        "Pass file_format explicitly."
    )


def open_reader(source: Any, file_format: FileFormat | str | None = None, **options: Any) -> CellReader:
    """Open a reader for a path or URI (format detected from the name unless given), an AnnData, or
    an open ``tiledbsoma.Experiment`` (e.g. from ``cellxgene_census.open_soma()``)."""
    import importlib

    import anndata as ad

    if isinstance(source, ad.AnnData):
        file_format = "anndata"
    elif type(source).__name__ == "Experiment" and hasattr(source, "ms"):
        file_format = "soma"
    elif file_format is None:
        file_format = detect_format(source)
    file_format = _ALIASES.get(file_format, file_format)
    if file_format not in _READERS:
        raise InputFileError(f"Unknown file_format {file_format!r}; choose one of {FORMATS}.")
    module, cls = _READERS[file_format]
    reader_cls = getattr(importlib.import_module(module), cls)
    return reader_cls(source, **options)
