"""Embedding a tokenized dataset end to end: choose the cells, embed them, summarise, write.

:func:`extract_embeddings` is what the reference's ``EmbExtractor.extract_embs`` does (filter,
``shuffle(42)`` and keep ``max_ncells``, sort by length, embed, optional summary over cells, the
reference's CSV layout); :func:`embedding_tensor` is the reference's ``get_embs`` on already
selected cells. Both return the tables and tensors the reference returns, with our fixes (see the
README's differences).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._constants import EMB_MODES, EmbMode
from .._utils import check_choice, check_positive_int, doc_params
from .._utils._docs import (
    doc_batch_size,
    doc_data,
    doc_device,
    doc_dtype,
    doc_emb_layer,
    doc_filter_data,
    doc_max_ncells,
    doc_progress,
)
from ..data import as_sequences, check_columns, column_values, downsample_and_sort, filter_by_dict, load_tokenized
from ._core import SpecialTokens, cell_embeddings, gene_embeddings, gene_states_per_cell, token_labels
from ._outputs import embedding_frame, write_csv
from ._summaries import StreamingGeneSummary, StreamingSummary, check_summary_stat, exact_summary

GeneEmbStyle = Literal["mean_pool", "all"]


@dataclass
class ExtractedEmbeddings:
    """A run's embeddings as the reference returns them: the table and the same numbers as a tensor."""

    frame: pd.DataFrame
    tensor: torch.Tensor


@doc_params(data=doc_data, emb_layer=doc_emb_layer, filter_data=doc_filter_data, max_ncells=doc_max_ncells,
            batch_size=doc_batch_size, device=doc_device, dtype=doc_dtype, progress=doc_progress)
def extract_embeddings(
    model: Any,
    data: Any,
    *,
    mode: EmbMode = "cls",
    gene_style: GeneEmbStyle = "mean_pool",
    emb_layer: int = -1,
    labels: Sequence[str] | None = None,
    filter_data: Mapping[str, Any] | None = None,
    state_filter: Mapping[str, Any] | None = None,
    max_ncells: int | None = 1000,
    summary_stat: str | None = None,
    vocab: Any = None,
    batch_size: int | None = 100,
    device: Any = None,
    dtype: Any = None,
    progress: bool | None = None,
    output_csv: str | os.PathLike | None = None,
    tdigest_path: str | os.PathLike | None = None,
) -> ExtractedEmbeddings:
    """Cell, ``<cls>`` or gene embeddings of the chosen cells of a tokenized dataset.

    Rows of the cell table follow the length-sorted cells (columns 0..H-1, then ``labels``); the
    gene table has one row per token (mean over the cells that express it), or with
    ``gene_style="all"`` one row per position. ``summary_stat`` "mean"/"median" summarises over
    cells while embedding (t-digests for the median, saved to ``tdigest_path`` when given),
    "exact_mean"/"exact_median" over the finished table (a one-row result).

    Args:
        model: a loaded model.
        {data}
        mode: "cell" (mean over genes), "cls" (the ``<cls>`` state) or "gene".
        gene_style: "mean_pool" (a gene's mean over cells) or "all" (every position).
        {emb_layer}
        labels: dataset columns carried into the cell table.
        {filter_data}
        state_filter: a second filter applied after ``filter_data`` (the cells of one state).
        {max_ncells}
        summary_stat: None, "mean", "median", "exact_mean" or "exact_median".
        vocab: "V1"/"V2", a token dictionary or a ``GeneVocab``: the ``<cls>``/``<eos>`` ids and the
            gene names of the gene table (None: the model's published vocabulary).
        {batch_size}
        {device}
        {dtype}
        {progress}
        output_csv: also write the table (before an exact summary) as the reference's CSV.
        tdigest_path: where the streaming median's t-digests go.
    """
    check_choice("emb_mode", mode, EMB_MODES)
    check_choice("gene_emb_style", gene_style, ("mean_pool", "all"))
    check_summary_stat(summary_stat)
    check_positive_int("max_ncells", max_ncells, allow_none=True)
    ds = load_tokenized(data)
    ds = filter_by_dict(ds, filter_data)
    labels = check_columns(ds, labels)
    if state_filter is not None:
        ds = filter_by_dict(ds, state_filter)
    ds = downsample_and_sort(ds, max_ncells)
    seqs = as_sequences(ds)
    special = SpecialTokens.for_model(model, vocab)
    hidden = int(model.config.hidden_size)
    common = dict(emb_layer=emb_layer, vocab=special, batch_size=batch_size, device=device, amp_dtype=dtype,
                  progress=progress)
    streaming = summary_stat in ("mean", "median")
    if mode in ("cell", "cls"):
        summ = StreamingSummary(summary_stat, hidden) if streaming else None
        embs = cell_embeddings(model, seqs, mode=mode, on_batch=(lambda rows, arr: summ.update(arr)) if summ else None,
                               **common)
        if summ is not None:
            vec = summ.result()
            frame, tensor = pd.DataFrame(vec[None, :], columns=range(hidden)), torch.from_numpy(vec)
            if tdigest_path is not None:
                summ.save_digests(tdigest_path)
        else:
            frame = embedding_frame(embs, {c: column_values(ds, c) for c in labels})
            tensor = torch.from_numpy(embs)
    elif gene_style == "all":
        _, toks, states = gene_states_per_cell(model, seqs, emb_layer=emb_layer, batch_size=batch_size,
                                               device=device, amp_dtype=dtype, progress=progress)
        names = token_labels(toks.tolist(), vocab, model)
        frame = pd.DataFrame(states, columns=[str(i) for i in range(hidden)])
        frame.insert(0, "Identifier", pd.Series(names).groupby(names).cumcount().to_numpy())
        frame.index = pd.Index(names, name="Gene")
        tensor = torch.from_numpy(states)
    elif summary_stat == "median":
        gsum = StreamingGeneSummary("median", hidden)
        gene_embeddings(model, seqs, include_special=True, on_batch=gsum.update, **common)
        res = gsum.result()
        frame = pd.DataFrame(np.stack(list(res.values())), columns=range(hidden),
                             index=token_labels(list(res), vocab, model))
        if tdigest_path is not None:
            gsum.save_digests(tdigest_path)
        tensor = torch.from_numpy(frame.to_numpy(np.float32))
    else:
        frame = gene_embeddings(model, seqs, include_special=True, **common).to_frame(vocab, model)
        tensor = torch.from_numpy(frame.to_numpy(np.float32))
    if output_csv is not None:
        write_csv(frame, output_csv)
    if summary_stat in ("exact_mean", "exact_median"):
        vec = exact_summary(frame.iloc[:, :hidden].to_numpy(np.float32), summary_stat)
        frame = pd.DataFrame(vec[None, :], columns=range(hidden), index=[summary_stat])
        tensor = torch.from_numpy(vec)
    return ExtractedEmbeddings(frame, tensor)


