"""The resolved description of a perturbation run: genes as tokens, states and their embeddings,
the anchor, the embedding mode, which cells and how the work is cut, all checked once.

:func:`perturbation_spec` turns user-level arguments into a :class:`PerturbSpec`; :func:`run_settings`
and :func:`select_for` combine it with a model and a dataset at run time (``_run.py``).
"""

from __future__ import annotations

import logging
import numbers
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._constants import CLS, EOS, PAD, PERTURB_EMB_MODES, PERTURB_TYPES, PerturbEmbMode, PerturbType
from .._utils import (
    InputError,
    OptionError,
    check_cell_states,
    check_choice,
    check_emb_layer,
    check_filter_data,
    check_positive_int,
    doc_params,
    state_list,
)
from .._utils._docs import doc_batch_size, doc_cell_states, doc_emb_layer, doc_filter_data, doc_token_budget
from ..models import layer_index, model_input_size
from ._engine import RunSettings
from ._selection import CellSelection, select_cells

logger = logging.getLogger(__name__)

__all__ = ["PerturbSpec", "perturbation_spec", "run_settings", "select_for"]

# texts shared by perturbation_spec and perturb()
doc_perturb_type = """perturb_type: "delete", "overexpress", "inhibit" or "activate" (the last two need
            ``rank_shift``)."""
doc_rank_shift = """rank_shift: inhibit/activate: how many quartiles (1, 2 or 3) of the cell's genes the
            gene moves; ignored (with a warning) for delete/overexpress."""
doc_genes = """genes: "all" (each gene of each cell in turn) or genes perturbed together: Ensembl IDs,
            symbols or token ids."""
doc_combos = """combos: 1 perturbs pairs (with ``anchor_gene``: the anchor with each other gene; without:
            every pair, keyed by the two sorted tokens)."""
doc_anchor = """anchor_gene: the gene paired with every other gene when ``combos=1`` (cell-level shifts only)."""
doc_emb_mode = """emb_mode: "cell" (mean over genes), "cls" (the ``<cls>`` state), "cell_and_gene" or
            "cls_and_gene" (also every compared gene's cosine)."""
doc_state_embs = """state_embs: ``{state: (H,) vector}`` or the path of its pickle (with cell states only)."""
doc_cell_inds = """cell_inds_to_perturb: "all" or ``{"start": i, "end": j}``: the slice of the selected
            cells (in processing order) to perturb."""
doc_rows_per_part = """rows_per_part: perturbations per results part (the unit of resuming and of
            several processes)."""


@dataclass(frozen=True, eq=False)
class PerturbSpec:
    """What a perturbation run computes, resolved and checked (see :func:`perturbation_spec`).

    ``genes``: "all" or the genes as given; ``tokens``: their tokens (None for "all");
    ``states``: the checked ``cell_states_to_model`` (None without states); ``state_embs``:
    ``{state: (H,) float32 tensor}`` for the start, goal and alternative states; ``vocab``: a
    ``GeneVocab`` or a token dictionary.
    """

    perturb_type: PerturbType
    rank_shift: int | None
    genes: str | tuple
    tokens: tuple[int, ...] | None
    combos: int
    anchor_gene: Any
    anchor_token: int | None
    emb_mode: PerturbEmbMode
    states: dict | None
    state_embs: dict | None
    filter_data: dict | None
    max_ncells: int | None
    cell_inds_to_perturb: Any
    emb_layer: int
    batch_size: int | None
    rows_per_part: int
    token_budget: int | None
    cell_id_column: str | None
    vocab: Any

    @property
    def token_dict(self) -> dict[str, int]:
        return self.vocab if isinstance(self.vocab, dict) else self.vocab.token_dict

    @property
    def special_ids(self) -> tuple[int | None, int | None]:
        """Ids of ``<cls>`` and ``<eos>`` (None when the vocabulary has none)."""
        td = self.token_dict
        return td.get(CLS), td.get(EOS)

    @property
    def state_list(self) -> list:
        return state_list(self.states)

    @property
    def state_labels(self) -> list[str] | None:
        """The states as the tidy table's labels (None without states)."""
        return [str(s) for s in self.state_list] or None

    @property
    def state_matrix(self) -> torch.Tensor | None:
        """(n_states, H) state embeddings in state order (None without states)."""
        return torch.stack([self.state_embs[s] for s in self.state_list]) if self.states else None

    def gene_labels(self) -> dict[int, str] | None:
        """"SYMBOL ENSG..." of the perturbed and anchor tokens, for messages (None for a plain dictionary)."""
        if isinstance(self.vocab, dict):
            return None
        inv, sym = self.vocab.id_to_token, self.vocab.ensembl_to_symbol
        tokens = list(self.tokens or []) + ([self.anchor_token] if self.anchor_token is not None else [])
        return {t: f"{sym.get(inv.get(t, ''), '')} {inv.get(t, t)}".strip() for t in tokens}


