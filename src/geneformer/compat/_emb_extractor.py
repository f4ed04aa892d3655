"""Reference-compatible ``EmbExtractor`` and ``get_embs``: the reference's arguments, our core underneath.

Differences from the reference, all deliberate fixes:
* ``<cls>``/``<eos>`` are detected from each cell's tokens, not from the dictionary.
* ``get_state_embs`` selects a state's cells by equality (the reference's substring test let
  ``"cm"`` pick up ``"dcm"`` cells).
* errors are ValueError/KeyError with a message, not a bare ``raise``; nothing needs a GPU.
* ``plot_embs`` samples cells with a fixed seed and never asks for more cells than there are.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .._constants import EMB_MODES
from .._utils import (
    check_cell_states,
    check_choice,
    check_columns_listed,
    check_emb_layer,
    check_filter_data,
    check_model_version,
    check_positive_int,
)
from ..embeddings import (
    SpecialTokens,
    check_summary_stat,
    embedding_tensor,
    extract_embeddings,
    save_state_embs,
    state_embeddings,
)
from ..models import check_vocab_matches, load_model, n_layers, normalise_kind
from ..plotting import plot_embeddings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)

class EmbExtractor:
    """Extract cell, ``<cls>`` or gene embeddings from a Geneformer model (reference-compatible).

    Args (reference defaults): model_type "Pretrained" | "GeneClassifier" | "CellClassifier";
    num_classes; emb_mode "cls" | "cell" | "gene"; cell_emb_style "mean_pool"; gene_emb_style
    "mean_pool" | "all"; filter_data {column: values}; max_ncells (shuffle(42) then cap);
    emb_layer -1 (second-to-last layer) or 0 (last); emb_label columns carried to the output;
    labels_to_plot; forward_batch_size; nproc; summary_stat None | "mean" | "median" |
    "exact_mean" | "exact_median"; save_tdigest; model_version "V1" | "V2" (V1 turns "cls" into
    "cell"); token_dictionary_file. Extra: device (None = CUDA when available), dtype ("bf16"/"fp16"
    autocast; None = fp32).
    """

    def __init__(
        self,
        model_type: str = "Pretrained",
        num_classes: int = 0,
        emb_mode: str = "cls",
        cell_emb_style: str = "mean_pool",
        gene_emb_style: str = "mean_pool",
        filter_data: Mapping[str, Any] | None = None,
        max_ncells: int | None = 1000,
        emb_layer: int = -1,
        emb_label: list[str] | None = None,
        labels_to_plot: list[str] | None = None,
        forward_batch_size: int = 100,
        nproc: int = 4,
        summary_stat: str | None = None,
        save_tdigest: bool = False,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        device: Any = None,
        dtype: Any = None,
    ):
        self.model_type = model_type
        self.num_classes = num_classes
        self.emb_mode = emb_mode
        self.cell_emb_style = cell_emb_style
        self.gene_emb_style = gene_emb_style
        self.filter_data = filter_data
        self.max_ncells = max_ncells
        self.emb_layer = emb_layer
        self.emb_label = list(emb_label) if emb_label is not None else None
        self.labels_to_plot = labels_to_plot
        self.forward_batch_size = forward_batch_size
        self.nproc = nproc
        self.summary_stat = summary_stat
        self.save_tdigest = save_tdigest
        self.model_version = str(model_version).upper()
        self.token_dictionary_file = token_dictionary_file
        self.device = device
        self.dtype = dtype
        self._validate()
        if self.model_version == "V1" and self.emb_mode == "cls":
            logger.warning("model_version V1 has no <cls> token; using emb_mode='cell' instead of 'cls'.")
            self.emb_mode = "cell"
        self._vocab = None
        self._model_cache: tuple[str, Any] | None = None

    # ---- validation and resources -------------------------------------------------------------
    def _validate(self) -> None:
        check_choice("EmbExtractor model_type", self.model_type, ("Pretrained", "GeneClassifier", "CellClassifier"))
        check_choice("emb_mode", self.emb_mode, EMB_MODES)
        check_choice("cell_emb_style", self.cell_emb_style, ("mean_pool",))
        check_choice("gene_emb_style", self.gene_emb_style, ("mean_pool", "all"))
        check_emb_layer(self.emb_layer)
        check_model_version(self.model_version)
        check_summary_stat(self.summary_stat)
        check_positive_int("max_ncells", self.max_ncells, allow_none=True)
        check_positive_int("forward_batch_size", self.forward_batch_size)
        self.filter_data = check_filter_data(self.filter_data)
        self.emb_label = check_columns_listed("emb_label", self.emb_label)
        if self.save_tdigest and self.summary_stat not in ("mean", "median"):
            logger.warning("save_tdigest only applies to summary_stat 'mean' or 'median'; ignoring it.")

    @property
    def vocab(self):
        """The gene vocabulary: the published one for model_version, or token_dictionary_file's ids."""
        if self._vocab is None:
            if self.token_dictionary_file is not None:
                from ..vocab import load_dict_file

                self._vocab = {str(k): int(v) for k, v in load_dict_file(self.token_dictionary_file).items()}
            else:
                self._vocab = self.model_version
        return self._vocab

    def _model(self, model_directory: Any) -> Any:
        if not isinstance(model_directory, (str, os.PathLike)):  # an already loaded model
            if isinstance(self.vocab, str):
                check_vocab_matches(model_directory, self.vocab, source="The model")
            return model_directory
        key = str(model_directory)
        if self._model_cache is None or self._model_cache[0] != key:
            kind = normalise_kind(self.model_type)
            num_labels = self.num_classes if kind != "pretrained" and self.num_classes else None
            vocab_check = self.vocab if isinstance(self.vocab, str) else None
            model = load_model(model_directory, kind=kind, num_labels=num_labels, vocab=vocab_check,
                               device=self.device)
            self._model_cache = (key, model)
        return self._model_cache[1]

    # ---- main entry points --------------------------------------------------------------------
    def extract_embs(
        self,
        model_directory: Any,
        input_data_file: Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
        output_torch_embs: bool = False,
        cell_state: Mapping[str, Any] | None = None,
    ):
        """Embed the (filtered, downsampled, length-sorted) cells and write ``{prefix}.csv``.

        Returns the DataFrame (rows length-descending, columns 0..H-1 then ``emb_label``), or
        ``(df, tensor)`` with ``output_torch_embs``, or the summary tensor when ``cell_state`` is given.
        """
        out_dir = Path(output_directory)
        result = extract_embeddings(
            self._model(model_directory), input_data_file, mode=self.emb_mode, gene_style=self.gene_emb_style,
            emb_layer=self.emb_layer, labels=self.emb_label, filter_data=self.filter_data, state_filter=cell_state,
            max_ncells=self.max_ncells, summary_stat=self.summary_stat, vocab=self.vocab,
            batch_size=int(self.forward_batch_size), device=self.device, dtype=self.dtype, progress=None,
            output_csv=out_dir / f"{output_prefix}.csv" if cell_state is None else None,
            tdigest_path=out_dir / f"{output_prefix}_tdigest.pkl" if self.save_tdigest else None,
        )
        if cell_state is not None:
            return result.tensor
        if output_torch_embs:
            return result.frame, result.tensor
        return result.frame

    def get_state_embs(
        self,
        cell_states_to_model: Mapping[str, Any],
        model_directory: Any,
        input_data_file: Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
        output_torch_embs: bool = True,
    ) -> dict:
        """Mean/median embedding of each state's cells; pickled to ``{prefix}.pkl`` as {state: tensor(H)}."""
        check_cell_states(cell_states_to_model)
        if self.summary_stat not in ("exact_mean", "exact_median"):
            raise ValueError("get_state_embs needs summary_stat='exact_mean' or 'exact_median'.")
        if self.emb_label is not None:
            raise ValueError("get_state_embs needs emb_label=None.")
        state_embs = state_embeddings(
            self._model(model_directory), input_data_file, cell_states_to_model, mode=self.emb_mode,
            emb_layer=self.emb_layer, summary_stat=self.summary_stat, filter_data=self.filter_data,
            max_ncells=self.max_ncells, vocab=self.vocab, batch_size=int(self.forward_batch_size), device=self.device,
            dtype=self.dtype, progress=None,
        )
        save_state_embs(state_embs, Path(output_directory) / f"{output_prefix}.pkl")
        if output_torch_embs:
            return state_embs
        return {k: v.numpy() for k, v in state_embs.items()}

    def plot_embs(
        self,
        embs: "pd.DataFrame",
        plot_style: str,
        output_directory: str | os.PathLike,
        output_prefix: str,
        max_ncells_to_plot: int | None = 1000,
        kwargs_dict: dict | None = None,
    ) -> list[Path]:
        """UMAP or heatmap of cell embeddings per label in ``labels_to_plot``; returns the files written."""
        return plot_embeddings(embs, self.emb_label or [], plot_style, output_directory, output_prefix,
                               labels_to_plot=self.labels_to_plot, max_ncells_to_plot=max_ncells_to_plot,
                               max_ncells=self.max_ncells, kwargs_dict=kwargs_dict)


