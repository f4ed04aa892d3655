"""Pure, vectorised edits of rank-encoded token sequences for in silico perturbation.

Layout
------
A cell is a 1-D integer array ``ids`` of token ids in rank order (highest expression first).
With special tokens (V2 layout, ``special=True``) position 0 is ``<cls>`` and position ``L-1`` is
``<eos>``; the genes are positions ``[1, L-1)``. Without them (V1 layout) every position is a gene.
A gene's *rank* is its index among the genes (0 = first gene after ``<cls>``).

Perturbation types
------------------
``delete``
    Remove the gene(s). Length ``L - k``.
``overexpress``
    Move the gene(s) to the front (position 0, or 1 right after ``<cls>``), in the order given.
    Group lists may name genes absent from the cell: they are *inserted*. When the result is longer
    than ``max_len`` it is truncated to ``max_len`` keeping ``<eos>`` (the last non-listed genes
    go). ``n_overflow = max(0, L + n_absent - max_len)`` (the reference counted the added genes
    twice), and the compared original drops the same ``n_overflow`` non-listed genes, so both
    sides hold the same set of genes.
``inhibit`` / ``activate`` with ``rank_shift`` k in {1, 2, 3}
    Move the gene k quartiles of the cell's gene count toward the end (inhibit) or the front
    (activate): with ``n`` genes the step is ``d = max(1, (k * n) // 4)`` ranks, and a gene of
    rank ``r`` gets rank ``min(r + d, n - 1)`` (inhibit) or ``max(r - d, 0)`` (activate). For
    several genes at once, each moved gene is placed immediately after the gene that originally
    held rank ``r + d`` (inhibit) or immediately before the gene that held ``r - d`` (activate);
    moved genes landing at the same place keep their original order. Specials never move.

Alignment
---------
Every result carries ``pert_index`` and ``orig_index``: ``input_ids[pert_index[j]]`` and
``orig_ids[orig_index[j]]`` are the same gene, for every gene that is neither perturbed nor a
special token (the genes whose embedding shift is measured). Gather the two hidden-state arrays
with them and compare row by row; ``affected`` gives the token of each compared gene. This fixes
the reference's off-by-one labelling of overexpressed "cell_and_gene" outputs.

"All" mode
----------
:func:`perturb_all` builds, for one cell, every single-gene (or pair) perturbation as one 2-D
array with the positions, tokens and alignment indices of each row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .._constants import PERTURB_TYPES, PerturbType
from .._utils import check_choice

__all__ = [
    "PERTURB_TYPES",
    "Perturbed",
    "PerturbationBatch",
    "activate",
    "all_positions",
    "calc_n_overflow",
    "delete",
    "find_positions",
    "gene_span",
    "inhibit",
    "overexpress",
    "perturb",
    "perturb_all",
    "perturb_sequence",
    "rank_shift_steps",
]


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Perturbed:
    """One cell perturbed once (a single gene or a group of genes).

    ``input_ids``: the perturbed sequence. ``orig_ids``: the original sequence to compare with
    (shortened only when overexpression overflows ``max_len``). ``pert_index`` / ``orig_index``:
    aligned positions of the compared genes. ``tokens``: the perturbed tokens as given;
    ``present``: which of them were in the cell. ``n_overflow``: genes dropped by truncation.
    """

    input_ids: np.ndarray
    orig_ids: np.ndarray
    pert_index: np.ndarray
    orig_index: np.ndarray
    tokens: np.ndarray
    present: np.ndarray
    n_overflow: int = 0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def orig_length(self) -> int:
        return int(self.orig_ids.shape[0])

    @property
    def affected(self) -> np.ndarray:
        """Token of each compared gene (aligned with ``pert_index``)."""
        return self.orig_ids[self.orig_index]


@dataclass(frozen=True)
class PerturbationBatch:
    """All perturbations of one cell: row ``b`` perturbs ``positions[b]`` (tokens ``tokens[b]``).

    ``input_ids`` (B, Lp) and ``lengths`` (B,) feed the model; ``pert_index`` / ``orig_index``
    (B, G) align row ``b``'s compared genes with positions of ``orig_ids`` (the unmodified cell).
    In "all" mode every row has the same length, so there is no padding.
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    positions: np.ndarray
    tokens: np.ndarray
    pert_index: np.ndarray
    orig_index: np.ndarray
    orig_ids: np.ndarray
    special: bool

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def affected(self) -> np.ndarray:
        """(B, G) tokens of the compared genes."""
        return self.orig_ids[self.orig_index]

    def keys(self, anchor_token: int | None = None) -> list:
        """Result-dictionary keys per row, as the reference writes them.

        Single genes: the token. Pairs with an anchor: the non-anchor token. Pairs without an
        anchor: a tuple of the two tokens in rank order.
        """
        toks = self.tokens
        if toks.shape[1] == 1:
            return [int(t) for t in toks[:, 0]]
        if anchor_token is not None:
            other = np.where(toks[:, 0] == anchor_token, toks[:, 1], toks[:, 0])
            return [int(t) for t in other]
        return [tuple(int(t) for t in row) for row in toks]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def gene_span(length: int, special: bool) -> tuple[int, int]:
    """Half-open range of gene positions in a sequence of ``length`` tokens."""
    if special:
        if length < 2:
            raise ValueError(f"A sequence with <cls> and <eos> needs at least 2 tokens, got {length}.")
        return 1, length - 1
    return 0, length