def _as_vocab(vocab: Any) -> Any:
    if isinstance(vocab, Mapping):
        return {str(k): int(v) for k, v in vocab.items()}
    from ..vocab import as_vocab

    return as_vocab(vocab)


def _tokens(vocab: Any, genes: Sequence[Any], what: str) -> list[int]:
    """Token ids of genes (Ensembl IDs, symbols or token ids); raises listing every unknown gene."""
    if all(isinstance(g, numbers.Integral) and not isinstance(g, bool) for g in genes):
        return [int(g) for g in genes]
    if isinstance(vocab, dict):
        missing = [g for g in genes if g not in vocab]
        if missing:
            raise KeyError(f"{what}: {len(missing)} gene(s) not in the token dictionary: {missing}")
        return [int(vocab[g]) for g in genes]
    try:
        return [int(t) for t in vocab.tokens_for(genes)]
    except KeyError as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise KeyError(f"{what}: {msg}. Use Ensembl IDs (or symbols) of the {vocab.version or 'custom'} "
                       "vocabulary.") from None


def _state_embs(embs: Any, wanted: list) -> dict:
    """``{state: (H,) float32 tensor}`` for the wanted states, from a dict or its pickle's path."""
    if embs is None:
        raise OptionError("cell_states_to_model needs state embeddings (state_embs_dict: {state: embedding}); make "
                          "them with geneformer.embeddings.state_embeddings (EmbExtractor.get_state_embs).")
    if isinstance(embs, (str, os.PathLike)):
        from ..embeddings import load_state_embs

        embs = load_state_embs(embs)
    if not isinstance(embs, Mapping):
        raise OptionError("state_embs_dict must be a dict {state: tensor(H)} or the path of its pickle.")
    missing = [s for s in wanted if s not in embs]
    if missing:
        raise KeyError(f"state_embs_dict has no embedding for state(s) {missing}; it has {list(embs)}.")
    out = {}
    for s in wanted:
        v = embs[s]
        out[s] = torch.as_tensor(np.asarray(v.detach().cpu() if torch.is_tensor(v) else v),
                                 dtype=torch.float32).reshape(-1)
    dims = {v.numel() for v in out.values()}
    if len(dims) != 1:
        raise OptionError(f"state embeddings have different sizes {sorted(dims)}.")
    return out


@doc_params(perturb_type=doc_perturb_type, rank_shift=doc_rank_shift, genes=doc_genes, combos=doc_combos,
            anchor=doc_anchor, emb_mode=doc_emb_mode, cell_states=doc_cell_states, state_embs=doc_state_embs,
            filter_data=doc_filter_data, cell_inds=doc_cell_inds, emb_layer=doc_emb_layer,
            batch_size=doc_batch_size, rows_per_part=doc_rows_per_part, token_budget=doc_token_budget)
