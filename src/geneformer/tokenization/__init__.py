"""Tokenization: rank value encoding of cells (a pure, compiled kernel) and the streaming pipeline
from single-cell files or AnnData to a Hugging Face dataset."""

from ._encode import EncodedCells, rank_value_encode
from ._pipeline import FileReport, TokenizerSettings, tokenize_anndata, tokenize_files
from ._writer import DatasetWriter

__all__ = [
    "DatasetWriter", "EncodedCells", "FileReport", "TokenizerSettings", "rank_value_encode", "tokenize_anndata",
    "tokenize_files",
]
