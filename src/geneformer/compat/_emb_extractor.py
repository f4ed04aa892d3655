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
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from .._utils import check_cell_states
from ..data import as_sequences, check_columns, column_values, downsample_and_sort, filter_by_dict, load_tokenized
from ..embeddings import (
    SpecialTokens,
    StreamingGeneSummary,
    StreamingSummary,
    cell_embeddings,
    check_summary_stat,
    exact_summary,
    gene_embeddings,
    gene_states_per_cell,
    token_labels,
)
from ..embeddings import _outputs as outputs
from ..models import check_vocab_matches, load_model, n_layers, normalise_kind

logger = logging.getLogger(__name__)

_VALID = {
    "model_type": ("Pretrained", "GeneClassifier", "CellClassifier"),
    "emb_mode": ("cls", "cell", "gene"),
    "cell_emb_style": ("mean_pool",),
    "gene_emb_style": ("mean_pool", "all"),
    "emb_layer": (-1, 0),
    "model_version": ("V1", "V2"),
}


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
        for name, allowed in _VALID.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"EmbExtractor {name}={value!r} is not valid; use one of {allowed}.")
        check_summary_stat(self.summary_stat)
        if self.max_ncells is not None and int(self.max_ncells) < 1:
            raise ValueError("max_ncells must be a positive integer or None.")
        if int(self.forward_batch_size) < 1:
            raise ValueError("forward_batch_size must be >= 1.")
        if self.filter_data is not None and not isinstance(self.filter_data, Mapping):
            raise ValueError("filter_data must be a dict {column: [values]}.")
        if self.emb_label is not None and not all(isinstance(c, str) for c in self.emb_label):
            raise ValueError("emb_label must be a list of column names.")
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

    def _special(self) -> SpecialTokens:
        v = self.vocab
        if isinstance(v, Mapping):
            return SpecialTokens.for_model(None, v)
        return SpecialTokens(2, 3, 0) if v == "V2" else SpecialTokens(None, None, 0)

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
        ds = load_tokenized(input_data_file)
        ds = filter_by_dict(ds, self.filter_data, self.nproc)
        labels = check_columns(ds, self.emb_label)
        if cell_state is not None:
            ds = filter_by_dict(ds, cell_state, self.nproc)
        ds = downsample_and_sort(ds, self.max_ncells)
        model = self._model(model_directory)
        special = self._special()
        seqs = as_sequences(ds)
        hidden = int(model.config.hidden_size)
        common = dict(emb_layer=self.emb_layer, vocab=special, batch_size=int(self.forward_batch_size),
                      device=self.device, amp_dtype=self.dtype, progress=True)
        streaming = self.summary_stat in ("mean", "median")
        embs_tensor: torch.Tensor | None = None
        if self.emb_mode in ("cell", "cls"):
            summ = StreamingSummary(self.summary_stat, hidden) if streaming else None
            cb = (lambda rows, arr: summ.update(arr)) if summ else None
            embs = cell_embeddings(model, seqs, mode=self.emb_mode, on_batch=cb, **common)
            if summ is not None:
                vec = summ.result()
                embs_df = pd.DataFrame(vec[None, :], columns=range(hidden))
                embs_tensor = torch.from_numpy(vec)
                if self.save_tdigest:
                    summ.save_digests(Path(output_directory) / f"{output_prefix}_tdigest.pkl")
            else:
                label_values = {c: column_values(ds, c) for c in labels}
                embs_df = outputs.embedding_frame(embs, label_values)
                embs_tensor = torch.from_numpy(embs)
        elif self.gene_emb_style == "all":
            rows, toks, states = gene_states_per_cell(model, seqs, emb_layer=self.emb_layer,
                                                      batch_size=int(self.forward_batch_size),
                                                      device=self.device, amp_dtype=self.dtype)
            names = token_labels(toks.tolist(), self.vocab, model)
            embs_df = pd.DataFrame(states, columns=[str(i) for i in range(hidden)])
            embs_df.insert(0, "Identifier", pd.Series(names).groupby(names).cumcount().to_numpy())
            embs_df.index = pd.Index(names, name="Gene")
            embs_tensor = torch.from_numpy(states)
        else:
            vocab_for_names = self.vocab
            if self.summary_stat == "median":
                gsum = StreamingGeneSummary("median", hidden)
                gene_embeddings(model, seqs, include_special=True, on_batch=gsum.update, **common)
                res = gsum.result()
                embs_df = pd.DataFrame(np.stack(list(res.values())), columns=range(hidden),
                                       index=token_labels(list(res), vocab_for_names, model))
                if self.save_tdigest:
                    gsum.save_digests(Path(output_directory) / f"{output_prefix}_tdigest.pkl")
            else:
                ge = gene_embeddings(model, seqs, include_special=True, **common)
                embs_df = ge.to_frame(vocab_for_names, model)
            embs_tensor = torch.from_numpy(embs_df.to_numpy(np.float32))

        if cell_state is None:
            outputs.write_csv(embs_df, Path(output_directory) / f"{output_prefix}.csv")

        if self.summary_stat in ("exact_mean", "exact_median"):
            vec = exact_summary(embs_df.iloc[:, :hidden].to_numpy(np.float32), self.summary_stat)
            embs_df = pd.DataFrame(vec[None, :], columns=range(hidden), index=[self.summary_stat])
            embs_tensor = torch.from_numpy(vec)

        if cell_state is not None:
            return embs_tensor
        if output_torch_embs:
            return embs_df, embs_tensor
        return embs_df

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
        states = check_cell_states(cell_states_to_model)
        if self.summary_stat not in ("exact_mean", "exact_median"):
            raise ValueError("get_state_embs needs summary_stat='exact_mean' or 'exact_median'.")
        if self.emb_label is not None:
            raise ValueError("get_state_embs needs emb_label=None.")
        key = states["state_key"]
        wanted = [states["start_state"], states["goal_state"], *states["alt_states"]]
        ds = load_tokenized(input_data_file)
        check_columns(ds, [key], what="state")
        present = set(column_values(ds, key))
        missing = [s for s in wanted if s not in present]
        if missing:
            raise ValueError(f"State(s) {missing} do not occur in column {key!r} (values: {sorted(map(str, present))[:20]}).")
        state_embs = {}
        for state in wanted:
            state_embs[state] = self.extract_embs(model_directory, ds, output_directory, output_prefix,
                                                  cell_state={key: [state]})
        path = Path(output_directory) / f"{output_prefix}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(state_embs, fh)
        tmp.replace(path)
        if output_torch_embs:
            return state_embs
        return {k: v.numpy() for k, v in state_embs.items()}

    def plot_embs(
        self,
        embs: pd.DataFrame,
        plot_style: str,
        output_directory: str | os.PathLike,
        output_prefix: str,
        max_ncells_to_plot: int | None = 1000,
        kwargs_dict: dict | None = None,
    ) -> list[Path]:
        """UMAP or heatmap of cell embeddings per label in ``labels_to_plot``; returns the files written."""
        from ..plotting import _embeddings as plotting

        if plot_style not in ("heatmap", "umap"):
            raise ValueError("plot_style must be 'heatmap' or 'umap'.")
        labels = self.emb_label or []
        if plot_style == "umap" and not self.labels_to_plot:
            raise ValueError("plot_style='umap' needs labels_to_plot (label columns from emb_label).")
        n = len(embs)
        if max_ncells_to_plot is None:
            max_ncells_to_plot = n
        if self.max_ncells is not None:
            max_ncells_to_plot = min(max_ncells_to_plot, int(self.max_ncells))
        if n > max_ncells_to_plot:
            embs = embs.sample(max_ncells_to_plot, random_state=0)
        emb_cols = list(embs.columns[: embs.shape[1] - len(labels)])
        to_plot = [lab for lab in (self.labels_to_plot or labels) if lab in labels]
        if not to_plot:
            raise ValueError(f"None of labels_to_plot={self.labels_to_plot} is in emb_label={labels}.")
        written = []
        for label in to_plot:
            out = Path(output_directory) / f"{output_prefix}_{plot_style}_{label}.pdf"
            values = embs[emb_cols].to_numpy(np.float32)
            if plot_style == "umap":
                written.append(plotting.plot_umap(values, embs[label].to_numpy(), out, label=label,
                                                  **(kwargs_dict or {})))
            else:
                written.append(plotting.plot_heatmap(values, embs[label].to_numpy(), out, label=label,
                                                     **(kwargs_dict or {})))
        return written


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
):
    """Reference-compatible core forward helper (also used by perturbation code).

    ``layer_to_quant`` indexes ``hidden_states`` (``n_layers + emb_layer``). Returns a (N, H) tensor in
    data order for "cell"/"cls", a zero-padded (N, Lmax, H) tensor for "gene", an (H,) tensor for an
    approximate cell summary, or {token: [H floats]} for an approximate gene summary.
    ``token_gene_dict`` (id -> token string) supplies the ``<cls>``/``<eos>`` ids; ``special_token`` is
    unused, as in the reference (special tokens are read from the data).
    """
    if emb_mode not in ("cell", "cls", "gene"):
        raise ValueError(f"emb_mode must be 'cell', 'cls' or 'gene', got {emb_mode!r}.")
    check_summary_stat(summary_stat)
    token_dict = {str(v): int(k) for k, v in token_gene_dict.items()} if token_gene_dict else None
    special = SpecialTokens.for_model(model, token_dict)
    special.pad_id = int(pad_token_id)
    emb_layer = int(layer_to_quant) - n_layers(model)
    seqs = as_sequences(data)
    hidden = int(model.config.hidden_size)
    common = dict(emb_layer=emb_layer, vocab=special, batch_size=int(forward_batch_size), progress=not silent)
    streaming = summary_stat in ("mean", "median")
    if emb_mode in ("cell", "cls"):
        summ = StreamingSummary(summary_stat, hidden) if streaming else None
        embs = cell_embeddings(model, seqs, mode=emb_mode,
                               on_batch=(lambda r, a: summ.update(a)) if summ else None, **common)
        if summ is None:
            return torch.from_numpy(embs)
        if save_tdigest and tdigest_path:
            summ.save_digests(tdigest_path)
        return torch.from_numpy(summ.result())
    if streaming:
        gsum = StreamingGeneSummary(summary_stat, hidden)
        gene_embeddings(model, seqs, include_special=True, on_batch=gsum.update, **common)
        if save_tdigest and tdigest_path:
            gsum.save_digests(tdigest_path)
        return {t: v.tolist() for t, v in gsum.result().items()}
    rows, _, states = gene_states_per_cell(model, seqs, emb_layer=emb_layer, batch_size=int(forward_batch_size),
                                           progress=not silent)
    lens = seqs.lengths
    out = torch.zeros((len(seqs), int(lens.max()), hidden), dtype=torch.float32)
    pos = np.arange(len(rows)) - np.repeat(seqs.offsets[:-1], lens)
    out[torch.from_numpy(rows), torch.from_numpy(pos)] = torch.from_numpy(states)
    return out


