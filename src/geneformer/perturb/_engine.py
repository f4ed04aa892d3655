"""The perturbation compute core: perturbed sequences as arrays, batched forwards, vectorised cosines.

A run is cut into *parts* (consecutive perturbations of consecutive cells, see :func:`plan_parts`).
For one part, :func:`build_part` builds every perturbed sequence with :mod:`.transforms` (numpy, no
per-gene Python) plus flat alignment arrays that say, for every compared gene, where it sits in the
perturbed sequence and in the original cell. :func:`run_part` then

1. runs each original cell once (only up to the needed layer; only ``<cls>`` in the CLS modes),
2. runs all perturbed sequences of the part in length-sorted batches across genes and cells, padded
   to the batch's longest sequence, filled up to a token budget,
3. gathers the aligned original/perturbed gene rows with index tensors and computes every cosine
   similarity on the device at once; per-perturbation means are segment sums (``index_add_``).

Every index is computed on the host from the plan's arrays and copied without blocking
(``host_to_device``), and nothing in the batch loops reads a value back from the device, so on a
GPU the host queues batch after batch while the device computes; the results come back once per
part. (The perturbed sequences are built with numpy: for a delete-all they are a few tens of MB per
cell against tens of TFLOP of forward passes, so building them on the device would save nothing.)

What is compared (SPEC 7.4, with the reference's labelling bugs fixed):

* ``cell``/``cell_and_gene`` without states: the mean over the compared genes of the cosine between
  each gene's original and perturbed embedding (not the cosine of mean embeddings).
* ``cls``/``cls_and_gene`` without states: the cosine of the perturbed and original ``<cls>`` states.
* with states: for each state ``s``, ``cos(pert, s) - cos(orig, s)`` where pert/orig are the mean
  embeddings (cell modes; all positions, or the genes between ``<cls>`` and ``<eos>``) or the
  ``<cls>`` states (CLS modes).
* ``*_and_gene``: additionally the cosine for every compared gene, labelled by that gene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._constants import PERTURB_EMB_MODES
from .._utils import host_to_device
from ..data import TokenSequences
from ..embeddings import gene_position_mask, mean_over_genes
from ..inference import iter_forward
from . import _transforms as T

EPS = 1e-8  # torch.nn.CosineSimilarity's default, as the reference

__all__ = [
    "PERTURB_EMB_MODES",
    "PartPlan",
    "PartResult",
    "RunSettings",
    "Segment",
    "build_part",
    "n_perturbations",
    "plan_parts",
    "run_part",
]


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides what is computed (resolved from the user's arguments)."""

    perturb_type: str = "delete"
    rank_shift: int | None = None
    tokens: tuple[int, ...] | None = None  # None: every gene of each cell ("all" mode)
    combos: int = 0
    anchor_token: int | None = None
    emb_mode: str = "cell"
    layer: int = 1  # hidden-state index (n_layers + emb_layer)
    special: bool = False  # cells carry <cls> ... <eos>
    max_len: int = 2048
    n_states: int = 0  # number of state embeddings compared against (0: no states)
    pad_id: int = 0

    @property
    def group(self) -> bool:
        return self.tokens is not None

    @property
    def cls(self) -> bool:
        return self.emb_mode.startswith("cls")

    @property
    def gene_level(self) -> bool:
        return self.emb_mode.endswith("_and_gene")

    @property
    def needs_gene_cos(self) -> bool:
        # the cell value of the non-CLS modes without states is the mean of the gene cosines
        return self.gene_level or (not self.cls and self.n_states == 0)

    @property
    def key_width(self) -> int:
        if self.group:
            return len(self.tokens)
        return 2 if (self.combos == 1 and self.anchor_token is None) else 1


# ---------------------------------------------------------------------------------------------
# planning: which perturbations of which cells form each part
# ---------------------------------------------------------------------------------------------
Segment = tuple[int, int, int]  # (cell index in processing order, first row, end row) of its perturbations


def n_perturbations(length: int, s: RunSettings) -> int:
    """How many perturbed sequences a cell of ``length`` tokens gives."""
    if s.group:
        return 1
    n = length - (2 if s.special else 0)
    if s.combos == 1:
        return max(n - 1, 0) if s.anchor_token is not None else n * (n - 1) // 2
    if s.perturb_type == "delete":
        return max(n, 0)
    return max(n - 1, 0)  # overexpress/activate skip the first gene, inhibit the last


def plan_parts(lengths: np.ndarray, s: RunSettings, rows_per_part: int) -> list[list[Segment]]:
    """Cut the run into parts of at most ``rows_per_part`` perturbations (a long cell spans parts).

    Depends only on the cells and the settings, so a resumed run cuts exactly the same parts.
    """
    rows_per_part = max(1, int(rows_per_part))
    parts: list[list[Segment]] = []
    current: list[Segment] = []
    room = rows_per_part
    for c, length in enumerate(np.asarray(lengths).tolist()):
        total = n_perturbations(int(length), s)
        r = 0
        while r < total:
            take = min(room, total - r)
            current.append((c, r, r + take))
            r += take
            room -= take
            if room == 0:
                parts.append(current)
                current, room = [], rows_per_part
    if current:
        parts.append(current)
    return parts


