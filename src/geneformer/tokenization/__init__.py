"""Tokenization: rank value encoding of cells (a pure, compiled kernel) and the streaming pipeline
from single-cell files or AnnData to a Hugging Face dataset.

:func:`tokenize_files` / :func:`tokenize_anndata` resolve :class:`TokenizerSettings` from a
vocabulary (:func:`tokenizer_settings`) and run the pipeline (:func:`tokenize_to_disk`,
:func:`tokenize_in_memory`, built on :func:`iter_batches`); :func:`match_and_tokenize` tokenizes an
AnnData for a model with its genes named in one column.
"""

from ._anndata import TokenizedAnnData, anndata_gene_ids, match_and_tokenize
from ._encode import rank_value_encode
from ._inputs import dataset_path, find_input_files
from ._options import ChunkStats, FileReport, TokenizerSettings, tokenizer_settings
from ._pipeline import (
    empty_schema,
    iter_batches,
    log_summary,
    tokenize_anndata,
    tokenize_files,
    tokenize_in_memory,
    tokenize_to_disk,
)
from ._shards import merge_token_shards
from ._writer import DatasetWriter, write_dataset

__all__ = [
    "ChunkStats", "DatasetWriter", "FileReport", "TokenizedAnnData", "TokenizerSettings", "dataset_path",
    "anndata_gene_ids", "empty_schema", "find_input_files", "iter_batches", "log_summary", "match_and_tokenize",
    "merge_token_shards", "rank_value_encode",
    "tokenize_anndata", "tokenize_files", "tokenize_in_memory", "tokenize_to_disk", "tokenizer_settings",
    "write_dataset",
]
