"""Token-sequence perturbations (no model): every type, V1 and V2 layouts, alignment indices."""

from __future__ import annotations

import numpy as np
import pytest

from geneformer.perturb import _transforms as T

CLS, EOS = 2, 3
GENES = np.arange(10, 20)  # ten genes in rank order
V1 = GENES.astype(np.int16)  # V1 layout: genes only, int16 like the reference's V1 datasets
V2 = np.concatenate([[CLS], GENES, [EOS]]).astype(np.int32)


def layout(special: bool) -> np.ndarray:
    return V2 if special else V1


def check_alignment(res, perturbed_tokens, special):
    """Compared genes are the same on both sides and are every non-perturbed gene kept."""
    pi, oi = np.asarray(res.pert_index), np.asarray(res.orig_index)
    ids = res.input_ids if pi.ndim == 1 else None
    if pi.ndim == 1:
        assert np.array_equal(ids[pi], res.orig_ids[oi])
        genes = res.orig_ids[1:-1] if special else res.orig_ids
        expected = [g for g in genes if g not in set(np.atleast_1d(perturbed_tokens).tolist())]
        assert res.affected.tolist() == expected
    else:
        rows = np.arange(pi.shape[0])[:, None]
        assert np.array_equal(res.input_ids[rows, pi], res.orig_ids[oi])


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("special", [False, True])
def test_delete_single_and_group(special):
    ids = layout(special)
    r = T.delete(ids, 13, special=special)
    assert r.input_ids.tolist() == [t for t in ids.tolist() if t != 13]
    assert r.input_ids.dtype == ids.dtype
    check_alignment(r, [13], special)
    r = T.delete(ids, [17, 11, 99], special=special)
    assert r.input_ids.tolist() == [t for t in ids.tolist() if t not in (11, 17)]
    assert r.present.tolist() == [True, True, False]
    check_alignment(r, [11, 17], special)
    if special:
        assert r.input_ids[0] == CLS and r.input_ids[-1] == EOS


@pytest.mark.parametrize("special", [False, True])
def test_overexpress_moves_to_front_in_list_order(special):
    ids = layout(special)
    r = T.overexpress(ids, [16, 12], special=special)
    genes = [16, 12] + [g for g in GENES.tolist() if g not in (12, 16)]
    assert r.input_ids.tolist() == ([CLS] + genes + [EOS] if special else genes)
    assert r.n_overflow == 0 and r.length == len(ids)
    check_alignment(r, [12, 16], special)
    # the first compared gene is the first non-moved gene, labelled correctly (no off-by-one)
    assert r.affected[0] == 10 and r.input_ids[r.pert_index[0]] == 10


@pytest.mark.parametrize("special", [False, True])
def test_overexpress_inserts_absent_genes_and_truncates(special):
    ids = layout(special)
    max_len = len(ids)  # a cell already at the model's input size
    r = T.overexpress(ids, [50, 14, 51], special=special, max_len=max_len)
    assert r.length == max_len
    assert r.present.tolist() == [False, True, False]
    assert r.n_overflow == 2
    body = [50, 14, 51] + [10, 11, 12, 13, 15, 16, 17]  # 18 and 19 drop off the end
    assert r.input_ids.tolist() == ([CLS] + body + [EOS] if special else body)
    # the original drops the same genes, so both sides compare the same non-listed genes
    assert 18 not in r.orig_ids.tolist() and 19 not in r.orig_ids.tolist()
    assert r.orig_length == len(ids) - 2
    if special:
        assert r.orig_ids[-1] == EOS and r.input_ids[-1] == EOS
    assert r.affected.tolist() == [10, 11, 12, 13, 15, 16, 17]
    assert np.array_equal(r.input_ids[r.pert_index], r.orig_ids[r.orig_index])


@pytest.mark.parametrize("special", [False, True])
def test_overflow_is_not_double_counted(special):
    ids = layout(special)
    L = len(ids)
    # L + 2 added genes exceed max_len by 1: only one gene must go (the reference dropped 2)
    r = T.overexpress(ids, [50, 51], special=special, max_len=L + 1)
    assert r.n_overflow == 1 == T.calc_n_overflow(L, 2, L + 1)
    assert r.length == L + 1
    assert r.orig_length == L - 1
    assert r.affected.tolist() == GENES.tolist()[:-1]
    # no overflow when it fits
    r = T.overexpress(ids, [50], special=special, max_len=L + 1)
    assert r.n_overflow == 0 and r.length == L + 1 and np.array_equal(r.orig_ids, ids)