# ---------------------------------------------------------------------------------------------
# building one part
# ---------------------------------------------------------------------------------------------
@dataclass
class PartPlan:
    """The perturbed sequences of one part and their alignment with the original cells.

    ``cells``: global cell index of each local cell; ``orig``: the original sequence of each local
    cell (group overexpression may shorten it, see transforms.overexpress). Per perturbation row:
    ``pert`` (sequences), ``row_cell`` (local cell), ``keys`` (n_rows, key_width) tokens.
    Per compared gene (flat, grouped by row with ``cmp_offsets``): ``cmp_pert_pos`` (position in the
    perturbed sequence), ``cmp_bank`` (position in the concatenated originals) and ``cmp_affected``.
    """

    cells: np.ndarray
    orig: TokenSequences
    pert: TokenSequences
    row_cell: np.ndarray
    keys: np.ndarray
    cmp_offsets: np.ndarray
    cmp_pert_pos: np.ndarray
    cmp_bank: np.ndarray
    cmp_affected: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.pert)


def _flat(arrays: Sequence[np.ndarray], dtype=np.int64) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def _offsets(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def build_part(seqs: TokenSequences, segments: Sequence[Segment], s: RunSettings) -> PartPlan:
    """Perturbed sequences and alignment arrays of one part (a Python loop over cells, not genes)."""
    cells: list[int] = []
    orig_list: list[np.ndarray] = []
    pert_vals, pert_lens, row_cell, keys = [], [], [], []
    cmp_counts, cmp_pos, cmp_bank, cmp_aff = [], [], [], []
    bank_offset = 0
    for c, r0, r1 in segments:
        ids = seqs.row(c)
        local = len(cells)
        if s.group:
            p = T.perturb(ids, list(s.tokens), s.perturb_type, special=s.special, max_len=s.max_len,
                          rank_shift=s.rank_shift)
            orig = p.orig_ids
            new = p.input_ids[None, :]
            pi, oi = p.pert_index[None, :], p.orig_index[None, :]
            key = np.asarray(s.tokens, dtype=np.int64)[None, :]
        else:
            orig = ids
            anchor_pos = None
            if s.anchor_token is not None:
                anchor_pos = int(T.find_positions(ids, [s.anchor_token])[0])
                if anchor_pos < 0:  # cells were filtered on the anchor; guard anyway
                    raise ValueError(f"cell {c} does not contain the anchor token {s.anchor_token}")
            P = T.all_positions(len(ids), s.perturb_type, special=s.special, combos=s.combos,
                                anchor_pos=anchor_pos)[r0:r1]
            pb = T.perturb_all(ids, s.perturb_type, special=s.special, rank_shift=s.rank_shift, positions=P)
            new, pi, oi = pb.input_ids, pb.pert_index, pb.orig_index
            toks = pb.tokens.astype(np.int64)
            if s.anchor_token is not None:
                key = np.where(toks[:, 0] == s.anchor_token, toks[:, 1], toks[:, 0])[:, None]
            elif toks.shape[1] > 1:
                key = np.sort(toks, axis=1)  # the same pair gets the same key in every cell
            else:
                key = toks
        cells.append(c)
        orig_list.append(np.asarray(orig, dtype=np.int64))
        b, width = new.shape
        pert_vals.append(new.reshape(-1))
        pert_lens.append(np.full(b, width, dtype=np.int64))
        row_cell.append(np.full(b, local, dtype=np.int64))
        keys.append(key)
        cmp_counts.append(np.full(b, pi.shape[1], dtype=np.int64))
        cmp_pos.append(pi.reshape(-1))
        cmp_bank.append(oi.reshape(-1) + bank_offset)
        cmp_aff.append(np.asarray(orig)[oi].reshape(-1))
        bank_offset += len(orig)
    orig_seqs = TokenSequences(_flat(orig_list), _offsets([len(o) for o in orig_list]))
    pert = TokenSequences(_flat(pert_vals), _offsets(_flat(pert_lens)))
    return PartPlan(
        cells=np.asarray(cells, dtype=np.int64),
        orig=orig_seqs,
        pert=pert,
        row_cell=_flat(row_cell),
        keys=np.concatenate(keys).astype(np.int64) if keys else np.zeros((0, s.key_width), np.int64),
        cmp_offsets=_offsets(_flat(cmp_counts)),
        cmp_pert_pos=_flat(cmp_pos),
        cmp_bank=_flat(cmp_bank),
        cmp_affected=_flat(cmp_aff),
    )


# ---------------------------------------------------------------------------------------------
# forward helpers
# ---------------------------------------------------------------------------------------------
def _masked_mean(hidden: torch.Tensor, lengths: torch.Tensor, special: bool) -> torch.Tensor:
    """Mean over each row's positions (the genes between <cls> and <eos> when ``special``)."""
    flags = torch.full_like(lengths, bool(special), dtype=torch.bool)
    return mean_over_genes(hidden, gene_position_mask(lengths, hidden.shape[1], flags, flags))


def _segments(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the segments ``rows`` of a ragged array, and the local row of each."""
    counts = offsets[rows + 1] - offsets[rows]
    local = np.repeat(np.arange(len(rows)), counts)
    flat = np.repeat(offsets[rows] - _offsets(counts)[:-1], counts) + np.arange(int(counts.sum()))
    return flat, local


# ---------------------------------------------------------------------------------------------
# running one part
# ---------------------------------------------------------------------------------------------
@dataclass
class PartResult:
    """``cell_values``: (n_rows, max(n_states, 1)); ``gene_values``: (n_cmp,) or None."""

    cell_values: np.ndarray
    gene_values: np.ndarray | None


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=EPS)


def run_part(
    model: Any,
    plan: PartPlan,
    s: RunSettings,
    *,
    device: torch.device,
    token_budget: int,
    max_rows: int | None = None,
    state_embs: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
    workspace: dict | None = None,
) -> PartResult:
    """Forward the originals and the perturbed sequences of a part through the shared forward loop
    (``workspace``: the layers' scratch buffers, kept from part to part); return the comparisons."""
    n_local = len(plan.orig)
    need_gene = s.needs_gene_cos
    cls_only = s.cls and not need_gene
    S = state_embs.to(device=device, dtype=torch.float32) if state_embs is not None else None
    hidden_size = int(model.config.hidden_size)
    loop = dict(layer=s.layer, first_position=cls_only, batch_size=max_rows, token_budget=token_budget, device=device,
                amp_dtype=amp_dtype, pad_id=s.pad_id, validate=False, progress=False, workspace=workspace)
    with torch.inference_mode():
        # 1. originals, once per cell
        bank = orig_vec = None
        if need_gene:
            bank = torch.empty((int(plan.orig.offsets[-1]), hidden_size), dtype=torch.float32, device=device)
        if s.cls or S is not None:
            orig_vec = torch.empty((n_local, hidden_size), dtype=torch.float32, device=device)
        for batch in iter_forward(model, plan.orig, **loop):
            rows, hidden, lens = batch.rows, batch.hidden, batch.lengths
            rows_t = host_to_device(rows, device)
            if cls_only:
                orig_vec[rows_t] = hidden.float()
                continue
            if bank is not None:
                # every real position of the batch, in order (a boolean mask would make the host wait)
                flat, local = _segments(plan.orig.offsets, rows)
                pos = flat - plan.orig.offsets[rows][local]
                bank[host_to_device(flat, device)] = hidden[host_to_device(local, device),
                                                            host_to_device(pos, device)].float()
            if orig_vec is not None:
                orig_vec[rows_t] = (hidden[:, 0] if s.cls else _masked_mean(hidden, lens, s.special)).float()
        orig_state_cos = _cos(orig_vec[:, None, :], S[None]) if S is not None else None  # (n_local, S)
        if bank is not None:
            # each original gene row is compared with every perturbation of its cell: normalise it once
            bank = bank / torch.linalg.vector_norm(bank, dim=-1, keepdim=True).clamp_min(EPS)

        # 2. perturbed sequences, batched by length across genes and cells
        n_rows = plan.n_rows
        cell_values = torch.empty((n_rows, max(s.n_states, 1)), dtype=torch.float32, device=device)
        gene_values = torch.empty(int(plan.cmp_offsets[-1]), dtype=torch.float32, device=device) if need_gene else None
        row_cell_t = host_to_device(plan.row_cell, device)
        for batch in iter_forward(model, plan.pert, **loop):
            rows, lens = batch.rows, batch.lengths
            rows_t = host_to_device(rows, device)
            cells_t = row_cell_t[rows_t]
            if cls_only:
                first, hidden = batch.hidden, None
            else:
                hidden = batch.hidden
                first = hidden[:, 0]
            gcos = local_t = None
            if need_gene:
                flat, local = _segments(plan.cmp_offsets, rows)
                flat_t = host_to_device(flat, device)
                local_t = host_to_device(local, device)
                pert_rows = hidden[local_t, host_to_device(plan.cmp_pert_pos[flat], device)]
                orig_unit = bank[host_to_device(plan.cmp_bank[flat], device)]
                pert_rows = pert_rows.float()
                gcos = (pert_rows * orig_unit).sum(-1) / torch.linalg.vector_norm(pert_rows, dim=-1).clamp_min(EPS)
                gene_values[flat_t] = gcos
            if S is not None:
                vec = first if s.cls else _masked_mean(hidden, lens, s.special)
                cell_values[rows_t] = _cos(vec[:, None, :], S[None]) - orig_state_cos[cells_t]
            elif s.cls:
                cell_values[rows_t, 0] = _cos(first, orig_vec[cells_t])
            else:
                sums = torch.zeros(len(rows), dtype=torch.float32, device=device).index_add_(0, local_t, gcos)
                counts = host_to_device(plan.cmp_offsets[rows + 1] - plan.cmp_offsets[rows], device)
                cell_values[rows_t, 0] = sums / counts.to(torch.float32)
            if on_batch is not None:
                on_batch(len(rows))
    return PartResult(
        cell_values=cell_values.cpu().numpy(),
        gene_values=gene_values.cpu().numpy() if s.gene_level else None,
    )
