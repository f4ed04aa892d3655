"""Ragged token sequences: what the tokenizer's encoding kernel produces and every model stage reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class TokenSequences:
    """Ragged token sequences as one flat array plus offsets (no per-cell Python objects).

    Cell ``i`` is ``values[offsets[i]:offsets[i + 1]]``; ``counts``, when present, holds one value per
    token (the tokenizer's ``keep_counts``: ``x / n_counts * 10,000``).
    """

    values: np.ndarray  # all tokens, concatenated (int64)
    offsets: np.ndarray  # (N + 1,) start of each cell in ``values``
    counts: np.ndarray | None = None  # aligned with ``values``

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: np.ndarray) -> "TokenSequences":
        """The sequences ``rows`` (in that order) as a new flat TokenSequences (vectorised)."""
        rows = np.asarray(rows, dtype=np.int64)
        lens = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        starts = self.offsets[:-1][rows]
        flat = np.repeat(starts - offsets[:-1], lens) + np.arange(int(offsets[-1]))
        return TokenSequences(self.values[flat], offsets, None if self.counts is None else self.counts[flat])

    def padded(self, rows: np.ndarray | None = None, pad_value: int = 0, *, width: int | None = None,
               dtype: Any = np.int64) -> tuple[np.ndarray, np.ndarray]:
        """``(array, lengths)``: the sequences ``rows`` (default: all), right-padded with ``pad_value``
        to ``width`` (default: the longest) in a (n, width) array. The one padding of the package."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        lens = self.lengths[rows]
        width = int(lens.max(initial=0)) if width is None else int(width)
        mask = np.arange(width)[None, :] < lens[:, None]
        before = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        src = np.repeat(self.offsets[:-1][rows] - before, lens) + np.arange(int(lens.sum()))
        out = np.full((len(rows), width), pad_value, dtype=dtype)
        out[mask] = self.values[src]
        return out, lens

    def first_tokens(self) -> np.ndarray:
        """First token of every cell (-1 for empty cells)."""
        lens = self.lengths
        out = np.full(len(self), -1, dtype=np.int64)
        ok = lens > 0
        out[ok] = self.values[self.offsets[:-1][ok]]
        return out

    def last_tokens(self) -> np.ndarray:
        """Last token of every cell (-1 for empty cells)."""
        lens = self.lengths
        out = np.full(len(self), -1, dtype=np.int64)
        ok = lens > 0
        out[ok] = self.values[self.offsets[1:][ok] - 1]
        return out


def pad_sequences(seqs: Any, pad_value: int = 0, *, width: int | None = None,
                  dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D arrays (or any token sequences) into a (N, width) array; returns ``(array, lengths)``."""
    if not isinstance(seqs, TokenSequences):
        seqs = list(seqs)
        if dtype is None:
            dtype = np.result_type(*[np.asarray(s).dtype for s in seqs]) if seqs else np.int64
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        values = np.concatenate([np.asarray(s, dtype=dtype).ravel() for s in seqs]) if seqs else np.zeros(0, dtype)
        seqs = TokenSequences(values, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    return seqs.padded(pad_value=pad_value, width=width, dtype=dtype or seqs.values.dtype)


def as_sequences(data: Any, column: str = "input_ids") -> TokenSequences:
    """Read token sequences from a datasets.Dataset, a pandas DataFrame, a list of lists, or a TokenSequences."""
    if isinstance(data, TokenSequences):
        return data
    try:
        import datasets

        is_ds = isinstance(data, datasets.Dataset)
    except ImportError:  # pragma: no cover
        is_ds = False
    if is_ds:
        if column not in data.column_names:
            raise KeyError(
                f"The dataset has no {column!r} column (columns: {data.column_names}); "
                "tokenize the cells first (geneformer tokenize / tokenize_anndata)."
            )
        import pyarrow as pa
        import pyarrow.compute as pc

        col = data.with_format("arrow")[column]
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks() if col.num_chunks else pa.array([], type=col.type)
        lens = np.asarray(pc.list_value_length(col).fill_null(0), dtype=np.int64)
        values = np.asarray(col.flatten(), dtype=np.int64)
        return TokenSequences(values, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            if column not in data.columns:
                raise KeyError(f"The table has no {column!r} column (columns: {list(data.columns)}).")
            data = data[column].tolist()
    except ImportError:  # pragma: no cover
        pass
    seqs = [np.asarray(s, dtype=np.int64).ravel() for s in data]
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    values = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    return TokenSequences(values, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
