"""Rank value encoding of a chunk of cells (pure, vectorised, no I/O).

For cell ``c`` and vocabulary gene ``g`` with raw count ``x``::

    v[c, g] = x / n_counts[c] * 10,000 / median[g]

Genes with ``v == 0`` (explicitly stored zeros included) are dropped; the rest are sorted by ``v``
descending and emitted as token ids, truncated to the model's input size (V2 wraps them in
``<cls>`` … ``<eos>``).

Tie rule: the sort is *stable*. Genes whose normalised values are exactly equal keep the order of
the columns of the input matrix, which the tokenizer lays out in the file's gene order (the first
occurrence of each vocabulary gene). The reference uses numpy's default, unstable sort, whose tie
order depends on the CPU; outputs can differ from it only inside groups of exactly equal values.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._constants import TARGET_SUM
from ..data import TokenSequences
from ..io import select_columns

try:  # the compiled radix-sort kernel is ~5x faster than numpy's per-row argsort
    from ._rank_kernel import encode_rows as _compiled_encode
except ImportError:  # pragma: no cover - numba missing
    _compiled_encode = None


def _row_ids(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def _scaled_counts(counts: sp.csr_matrix, n_counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(x * (1/n)) * 1e4`` per stored entry: normalised counts before the median.

    The reference's h5ad arithmetic (multiplication by reciprocals), so that near-ties round the same
    way; the value ranked is this times ``1/median``."""
    inv_n = 1.0 / np.asarray(n_counts, dtype=np.float64)
    return (counts.data.astype(np.float64, copy=False) * inv_n[rows]) * TARGET_SUM


def _descending_order(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Numpy path (the compiled kernel in ``_rank_kernel`` does the same in one pass).

    numpy's default sort is faster but unstable, so only rows that contain equal values are
    re-sorted with the stable algorithm; such rows are rare (equal counts *and* equal medians).
    (A single sort of packed 64-bit keys over the whole chunk was measured slower.)
    """
    order = np.empty(len(values), dtype=np.int64)
    neg = -values
    for r in range(len(indptr) - 1):
        a, b = indptr[r], indptr[r + 1]
        if b - a < 2:
            order[a:b] = np.arange(a, b)
            continue
        seg = neg[a:b]
        o = np.argsort(seg)
        sv = seg[o]
        if (sv[1:] == sv[:-1]).any():
            o = np.argsort(seg, kind="stable")
        order[a:b] = o + a
    return order


def rank_value_encode(
    counts: sp.csr_matrix,
    n_counts: np.ndarray,
    medians: np.ndarray,
    token_ids: np.ndarray,
    max_genes: int,
    cls_id: int | None = None,
    eos_id: int | None = None,
    keep_counts: bool = False,
    use_numpy: bool = False,
    column_map: np.ndarray | None = None,
) -> TokenSequences:
    """Encode each row of ``counts`` (cells × vocabulary genes) as a ranked token sequence.

    ``medians`` and ``token_ids`` give each column's gene median and token id. At most
    ``max_genes`` genes are kept per cell; ``cls_id``/``eos_id`` (both or neither) wrap the genes.
    Cells with no expressed vocabulary gene give empty gene lists (the caller drops them). With
    ``keep_counts`` the result's ``counts`` hold ``x / n_counts * 10,000`` per token (0 for specials).
    ``column_map`` (optional) maps the columns of ``counts`` to positions in ``medians`` and
    ``token_ids`` (-1: skip), increasing over kept columns; it spares a remapped copy of the matrix.
    The compiled kernel is used when numba is available; ``use_numpy`` forces the numpy path
    (identical results).
    """
    if (cls_id is None) != (eos_id is None):
        raise ValueError("cls_id and eos_id must be given together")
    counts = sp.csr_matrix(counts)
    if not counts.has_sorted_indices:
        counts = counts.sorted_indices()  # ties follow column order
    if column_map is not None and (_compiled_encode is None or use_numpy):
        counts = select_columns(counts, column_map, len(token_ids))
        column_map = None
    if _compiled_encode is not None and not use_numpy:
        if column_map is None:
            column_map = np.arange(counts.shape[1], dtype=np.int64)
        inv_n = 1.0 / np.asarray(n_counts, dtype=np.float64)
        inv_med = 1.0 / np.asarray(medians, dtype=np.float64)
        tokens, offsets, cnt = _compiled_encode(
            counts.data.astype(np.float64, copy=False), counts.indices.astype(np.int64, copy=False),
            counts.indptr.astype(np.int64, copy=False), inv_n, inv_med, np.asarray(token_ids, dtype=np.int64),
            int(max_genes), -1 if cls_id is None else int(cls_id), -1 if eos_id is None else int(eos_id),
            bool(keep_counts), np.asarray(column_map, dtype=np.int64),
        )
        return TokenSequences(tokens, offsets, cnt if keep_counts else None)
    scaled_all = _scaled_counts(counts, n_counts, _row_ids(counts.indptr))
    values = scaled_all * (1.0 / np.asarray(medians, dtype=np.float64))[counts.indices]
    scaled = scaled_all if keep_counts else None
    keep = values > 0  # drops explicit zeros (and negative junk)
    indptr = counts.indptr.astype(np.int64)
    if not keep.all():
        per_row = np.add.reduceat(keep.astype(np.int64), indptr[:-1]) if len(keep) else np.zeros(0, np.int64)
        per_row[np.diff(indptr) == 0] = 0  # reduceat repeats a value for empty rows
        indptr = np.concatenate([[0], np.cumsum(per_row)])
        values = values[keep]
        cols = counts.indices[keep]
        scaled = scaled[keep] if scaled is not None else None
    else:
        cols = counts.indices
    order = _descending_order(values, indptr)

    # keep the first max_genes positions of each row
    row_len = np.diff(indptr)
    kept_len = np.minimum(row_len, max_genes)
    if len(row_len) and row_len.max() > max_genes:
        pos_in_row = np.arange(len(order)) - np.repeat(indptr[:-1], row_len)
        take = order[pos_in_row < np.repeat(kept_len, row_len)]
    else:
        take = order
    genes_tok = np.asarray(token_ids)[cols[take]]
    gene_counts = None
    if keep_counts:
        gene_counts = scaled[take]

    if cls_id is None:
        offsets = np.concatenate([[0], np.cumsum(kept_len)])
        return TokenSequences(genes_tok, offsets, gene_counts)

    # wrap every non-empty cell in <cls> ... <eos>; empty cells stay empty so the caller can drop them
    extra = np.where(kept_len > 0, 2, 0)
    total_len = kept_len + extra
    offsets = np.concatenate([[0], np.cumsum(total_len)])
    out = np.empty(offsets[-1], dtype=np.int64)
    gene_offsets = np.concatenate([[0], np.cumsum(kept_len)])
    nonempty = kept_len > 0
    out[offsets[:-1][nonempty]] = cls_id
    out[offsets[1:][nonempty] - 1] = eos_id
    dest = np.repeat(offsets[:-1] + 1, kept_len) + (np.arange(gene_offsets[-1]) - np.repeat(gene_offsets[:-1], kept_len))
    out[dest] = genes_tok
    if keep_counts:
        c = np.zeros(offsets[-1], dtype=np.float64)
        c[dest] = gene_counts
        gene_counts = c
    return TokenSequences(out, offsets, gene_counts)