def test_overexpress_present_gene_in_dropped_tail_keeps_gene_sets_equal():
    ids = V2
    # 19 is listed and sits at the tail; the overflow must drop non-listed genes only
    r = T.overexpress(ids, [19, 60], special=True, max_len=len(ids))
    assert r.n_overflow == 1
    assert r.input_ids.tolist() == [CLS, 19, 60, 10, 11, 12, 13, 14, 15, 16, 17, EOS]
    assert r.orig_ids.tolist() == [CLS, 10, 11, 12, 13, 14, 15, 16, 17, 19, EOS]
    assert sorted(r.affected.tolist()) == list(range(10, 18))


def test_overexpress_too_many_genes_raises():
    with pytest.raises(ValueError, match="max_len"):
        T.overexpress(V2, list(range(50, 62)), special=True, max_len=12)


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("shift,steps", [(1, 2), (2, 5), (3, 7)])
def test_inhibit_and_activate_ranks(special, shift, steps):
    ids = layout(special)
    n = len(GENES)
    assert T.rank_shift_steps(n, shift) == steps
    off = 1 if special else 0
    for rank in range(n):
        tok = GENES[rank]
        down = T.inhibit(ids, tok, shift, special=special)
        new_rank = int(np.nonzero(down.input_ids == tok)[0][0]) - off
        assert new_rank == min(rank + steps, n - 1)
        check_alignment(down, [tok], special)
        up = T.activate(ids, tok, shift, special=special)
        new_rank = int(np.nonzero(up.input_ids == tok)[0][0]) - off
        assert new_rank == max(rank - steps, 0)
        check_alignment(up, [tok], special)
        if special:
            for r in (down, up):
                assert r.input_ids[0] == CLS and r.input_ids[-1] == EOS
        # the other genes keep their relative order
        others = [g for g in GENES.tolist() if g != tok]
        assert [g for g in down.input_ids.tolist() if g in others] == others


def test_inhibit_group_and_small_cells():
    r = T.inhibit(V1, [10, 11], 1)  # d = 2: each lands after the gene that held rank r + 2
    assert r.input_ids.tolist()[:5] == [12, 10, 13, 11, 14]
    check_alignment(r, [10, 11], False)
    # at least one step even when a quartile is less than one gene
    assert T.inhibit(np.array([5, 6, 7]), 5, 1).input_ids.tolist() == [6, 5, 7]
    with pytest.raises(ValueError, match="perturb_rank_shift"):
        T.inhibit(V1, 10, 4)
    with pytest.raises(ValueError, match="perturb_rank_shift"):
        T.perturb(V1, 10, "activate")


def test_perturb_dispatch_and_validation():
    assert np.array_equal(T.perturb(V1, 12, "delete").input_ids, T.delete(V1, 12).input_ids)
    assert np.array_equal(T.perturb(V2, [60], "overexpress", special=True, max_len=12).input_ids,
                          T.overexpress(V2, [60], special=True, max_len=12).input_ids)
    with pytest.raises(ValueError, match="perturb_type"):
        T.perturb(V1, 12, "knockout")
    with pytest.raises(ValueError, match="Special"):
        T.delete(V2, CLS, special=True)
    with pytest.raises(ValueError, match="distinct"):
        T.delete(V1, [12, 12])
    with pytest.raises(ValueError, match="1-D integer"):
        T.delete(np.zeros((2, 2), dtype=int), 1)


def test_find_positions():
    assert T.find_positions(V2, [19, 10, 99, CLS]).tolist() == [10, 1, -1, 0]


# ---------------------------------------------------------------------------------------------
# "all" mode
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("special", [False, True])
def test_all_delete_matches_one_by_one(special):
    ids = layout(special)
    b = T.perturb_all(ids, "delete", special=special)
    g0 = 1 if special else 0
    assert len(b) == len(GENES)
    assert b.positions[:, 0].tolist() == list(range(g0, g0 + len(GENES)))
    assert b.keys() == GENES.tolist()
    assert (b.lengths == len(ids) - 1).all()
    for row in range(len(b)):
        single = T.delete(ids, GENES[row], special=special)
        assert np.array_equal(b.input_ids[row], single.input_ids)
        assert np.array_equal(b.pert_index[row], single.pert_index)
        assert np.array_equal(b.orig_index[row], single.orig_index)
    check_alignment(b, None, special)
    assert not (b.affected == b.tokens[:, :1]).any()