def _as_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"Expected a 1-D integer token array, got shape {arr.shape} and dtype {arr.dtype}.")
    return arr


def _as_tokens(tokens, dtype) -> np.ndarray:
    toks = np.atleast_1d(np.asarray(tokens))
    if toks.ndim != 1 or toks.size == 0 or not np.issubdtype(toks.dtype, np.integer):
        raise ValueError(f"Expected one or more integer tokens to perturb, got {tokens!r}.")
    if np.unique(toks).size != toks.size:
        raise ValueError(f"Tokens to perturb must be distinct, got {toks.tolist()}.")
    return toks.astype(np.result_type(dtype, np.min_scalar_type(int(toks.max()))), copy=False)


def find_positions(ids, tokens) -> np.ndarray:
    """Position of each token in ``ids`` (its first occurrence), or -1 when absent."""
    ids = _as_ids(ids)
    toks = np.atleast_1d(np.asarray(tokens))
    if ids.size == 0:
        return np.full(toks.shape, -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    where = np.searchsorted(ids[order], toks, side="left")
    where = np.minimum(where, ids.size - 1)
    hit = ids[order[where]] == toks
    return np.where(hit, order[where], -1).astype(np.int64)


def rank_shift_steps(n_genes: int, rank_shift: int) -> int:
    """Number of ranks a gene moves for ``rank_shift`` quartiles of ``n_genes`` genes (>= 1)."""
    if rank_shift not in (1, 2, 3):
        raise ValueError(f"perturb_rank_shift must be 1, 2 or 3 (quartiles), got {rank_shift!r}.")
    return max(1, (rank_shift * int(n_genes)) // 4)


def calc_n_overflow(length: int, n_added: int, max_len: int | None) -> int:
    """Positions by which a cell of ``length`` tokens plus ``n_added`` inserted genes exceeds ``max_len``."""
    if max_len is None:
        return 0
    return max(0, int(length) + int(n_added) - int(max_len))


# ---------------------------------------------------------------------------------------------
# the batched core: row b perturbs positions P[b] of one cell
# ---------------------------------------------------------------------------------------------
def _move_keys(P: np.ndarray, perturb_type: str, length: int, special: bool, rank_shift: int | None) -> np.ndarray:
    """Sort keys (B, k) for the moved positions; unmoved positions keep their own index as key."""
    g0, g1 = gene_span(length, special)
    if perturb_type == "overexpress":
        return np.full(P.shape, g0 - 0.5)
    d = rank_shift_steps(g1 - g0, rank_shift)
    if perturb_type == "inhibit":
        # just after the gene that held rank r + d (clipped: last gene, still before <eos>)
        return np.minimum(P + d, g1 - 1) + 0.5
    # activate: just before the gene that held rank r - d (clipped: first gene, after <cls>)
    return np.maximum(P - d, g0) - 0.5


def _batch_core(
    ids: np.ndarray, P: np.ndarray, perturb_type: str, special: bool, rank_shift: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source-position map ``src`` (B, Lp) and aligned (pert_index, orig_index) (B, G)."""
    L = ids.shape[0]
    B, k = P.shape
    rows = np.arange(B)[:, None]
    g0, g1 = gene_span(L, special)
    hit = np.zeros((B, L), dtype=bool)
    hit[rows, P] = True
    if perturb_type == "delete":
        src = np.nonzero(~hit)[1].reshape(B, L - k)
    else:
        keys = np.broadcast_to(np.arange(L, dtype=np.float64), (B, L)).copy()
        keys[rows, P] = _move_keys(P, perturb_type, L, special, rank_shift)
        src = np.argsort(keys, axis=1, kind="stable")
    is_gene = (src >= g0) & (src < g1)
    compared = is_gene & ~np.take_along_axis(hit, src, axis=1)
    n_cmp = (g1 - g0) - k
    pert_index = np.nonzero(compared)[1].reshape(B, n_cmp)
    orig_index = np.take_along_axis(src, pert_index, axis=1)
    return src, pert_index, orig_index


def _check_type(perturb_type: str, rank_shift: int | None) -> None:
    check_choice("perturb_type", perturb_type, PERTURB_TYPES)
    if perturb_type in ("inhibit", "activate"):
        rank_shift_steps(1, rank_shift)  # validates


# ---------------------------------------------------------------------------------------------
# one perturbation of one cell (single gene or group)
# ---------------------------------------------------------------------------------------------
def _reorder_one(ids, tokens, perturb_type: str, special: bool, rank_shift: int | None) -> Perturbed:
    ids = _as_ids(ids)
    _check_type(perturb_type, rank_shift)
    toks = _as_tokens(tokens, ids.dtype)
    pos = find_positions(ids, toks)
    present = pos >= 0
    g0, g1 = gene_span(ids.shape[0], special)
    if np.any(present & ((pos < g0) | (pos >= g1))):
        raise ValueError("Special tokens (<cls>/<eos>) cannot be perturbed.")
    P = np.sort(pos[present])[None, :]
    src, pi, oi = _batch_core(ids, P, perturb_type, special, rank_shift)
    return Perturbed(ids[src[0]], ids, pi[0], oi[0], toks, present, 0)


def delete(ids: ArrayLike, tokens: ArrayLike, *, special: bool = False) -> Perturbed:
    """Remove the given token(s) from a cell; tokens not in the cell are ignored (see ``present``)."""
    return _reorder_one(ids, tokens, "delete", special, None)


def inhibit(ids: ArrayLike, tokens: ArrayLike, rank_shift: int, *, special: bool = False) -> Perturbed:
    """Move the given gene(s) ``rank_shift`` quartiles of the cell's gene count toward the end."""
    return _reorder_one(ids, tokens, "inhibit", special, rank_shift)


def activate(ids: ArrayLike, tokens: ArrayLike, rank_shift: int, *, special: bool = False) -> Perturbed:
    """Move the given gene(s) ``rank_shift`` quartiles of the cell's gene count toward the front."""
    return _reorder_one(ids, tokens, "activate", special, rank_shift)


def overexpress(ids: ArrayLike, tokens: ArrayLike, *, special: bool = False, max_len: int | None = None) -> Perturbed:
    """Put the token(s) first (after ``<cls>``) in the given order, inserting absent ones.

    When the result exceeds ``max_len`` it is truncated to ``max_len`` (keeping ``<eos>``), and
    the compared original drops the same last non-listed genes, so both hold the same gene set.
    """
    ids = _as_ids(ids)
    toks = _as_tokens(tokens, ids.dtype)
    L = ids.shape[0]
    g0, g1 = gene_span(L, special)
    pos = find_positions(ids, toks)
    present = pos >= 0
    if np.any(present & ((pos < g0) | (pos >= g1))):
        raise ValueError("Special tokens (<cls>/<eos>) cannot be perturbed.")
    n_special = L - (g1 - g0)
    if max_len is not None and toks.size + n_special > max_len:
        raise ValueError(f"Cannot overexpress {toks.size} genes within max_len={max_len}.")
    listed = np.zeros(L, dtype=bool)
    listed[pos[present]] = True
    gene_pos = np.arange(g0, g1)
    rest = gene_pos[~listed[g0:g1]]  # original positions of the non-listed genes, in rank order
    n_over = calc_n_overflow(L, int((~present).sum()), max_len)
    kept = rest[: rest.size - n_over]
    dtype = np.result_type(ids.dtype, toks.dtype)
    new = np.concatenate([ids[:g0], toks, ids[kept], ids[g1:]]).astype(dtype, copy=False)
    # original: drop the same truncated genes so both sides share the non-listed gene set
    keep_orig = np.ones(L, dtype=bool)
    keep_orig[rest[rest.size - n_over:]] = False
    orig = ids[keep_orig]
    new_pos = np.cumsum(keep_orig) - 1
    pert_index = np.arange(g0 + toks.size, g0 + toks.size + kept.size)
    return Perturbed(new, orig, pert_index, new_pos[kept], toks, present, n_over)


def perturb(
    ids: ArrayLike,
    tokens: ArrayLike,
    perturb_type: PerturbType = "delete",
    *,
    special: bool = False,
    max_len: int | None = None,
    rank_shift: int | None = None,
) -> Perturbed:
    """Dispatch to :func:`delete`, :func:`overexpress`, :func:`inhibit` or :func:`activate`."""
    _check_type(perturb_type, rank_shift)
    if perturb_type == "overexpress":
        return overexpress(ids, tokens, special=special, max_len=max_len)
    return _reorder_one(ids, tokens, perturb_type, special, rank_shift)


perturb_sequence = perturb  # the name exported by geneformer.perturb (whose ``perturb`` runs a model)


# ---------------------------------------------------------------------------------------------
# "all" mode: every perturbation of one cell as one batch
# ---------------------------------------------------------------------------------------------
def all_positions(
    length: int,
    perturb_type: PerturbType = "delete",
    *,
    special: bool = False,
    combos: int = 0,
    anchor_pos: int | None = None,
) -> np.ndarray:
    """Positions perturbed in "all" mode, shape (B, 1) or (B, 2) for pairs (ascending per row).

    Single genes: every gene, except those for which the edit is a no-op (the first gene for
    overexpress and activate, the last gene for inhibit). ``combos=1`` with ``anchor_pos``: the
    anchor paired with every other gene; without an anchor: every unordered pair of genes.
    """
    g0, g1 = gene_span(length, special)
    if combos not in (0, 1):
        raise ValueError(f"combos must be 0 or 1, got {combos!r}.")
    if combos == 0:
        if anchor_pos is not None:
            raise ValueError("anchor_pos needs combos=1 (an anchor is paired with each other gene).")
        lo = g0 + 1 if perturb_type in ("overexpress", "activate") else g0
        hi = g1 - 1 if perturb_type == "inhibit" else g1
        return np.arange(lo, max(lo, hi), dtype=np.int64)[:, None]
    if anchor_pos is not None:
        if not g0 <= anchor_pos < g1:
            raise ValueError(f"anchor position {anchor_pos} is not a gene position in [{g0}, {g1}).")
        others = np.arange(g0, g1, dtype=np.int64)
        others = others[others != anchor_pos]
        return np.sort(np.stack([np.full_like(others, anchor_pos), others], axis=1), axis=1)
    a, b = np.triu_indices(g1 - g0, k=1)
    return np.stack([a + g0, b + g0], axis=1).astype(np.int64)


def perturb_all(
    ids: ArrayLike,
    perturb_type: PerturbType = "delete",
    *,
    special: bool = False,
    combos: int = 0,
    anchor_token: int | None = None,
    rank_shift: int | None = None,
    positions: np.ndarray | None = None,
) -> PerturbationBatch:
    """Every perturbation of one cell (or the rows ``positions`` of :func:`all_positions`).

    Pass a slice of :func:`all_positions` as ``positions`` to build a long cell in chunks.
    """
    ids = _as_ids(ids)
    _check_type(perturb_type, rank_shift)
    L = ids.shape[0]
    if positions is None:
        anchor_pos = None
        if anchor_token is not None:
            p = int(find_positions(ids, [anchor_token])[0])
            if p < 0:
                raise KeyError(f"Anchor token {anchor_token} is not in this cell.")
            anchor_pos = p
            combos = 1 if combos == 0 else combos
        positions = all_positions(L, perturb_type, special=special, combos=combos, anchor_pos=anchor_pos)
    P = np.asarray(positions, dtype=np.int64)
    if P.ndim == 1:
        P = P[:, None]
    P = np.sort(P, axis=1)
    g0, g1 = gene_span(L, special)
    if P.size and (P.min() < g0 or P.max() >= g1):
        raise ValueError(f"Positions must be gene positions in [{g0}, {g1}).")
    if P.shape[1] > 1 and np.any(P[:, 1:] == P[:, :-1]):
        raise ValueError("A row of positions repeats a position.")
    src, pi, oi = _batch_core(ids, P, perturb_type, special, rank_shift)
    new = ids[src]
    lengths = np.full(new.shape[0], new.shape[1], dtype=np.int64)
    return PerturbationBatch(new, lengths, P, ids[P], pi, oi, ids, special)
