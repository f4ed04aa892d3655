"""``InSilicoPerturber``: the reference's perturber API, translated onto :mod:`geneformer.perturb`.

Usage (reference arguments and defaults; SPEC 7)::

    isp = InSilicoPerturber(perturb_type="delete", genes_to_perturb="all", emb_mode="cell_and_gene",
                            max_ncells=100, model_version="V1")
    isp.perturb_data("mini-V1/", "cells.dataset", "out/", "run1")
    # out/in_silico_delete_run1.parquet             tidy table, one row per value
    # out/in_silico_delete_run1_dict_*_raw.pickle   the reference's dictionaries (InSilicoPerturberStats)

Differences from the reference (all deliberate):

* ``inhibit`` / ``activate`` work (``perturb_rank_shift`` 1-3 quartiles, see ``perturb._transforms``);
  ``combos=1`` without an anchor perturbs every pair of genes (key: the two tokens, sorted).
* Overexpressed genes' affected-gene labels are aligned (the reference shifted them by one);
  ``n_overflow`` counts added genes once; genes missing from the vocabulary are an error listing them.
* Every cell's unperturbed states are computed once; perturbed sequences of all genes and cells
  are batched by length; only the needed layer is computed (only ``<cls>`` in the CLS modes).
* Results are written per part, atomically; a rerun skips finished parts (``resume``), and a
  finished run is not recomputed. Several processes (``torchrun --nproc-per-node N script.py``, or
  ``RANK``/``WORLD_SIZE``) share the parts, each on its own GPU; rank 0 merges.
* ``<cls>``/``<eos>`` are read from the cells (the reference trusted the dictionary); with them,
  the "cell" modes average the genes between the two.
* ``filter_data`` matches values by equality (the reference's string values matched substrings).
* ``nproc`` is the number of CPU threads of the forward passes (the reference's worker processes
  have nothing to do here).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

from .._utils import check_choice, check_model_version, check_positive_int, doc_params
from .._utils._docs import doc_cell_states, doc_device, doc_dtype, doc_filter_data, doc_progress, doc_token_budget
from ..models import normalise_kind
from ..perturb import PerturbSpec, perturbation_spec, run_perturbation

logger = logging.getLogger(__name__)

MODEL_TYPES = ("Pretrained", "GeneClassifier", "CellClassifier", "MTLCellClassifier",
               "Pretrained-Quantized", "MTLCellClassifier-Quantized")

__all__ = ["InSilicoPerturber", "MODEL_TYPES"]


@doc_params(filter_data=doc_filter_data, cell_states=doc_cell_states, device=doc_device, dtype=doc_dtype,
            token_budget=doc_token_budget, progress=doc_progress)
class InSilicoPerturber:
    """Perturb genes in silico and measure the embedding shifts (reference-compatible).

    Args (reference defaults):
        perturb_type: "delete" | "overexpress" | "inhibit" | "activate".
        perturb_rank_shift: None | 1 | 2 | 3 (quartiles; inhibit/activate only).
        genes_to_perturb: "all" or a list of Ensembl IDs (or symbols) perturbed together.
        combos: 0 | 1; anchor_gene: the gene paired with every other one (combos=1).
        model_type: one of :data:`MODEL_TYPES`; num_classes: classes of a classifier checkpoint.
        emb_mode: "cls" | "cell" | "cls_and_gene" | "cell_and_gene"; cell_emb_style: "mean_pool".
        {filter_data}
        {cell_states}
        state_embs_dict: {state: tensor(H)} (or the path of its pickle).
        max_ncells: at most this many cells (shuffle(seed=42)); None: all.
        cell_inds_to_perturb: "all" | {"start", "end"}.
        emb_layer: -1 (second-to-last layer), 0 (last).
        forward_batch_size: most sequences per forward (None: only the token budget).
        nproc: CPU threads of the forward passes (capped at the CPUs the process may use).
        model_version: "V1" | "V2"; token_dictionary_file: a token dictionary instead of the version's.
        clear_mem_ncells: perturbations per results part.

    Extra:
        {device}
        {dtype}
        {token_budget}
        resume: reuse finished parts; keep_parts: keep the parts folder; write_raw: the reference's
            pickles; cell_id_column: the cell-identifier column (None: detect).
        {progress}
    """

    def __init__(
        self,
        perturb_type: str = "delete",
        perturb_rank_shift: int | None = None,
        genes_to_perturb: str | Sequence[str] = "all",
        combos: int = 0,
        anchor_gene: str | None = None,
        model_type: str = "Pretrained",
        num_classes: int = 0,
        emb_mode: str = "cls",
        cell_emb_style: str = "mean_pool",
        filter_data: Mapping[str, Any] | None = None,
        cell_states_to_model: Mapping[str, Any] | None = None,
        state_embs_dict: Mapping[Any, Any] | str | os.PathLike | None = None,
        max_ncells: int | None = None,
        cell_inds_to_perturb: str | Mapping[str, int] = "all",
        emb_layer: int = -1,
        forward_batch_size: int | None = 100,
        nproc: int = 4,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        clear_mem_ncells: int = 1000,
        *,
        device: Any = None,
        dtype: Any = None,
        token_budget: int | None = None,
        resume: bool = True,
        keep_parts: bool = False,
        write_raw: bool = True,
        cell_id_column: str | None = None,
        progress: bool | None = None,
    ):
        self.perturb_type = perturb_type
        self.perturb_rank_shift = perturb_rank_shift
        self.genes_to_perturb = genes_to_perturb
        self.combos = combos
        self.anchor_gene = anchor_gene
        self.model_type = model_type
        self.num_classes = num_classes
        self.emb_mode = emb_mode
        self.cell_emb_style = cell_emb_style
        self.filter_data = filter_data
        self.cell_states_to_model = cell_states_to_model
        self.state_embs_dict = state_embs_dict
        self.max_ncells = max_ncells
        self.cell_inds_to_perturb = cell_inds_to_perturb
        self.emb_layer = emb_layer
        self.forward_batch_size = forward_batch_size
        self.nproc = nproc
        self.model_version = str(model_version).upper()
        self.token_dictionary_file = token_dictionary_file
        self.clear_mem_ncells = clear_mem_ncells
        self.device = device
        self.dtype = dtype
        self.token_budget = token_budget
        self.resume = resume
        self.keep_parts = keep_parts
        self.write_raw = write_raw
        self.cell_id_column = cell_id_column
        self.progress = progress
        check_model_version(self.model_version)
        check_choice("model_type", model_type, MODEL_TYPES)
        self._vocab = self._load_vocab()
        self._state_embs = None
        self._spec(state_embs_dict)

    def _load_vocab(self) -> Any:
        if self.token_dictionary_file is not None:
            from ..vocab import load_dict_file

            return {str(k): int(v) for k, v in load_dict_file(self.token_dictionary_file).items()}
        from ..vocab import GeneVocab

        return GeneVocab.load(self.model_version)

    def _spec(self, state_embs: Any) -> PerturbSpec:
        """The core's run description from the current arguments; the resolved values are written
        back (a gene list drops anchor and combos, an anchor drops gene-level output, ...)."""
        check_choice("cell_emb_style", self.cell_emb_style, ("mean_pool",))
        check_positive_int("forward_batch_size", self.forward_batch_size, allow_none=True)
        check_positive_int("clear_mem_ncells", self.clear_mem_ncells)
        check_positive_int("nproc", self.nproc, allow_none=True)
        spec = perturbation_spec(
            self.perturb_type, self.genes_to_perturb, rank_shift=self.perturb_rank_shift, combos=self.combos,
            anchor_gene=self.anchor_gene, emb_mode=self.emb_mode, cell_states_to_model=self.cell_states_to_model,
            state_embs=state_embs, filter_data=self.filter_data, max_ncells=self.max_ncells,
            cell_inds_to_perturb=self.cell_inds_to_perturb, emb_layer=self.emb_layer,
            batch_size=self.forward_batch_size, rows_per_part=self.clear_mem_ncells, token_budget=self.token_budget,
            vocab=self._vocab, cell_id_column=self.cell_id_column,
        )
        self.perturb_rank_shift, self.combos, self.emb_mode = spec.rank_shift, spec.combos, spec.emb_mode
        self.genes_to_perturb = spec.genes if spec.genes == "all" else list(spec.genes)
        self.tokens_to_perturb = list(spec.tokens) if spec.tokens is not None else None
        self.anchor_gene, self.anchor_token = spec.anchor_gene, spec.anchor_token
        self.states = spec.states
        if spec.states is not None:
            self.cell_states_to_model = spec.states
        self._state_embs = spec.state_embs
        return spec

    @property
    def token_dict(self) -> dict[str, int]:
        return self._vocab if isinstance(self._vocab, dict) else self._vocab.token_dict

    @property
    def state_list(self) -> list:
        return [self.states["start_state"], self.states["goal_state"], *self.states["alt_states"]] \
            if self.states else []

    def perturb_data(
        self,
        model_directory: Any,
        input_data_file: Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
    ):
        """Perturb the selected cells and write the tidy parquet and the reference's raw pickles.

        Returns the tidy table's path (None on ranks other than 0 of a multi-process run).
        """
        spec = self._spec(self._state_embs)
        kind = self.model_type.replace("-Quantized", "")
        if kind != self.model_type and isinstance(model_directory, (str, os.PathLike)):
            logger.warning("%s: 8-bit loading is not supported here; loading in full precision (pass "
                           "dtype='bf16' for a faster reduced-precision run).", self.model_type)
        # MTL checkpoints hold a BERT encoder under bert.*; a masked-LM class loads exactly those
        kind = "pretrained" if kind in ("Pretrained", "MTLCellClassifier") else normalise_kind(kind)
        return run_perturbation(
            model_directory, input_data_file, output_directory, output_prefix, spec, model_kind=kind,
            num_labels=self.num_classes if kind != "pretrained" and self.num_classes else None,
            device=self.device, dtype=self.dtype, resume=self.resume, keep_parts=self.keep_parts,
            write_raw=self.write_raw, n_threads=self.nproc, progress=self.progress,
        )