@pytest.mark.parametrize("special", [False, True])
def test_all_overexpress_skips_first_gene_and_aligns(special):
    ids = layout(special)
    b = T.perturb_all(ids, "overexpress", special=special)
    assert b.keys() == GENES.tolist()[1:]
    off = 1 if special else 0
    assert (b.input_ids[:, off] == b.tokens[:, 0]).all()
    check_alignment(b, None, special)
    # row for gene 15: compared genes are all others, in rank order, first one is gene 10
    row = b.keys().index(15)
    assert b.affected[row].tolist() == [g for g in GENES.tolist() if g != 15]


@pytest.mark.parametrize("ptype,shift", [("inhibit", 1), ("activate", 3)])
def test_all_inhibit_activate(ptype, shift):
    b = T.perturb_all(V2, ptype, special=True, rank_shift=shift)
    expected = GENES.tolist()[:-1] if ptype == "inhibit" else GENES.tolist()[1:]
    assert b.keys() == expected
    fn = T.inhibit if ptype == "inhibit" else T.activate
    for row, tok in enumerate(expected):
        assert np.array_equal(b.input_ids[row], fn(V2, tok, shift, special=True).input_ids)
    check_alignment(b, None, True)


@pytest.mark.parametrize("special", [False, True])
def test_all_pairs_with_anchor(special):
    ids = layout(special)
    b = T.perturb_all(ids, "delete", special=special, anchor_token=14, combos=1)
    assert len(b) == len(GENES) - 1
    assert (b.tokens == 14).any(axis=1).all()
    assert b.keys(anchor_token=14) == [g for g in GENES.tolist() if g != 14]
    assert (b.lengths == len(ids) - 2).all()
    for row in range(len(b)):
        pair = b.tokens[row].tolist()
        assert b.input_ids[row].tolist() == [t for t in ids.tolist() if t not in pair]
        assert not set(pair) & set(b.affected[row].tolist())
    check_alignment(b, None, special)
    b = T.perturb_all(ids, "overexpress", special=special, anchor_token=14, combos=1)
    off = 1 if special else 0
    assert (np.sort(b.input_ids[:, off:off + 2], axis=1) == np.sort(b.tokens, axis=1)).all()
    check_alignment(b, None, special)


def test_all_pairs_without_anchor_and_chunks():
    b = T.perturb_all(V2, "delete", special=True, combos=1)
    n = len(GENES)
    assert len(b) == n * (n - 1) // 2
    assert b.keys()[:2] == [(10, 11), (10, 12)]
    pos = T.all_positions(len(V2), "delete", special=True, combos=1)
    part = T.perturb_all(V2, "delete", special=True, positions=pos[5:9])
    assert np.array_equal(part.input_ids, b.input_ids[5:9])
    assert np.array_equal(part.orig_index, b.orig_index[5:9])
    with pytest.raises(ValueError, match="gene positions"):
        T.perturb_all(V2, "delete", special=True, positions=np.array([[0]]))
    with pytest.raises(KeyError, match="Anchor"):
        T.perturb_all(V2, "delete", special=True, anchor_token=77, combos=1)


def test_random_alignment_property():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(3, 40))
        genes = rng.choice(np.arange(4, 1000), size=n, replace=False)
        special = bool(rng.integers(0, 2))
        ids = np.concatenate([[CLS], genes, [EOS]]) if special else genes
        for ptype in ("delete", "overexpress", "inhibit", "activate"):
            shift = int(rng.integers(1, 4)) if ptype in ("inhibit", "activate") else None
            b = T.perturb_all(ids, ptype, special=special, rank_shift=shift)
            rows = np.arange(len(b))[:, None]
            assert np.array_equal(b.input_ids[rows, b.pert_index], ids[b.orig_index])
            assert b.pert_index.shape[1] == n - 1
            k = int(rng.integers(1, min(4, n)))
            toks = rng.choice(genes, size=k, replace=False)
            r = T.perturb(ids, toks, ptype, special=special, rank_shift=shift, max_len=len(ids))
            check_alignment(r, toks, special)
            assert sorted(r.input_ids.tolist()) == sorted(
                ids.tolist() if ptype != "delete" else [t for t in ids.tolist() if t not in toks])


def test_pad_sequences():
    from geneformer.data import pad_sequences

    arr, lens = pad_sequences([np.array([1, 2, 3]), np.array([4])], pad_value=0)
    assert arr.tolist() == [[1, 2, 3], [4, 0, 0]] and lens.tolist() == [3, 1]