def perturbation_spec(
    perturb_type: PerturbType = "delete",
    genes: str | Sequence[Any] = "all",
    *,
    rank_shift: int | None = None,
    combos: int = 0,
    anchor_gene: Any = None,
    emb_mode: PerturbEmbMode = "cls",
    cell_states_to_model: Mapping[str, Any] | None = None,
    state_embs: Mapping[Any, Any] | str | os.PathLike | None = None,
    filter_data: Mapping[str, Any] | None = None,
    max_ncells: int | None = None,
    cell_inds_to_perturb: str | Mapping[str, int] = "all",
    emb_layer: int = -1,
    batch_size: int | None = 100,
    rows_per_part: int = 1000,
    token_budget: int | None = None,
    vocab: Any = "V2",
    cell_id_column: str | None = None,
) -> PerturbSpec:
    """Check and resolve the arguments of a perturbation run (the reference's rules, SPEC 7).

    A gene list is perturbed as one group (``anchor_gene``/``combos`` ignored); with cell states
    the anchor is ignored; an anchor gives cell-level shifts only (``*_and_gene`` → cell level).

    Args:
        {perturb_type}
        {genes}
        {rank_shift}
        {combos}
        {anchor}
        {emb_mode}
        {cell_states}
        {state_embs}
        {filter_data}
        max_ncells: perturb at most this many cells (chosen with ``shuffle(seed=42)``); None: all.
        {cell_inds}
        {emb_layer}
        {batch_size}
        {rows_per_part}
        {token_budget}
        vocab: "V1"/"V2", a vocabulary folder, a ``GeneVocab``, or a token dictionary (token → id).
        cell_id_column: the dataset's cell-identifier column (None: detect).
    """
    check_choice("perturb_type", perturb_type, PERTURB_TYPES)
    if perturb_type in ("delete", "overexpress"):
        if rank_shift is not None:
            logger.warning("perturb_rank_shift only applies to inhibit/activate; ignoring it for %s.", perturb_type)
        rank_shift = None
    elif rank_shift not in (1, 2, 3):
        raise OptionError(
            f"perturb_type={perturb_type!r} needs perturb_rank_shift (rank_shift) 1, 2 or 3 (how many quartiles "
            f"of the cell's genes the gene moves), got {rank_shift!r}."
        )
    check_choice("emb_mode", emb_mode, PERTURB_EMB_MODES)
    check_choice("combos", combos, (0, 1))
    max_ncells = check_positive_int("max_ncells", max_ncells, allow_none=True)
    batch_size = check_positive_int("batch_size", batch_size, allow_none=True)
    rows_per_part = check_positive_int("rows_per_part", rows_per_part)
    token_budget = check_positive_int("token_budget", token_budget, allow_none=True)
    emb_layer = check_emb_layer(emb_layer)
    filter_data = check_filter_data(filter_data)

    vocab = _as_vocab(vocab)
    tokens = None
    if isinstance(genes, (str, numbers.Integral)) and genes != "all":
        genes = [genes]
    if genes != "all":
        genes = list(dict.fromkeys(genes))  # drop repeats, keep order
        if not genes:
            raise OptionError('genes_to_perturb is an empty list; give Ensembl IDs or "all".')
        tokens = tuple(_tokens(vocab, genes, "genes_to_perturb"))
        if anchor_gene is not None or combos:
            logger.warning("A gene list is perturbed as one group: anchor_gene and combos are ignored.")
        anchor_gene, combos = None, 0
        genes = tuple(genes)

    states = embs = None
    if cell_states_to_model is not None:
        states = check_cell_states(cell_states_to_model)
        if anchor_gene is not None:
            logger.warning("anchor_gene is not used when modelling cell states; ignoring it.")
            anchor_gene = None
        embs = _state_embs(state_embs, state_list(states))
    elif state_embs is not None:
        logger.warning("state_embs_dict is only used with cell_states_to_model; ignoring it.")

    anchor_token = None
    if anchor_gene is not None:
        anchor_token = _tokens(vocab, [anchor_gene], "anchor_gene")[0]
        if combos == 0:
            raise OptionError(
                "anchor_gene needs combos=1 (the anchor is perturbed together with each other gene). To "
                f"measure the effect of perturbing the anchor alone, use genes_to_perturb=[{anchor_gene!r}] "
                "with emb_mode='cell_and_gene'."
            )
        if emb_mode.endswith("_and_gene"):
            logger.warning("With an anchor gene only cell-level shifts are computed (emb_mode %s -> %s).",
                           emb_mode, emb_mode.replace("_and_gene", ""))
            emb_mode = emb_mode.replace("_and_gene", "")
    spec = PerturbSpec(
        perturb_type=perturb_type, rank_shift=rank_shift, genes=genes, tokens=tokens, combos=int(combos),
        anchor_gene=anchor_gene, anchor_token=anchor_token, emb_mode=emb_mode, states=states, state_embs=embs,
        filter_data=filter_data, max_ncells=max_ncells, cell_inds_to_perturb=cell_inds_to_perturb,
        emb_layer=emb_layer, batch_size=batch_size, rows_per_part=rows_per_part, token_budget=token_budget,
        cell_id_column=cell_id_column, vocab=vocab,
    )
    if emb_mode.startswith("cls") and spec.special_ids[0] is None:
        version = "token dictionary" if isinstance(vocab, dict) else f"{vocab.version or 'custom'} vocabulary"
        raise OptionError(
            f"emb_mode={emb_mode!r} needs a <cls> token, which the {version} does not have; use emb_mode='cell' "
            "or 'cell_and_gene' (V1 models), or a V2 model."
        )
    return spec