@doc_params(data=doc_data, progress=doc_progress)
def embedding_tensor(
    model: Any,
    data: Any,
    mode: EmbMode,
    *,
    emb_layer: int = -1,
    vocab: Any = None,
    batch_size: int | None = 100,
    summary_stat: str | None = None,
    tdigest_path: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> torch.Tensor | dict:
    """Embeddings of every cell of ``data`` (in data order) as the reference's ``get_embs`` returns them.

    A (N, H) tensor for "cell"/"cls"; for "gene" a zero-padded (N, L_max, H) tensor of every
    position's state; with ``summary_stat`` "mean"/"median" an (H,) tensor (cell modes) or
    ``{token: [H floats]}`` (gene mode, ``<cls>``/``<eos>`` included).

    Args:
        model: a loaded model.
        {data}
        mode: "cell", "cls" or "gene".
        emb_layer: as in :func:`extract_embeddings`.
        vocab: the special-token ids (a ``SpecialTokens``, a token dictionary, "V1"/"V2" or None).
        batch_size: cells per forward pass.
        summary_stat: None, "mean" or "median".
        tdigest_path: where the median's t-digests go.
        {progress}
    """
    check_choice("emb_mode", mode, EMB_MODES)
    check_summary_stat(summary_stat)
    seqs = as_sequences(data)
    hidden = int(model.config.hidden_size)
    common = dict(emb_layer=emb_layer, vocab=vocab, batch_size=batch_size, progress=progress)
    streaming = summary_stat in ("mean", "median")
    if mode in ("cell", "cls"):
        summ = StreamingSummary(summary_stat, hidden) if streaming else None
        embs = cell_embeddings(model, seqs, mode=mode, on_batch=(lambda r, a: summ.update(a)) if summ else None,
                               **common)
        if summ is None:
            return torch.from_numpy(embs)
        if tdigest_path:
            summ.save_digests(tdigest_path)
        return torch.from_numpy(summ.result())
    if streaming:
        gsum = StreamingGeneSummary(summary_stat, hidden)
        gene_embeddings(model, seqs, include_special=True, on_batch=gsum.update, **common)
        if tdigest_path:
            gsum.save_digests(tdigest_path)
        return {t: v.tolist() for t, v in gsum.result().items()}
    rows, _, states = gene_states_per_cell(model, seqs, emb_layer=emb_layer, batch_size=batch_size, progress=progress)
    lens = seqs.lengths
    out = torch.zeros((len(seqs), int(lens.max()), hidden), dtype=torch.float32)
    pos = np.arange(len(rows)) - np.repeat(seqs.offsets[:-1], lens)
    out[torch.from_numpy(rows), torch.from_numpy(pos)] = torch.from_numpy(states)
    return out