def get_embs(
    model: Any,
    data: Any,
    emb_mode: str,
    layer_to_quant: int,
    pad_token_id: int,
    forward_batch_size: int,
    token_gene_dict: Mapping | None = None,
    special_token: bool = False,
    summary_stat: str | None = None,
    silent: bool = False,
    save_tdigest: bool = False,
    tdigest_path: str | os.PathLike | None = None,
) -> Any:
    """Reference-compatible core forward helper (also used by perturbation code).

    ``layer_to_quant`` indexes ``hidden_states`` (``n_layers + emb_layer``). Returns a (N, H) tensor in
    data order for "cell"/"cls", a zero-padded (N, Lmax, H) tensor for "gene", an (H,) tensor for an
    approximate cell summary, or {token: [H floats]} for an approximate gene summary.
    ``token_gene_dict`` (id -> token string) supplies the ``<cls>``/``<eos>`` ids; ``special_token`` is
    unused, as in the reference (special tokens are read from the data).
    """
    token_dict = {str(v): int(k) for k, v in token_gene_dict.items()} if token_gene_dict else None
    special = SpecialTokens.for_model(model, token_dict)
    special.pad_id = int(pad_token_id)
    return embedding_tensor(model, data, emb_mode, emb_layer=int(layer_to_quant) - n_layers(model), vocab=special,
                            batch_size=int(forward_batch_size), summary_stat=summary_stat,
                            tdigest_path=tdigest_path if save_tdigest else None, progress=not silent)