def select_for(spec: PerturbSpec, ds: Any) -> CellSelection:
    """The cells of ``ds`` that ``spec`` perturbs, in processing order."""
    tokens = spec.tokens
    states = spec.states
    return select_cells(
        ds,
        filter_data=spec.filter_data,
        state_key=states["state_key"] if states else None,
        start_state=states["start_state"] if states else None,
        # overexpression inserts absent genes, so only the other types need the genes in the cell
        require_tokens=tokens if (tokens is not None and spec.perturb_type != "overexpress") else None,
        anchor_token=spec.anchor_token,
        max_ncells=spec.max_ncells,
        cell_inds_to_perturb=spec.cell_inds_to_perturb,
        cell_id_column=spec.cell_id_column,
        gene_names=spec.gene_labels(),
    )


def run_settings(spec: PerturbSpec, model: Any, sel: CellSelection) -> RunSettings:
    """The engine's settings for ``spec`` on ``model`` and the selected cells (special tokens read
    from the cells: all of them start with ``<cls>`` and end with ``<eos>``, or none does)."""
    cls_id, eos_id = spec.special_ids
    first, last = sel.seqs.first_tokens(), sel.seqs.last_tokens()
    has = (first == cls_id) & (last == eos_id) if cls_id is not None and eos_id is not None else \
        np.zeros(len(sel), dtype=bool)
    if has.any() and not has.all():
        bad = np.flatnonzero(~has)[:5].tolist()
        raise InputError(f"Some selected cells start with <cls> and end with <eos> and others do not "
                         f"(e.g. cells {bad} in processing order); tokenize all cells the same way.")
    special = bool(has.all())
    if spec.emb_mode.startswith("cls") and not special:
        raise InputError(
            f"emb_mode={spec.emb_mode!r} needs cells that start with <cls> and end with <eos>, but these cells "
            "have no special tokens. Tokenize with special_token=True (V2), or use emb_mode='cell'."
        )
    if spec.tokens is not None and special and {cls_id, eos_id} & set(spec.tokens):
        raise OptionError("<cls>/<eos> cannot be perturbed.")
    return RunSettings(
        perturb_type=spec.perturb_type,
        rank_shift=spec.rank_shift,
        tokens=spec.tokens,
        combos=spec.combos,
        anchor_token=spec.anchor_token,
        emb_mode=spec.emb_mode,
        layer=layer_index(model, spec.emb_layer),
        special=special,
        max_len=model_input_size(model),
        n_states=len(spec.state_list),
        pad_id=int(spec.token_dict.get(PAD, 0)),
    )
