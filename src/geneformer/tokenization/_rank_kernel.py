"""Compiled per-row ranking kernel (numba): a stable descending sort of each CSR row's values.

LSD radix sort on the top 33 bits of each value's IEEE-754 pattern (positive float64 bit patterns
order like the floats), three passes of 11 bits, stable so equal keys keep column order. Entries
whose top 33 bits coincide (exact ties, or values within ~1e-9 relative) are then put in exact
order by an insertion sort on the full values that only moves strictly greater values, which keeps
ties in column order. The result equals ``argsort(-v, kind="stable")`` row by row.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._constants import TARGET_SUM

_BITS = 11
_BINS = 1 << _BITS
_LOW = 30  # bits below this are left to the exact fix-up


@njit(cache=True, nogil=True)
def _sort_row(keys, values, a, b, order, idx, tmp, hist):
    m = b - a
    for i in range(m):
        idx[i] = a + i
    for p in range(3):
        shift = _LOW + p * _BITS
        hist[:] = 0
        for i in range(m):
            d = ((~keys[idx[i]]) >> shift) & (_BINS - 1)
            hist[d] += 1
        total = 0
        for d in range(_BINS):
            c = hist[d]
            hist[d] = total
            total += c
        for i in range(m):
            j = idx[i]
            d = ((~keys[j]) >> shift) & (_BINS - 1)
            tmp[hist[d]] = j
            hist[d] += 1
        for i in range(m):
            idx[i] = tmp[i]
    # exact order inside groups that share the top bits (stable: only strictly greater moves up)
    i = 0
    while i < m - 1:
        if (keys[idx[i]] >> _LOW) != (keys[idx[i + 1]] >> _LOW):
            i += 1
            continue
        j = i + 1
        while j < m and (keys[idx[j]] >> _LOW) == (keys[idx[i]] >> _LOW):
            j += 1
        for k in range(i + 1, j):
            cur = idx[k]
            v = values[cur]
            q = k - 1
            while q >= i and values[idx[q]] < v:
                idx[q + 1] = idx[q]
                q -= 1
            idx[q + 1] = cur
        i = j
    for i in range(m):
        order[a + i] = idx[i]


@njit(cache=True, nogil=True)
def descending_order(values, indptr):
    """Stable descending order of ``values`` within each row segment given by ``indptr``.

    ``encode_rows`` sorts through the same ``_sort_row``; this entry point exposes the sort alone
    (tests check it against numpy's stable sort on crafted near-ties)."""
    n = values.shape[0]
    order = np.empty(n, dtype=np.int64)
    keys = values.view(np.uint64)
    max_len = 0
    for r in range(indptr.shape[0] - 1):
        max_len = max(max_len, indptr[r + 1] - indptr[r])
    idx = np.empty(max_len, dtype=np.int64)
    tmp = np.empty(max_len, dtype=np.int64)
    hist = np.empty(_BINS, dtype=np.int64)
    for r in range(indptr.shape[0] - 1):
        _sort_row(keys, values, indptr[r], indptr[r + 1], order, idx, tmp, hist)
    return order


@njit(cache=True, nogil=True)
def encode_rows(data, indices, indptr, inv_n, inv_med, tokens, max_genes, cls_id, eos_id, keep_counts, colmap):
    """Rank value encode CSR rows in one pass; returns ``(tokens, offsets, counts)``.

    ``colmap`` maps the matrix's columns to gene positions (``inv_med``/``tokens`` index), -1 for
    columns to skip; it must be increasing over the kept columns so that ties keep column order.

    Values are ``((x * inv_n[row]) * 1e4) * inv_med[col]`` (the same IEEE operations as the numpy
    path); non-positive values are dropped; at most ``max_genes`` genes are kept per row, wrapped
    in ``cls_id`` … ``eos_id`` when ``cls_id >= 0`` (empty rows stay empty). ``counts`` holds
    ``x / n * 1e4`` aligned with the tokens (0 at cls/eos) when ``keep_counts``, else is empty.
    """
    n_rows = indptr.shape[0] - 1
    special = cls_id >= 0
    lens = np.zeros(n_rows, dtype=np.int64)
    max_len = 0
    for r in range(n_rows):
        c = 0
        for i in range(indptr[r], indptr[r + 1]):
            if data[i] > 0 and colmap[indices[i]] >= 0:
                c += 1
        max_len = max(max_len, c)
        c = min(c, max_genes)
        if special and c > 0:
            c += 2
        lens[r] = c
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    for r in range(n_rows):
        offsets[r + 1] = offsets[r] + lens[r]
    out = np.empty(offsets[n_rows], dtype=np.int64)
    counts = np.zeros(offsets[n_rows] if keep_counts else 0, dtype=np.float64)
    vals = np.empty(max_len, dtype=np.float64)
    scaled = np.empty(max_len, dtype=np.float64)
    cols = np.empty(max_len, dtype=np.int64)
    order = np.empty(max_len, dtype=np.int64)
    idx = np.empty(max_len, dtype=np.int64)
    tmp = np.empty(max_len, dtype=np.int64)
    hist = np.empty(_BINS, dtype=np.int64)
    for r in range(n_rows):
        m = 0
        for i in range(indptr[r], indptr[r + 1]):
            g = colmap[indices[i]]
            if g < 0:
                continue
            s = (data[i] * inv_n[r]) * TARGET_SUM  # a float64 global: frozen into the compiled code
            v = s * inv_med[g]
            if v > 0:
                vals[m] = v
                scaled[m] = s
                cols[m] = g
                m += 1
        if m == 0:
            continue
        _sort_row(vals.view(np.uint64), vals, 0, m, order, idx, tmp, hist)
        k = min(m, max_genes)
        o = offsets[r]
        if special:
            out[o] = cls_id
            out[o + k + 1] = eos_id
            o += 1
        for j in range(k):
            out[o + j] = tokens[cols[order[j]]]
            if keep_counts:
                counts[o + j] = scaled[order[j]]
    return out, offsets, counts
