"""Encoded datasets: ragged token sequences (:class:`TokenSequences`), loading tokenized datasets,
and choosing cells (filters, downsampling, length order)."""

from ._dataset import (
    check_columns,
    column_values,
    downsample_and_sort,
    filter_by_dict,
    lengths_of,
    load_dataset_folder,
    load_tokenized,
)
from ._sequences import TokenSequences, as_sequences, pad_sequences

__all__ = [
    "TokenSequences", "as_sequences", "pad_sequences", "check_columns", "column_values", "downsample_and_sort", "filter_by_dict",
    "lengths_of", "load_dataset_folder", "load_tokenized",
]
