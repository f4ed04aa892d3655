"""Rank value encoding of a chunk: ordering, ties, zeros, truncation, special tokens."""

import numpy as np
import pytest
import scipy.sparse as sp

from geneformer.tokenization import rank_value_encode


def _encode(rows, medians, tokens, max_genes=10, special=False, keep_counts=False, n_counts=None):
    m = sp.csr_matrix(np.array(rows, dtype=np.int64))
    n = np.asarray(n_counts if n_counts is not None else m.sum(axis=1)).ravel().astype(float)
    return rank_value_encode(m, n, np.asarray(medians, float), np.asarray(tokens), max_genes,
                             cls_id=2 if special else None, eos_id=3 if special else None,
                             keep_counts=keep_counts)


def test_order_by_count_over_median():
    enc = _encode([[4, 1, 0, 6]], [2.0, 0.1, 1.0, 1.0], [10, 11, 12, 13])
    # values: 2, 10, 0 (dropped), 6
    assert enc.row(0).tolist() == [11, 13, 10]


def test_ties_keep_column_order():
    enc = _encode([[3, 3, 3, 1]], [1.0, 1.0, 1.0, 1.0], [10, 11, 12, 13])
    assert enc.row(0).tolist() == [10, 11, 12, 13]
    enc = _encode([[1, 3, 3, 3]], [1.0, 1.0, 1.0, 1.0], [10, 11, 12, 13])
    assert enc.row(0).tolist() == [11, 12, 13, 10]


def test_explicit_zeros_dropped():
    m = sp.csr_matrix((np.array([0, 5, 0]), np.array([0, 1, 2]), np.array([0, 3])), shape=(1, 3))
    assert m.nnz == 3  # zeros are stored
    enc = rank_value_encode(m, np.array([5.0]), np.ones(3), np.array([7, 8, 9]), 10)
    assert enc.row(0).tolist() == [8]


def test_truncation_and_special_tokens():
    rows = [[5, 4, 3, 2, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    enc = _encode(rows, [1] * 5, [10, 11, 12, 13, 14], max_genes=3, n_counts=[15, 1, 1])
    assert enc.row(0).tolist() == [10, 11, 12] and enc.row(1).tolist() == [] and enc.row(2).tolist() == [10]
    enc = _encode(rows, [1] * 5, [10, 11, 12, 13, 14], max_genes=3, special=True, n_counts=[15, 1, 1])
    assert enc.row(0).tolist() == [2, 10, 11, 12, 3]
    assert enc.row(1).tolist() == []  # empty cells stay empty so they can be dropped
    assert enc.row(2).tolist() == [2, 10, 3]


def test_unsorted_csr_indices_rank_by_column():
    # same row stored with indices out of order: ties must still follow column order
    m = sp.csr_matrix((np.array([2, 2, 2]), np.array([2, 0, 1]), np.array([0, 3])), shape=(1, 3))
    enc = rank_value_encode(m, np.array([6.0]), np.ones(3), np.array([20, 21, 22]), 10)
    assert enc.row(0).tolist() == [20, 21, 22]


def test_keep_counts_are_normalised_not_median_scaled():
    enc = _encode([[1, 3]], [1.0, 10.0], [10, 11], keep_counts=True, n_counts=[4])
    # values: 2500/1, 7500/10 -> order [10, 11]; counts x/n*1e4
    assert enc.row(0).tolist() == [10, 11]
    np.testing.assert_allclose(enc.counts, [2500.0, 7500.0])
    enc = _encode([[1, 3]], [1.0, 10.0], [10, 11], keep_counts=True, special=True, n_counts=[4])
    np.testing.assert_allclose(enc.counts, [0.0, 2500.0, 7500.0, 0.0])


@pytest.mark.parametrize("use_numpy", [False, True])
def test_many_rows_match_a_reference_loop(use_numpy):
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.5, size=(50, 40)) * (rng.random((50, 40)) < 0.5)
    med = rng.choice([0.5, 1.0, 2.0], size=40)
    tok = np.arange(100, 140)
    m = sp.csr_matrix(dense)
    n = dense.sum(1).astype(float) + 1
    enc = rank_value_encode(m, n, med, tok, 25, use_numpy=use_numpy)
    special = rank_value_encode(m, n, med, tok, 25, cls_id=2, eos_id=3, keep_counts=True, use_numpy=use_numpy)
    plain = rank_value_encode(m, n, med, tok, 25, cls_id=2, eos_id=3, keep_counts=True, use_numpy=not use_numpy)
    assert (special.values == plain.values).all() and (special.offsets == plain.offsets).all()
    np.testing.assert_array_equal(special.counts, plain.counts)
    for i in range(50):
        v = dense[i] / n[i] * 1e4 / med
        nz = np.flatnonzero(v)
        expect = tok[nz[np.argsort(-v[nz], kind="stable")]][:25]
        assert enc.row(i).tolist() == expect.tolist()


def test_compiled_kernel_equals_stable_numpy_sort():
    from geneformer.tokenization._encode import _descending_order
    from geneformer.tokenization._rank_kernel import descending_order

    rng = np.random.default_rng(3)
    lens = rng.integers(0, 300, size=200)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    med = rng.choice(np.r_[rng.uniform(0.1, 10, 40), [1.1] * 10], size=indptr[-1])
    v = rng.integers(1, 6, size=indptr[-1]) / med  # many exact ties
    v[10] = np.nextafter(v[11], 10)  # a 1-ulp near tie
    expect = np.concatenate([a + np.argsort(-v[a:b], kind="stable") for a, b in zip(indptr[:-1], indptr[1:])])
    assert (descending_order(v, indptr) == expect).all()
    assert (_descending_order(v, indptr) == expect).all()


@pytest.mark.parametrize("use_numpy", [False, True])
def test_column_map_equals_remapped_matrix(use_numpy):
    rng = np.random.default_rng(5)
    dense = rng.poisson(1.0, size=(30, 12)) * (rng.random((30, 12)) < 0.6)
    column_map = np.array([0, -1, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8])
    med = rng.choice([0.5, 1.0], size=9)
    tok = np.arange(50, 59)
    n = dense.sum(1).astype(float) + 1
    mapped = np.zeros((30, 9), dtype=dense.dtype)
    mapped[:, column_map[column_map >= 0]] = dense[:, column_map >= 0]
    a = rank_value_encode(sp.csr_matrix(dense), n, med, tok, 6, 2, 3, column_map=column_map, use_numpy=use_numpy)
    b = rank_value_encode(sp.csr_matrix(mapped), n, med, tok, 6, 2, 3)
    assert (a.values == b.values).all() and (a.offsets == b.offsets).all()


def test_take_keeps_counts_aligned():
    enc = _encode([[1, 3, 0], [0, 0, 0], [2, 0, 5]], [1.0, 1.0, 1.0], [10, 11, 12], keep_counts=True, special=True,
                  n_counts=[4, 1, 7])
    sub = enc.take([2, 0])
    assert sub.row(0).tolist() == enc.row(2).tolist() and sub.row(1).tolist() == enc.row(0).tolist()
    np.testing.assert_array_equal(sub.counts, np.concatenate([enc.counts[enc.offsets[2]:], enc.counts[:enc.offsets[1]]]))
