"""Cell, ``<cls>`` and gene embeddings from one layer of a Geneformer model.

* cell: mean of the hidden states over the cell's real gene positions (padding, ``<cls>`` and
  ``<eos>`` excluded). Whether a cell carries ``<cls>``/``<eos>`` is read from the cell's own tokens,
  not from the dictionary, which fixes the reference dropping two genes of every cell when V2 data
  are tokenized without special tokens.
* cls: the hidden state at the ``<cls>`` position.
* gene: per gene, the mean of its hidden states over the cells that express it.

Results come back in the input order whatever the batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._constants import CELL_EMB_MODES, CLS, EOS, PAD, V2_CLS_ID, V2_EOS_ID, V2_PAD_ID, VERSIONS, CellEmbMode
from .._utils import InputError, check_choice, doc_params, host_to_device
from .._utils._docs import doc_batch_size, doc_data, doc_device, doc_emb_layer, doc_progress
from ..data import TokenSequences, as_sequences
from ..inference import iter_forward, lagged_to_host
from ..models import layer_index, model_vocab_version


@dataclass
class SpecialTokens:
    """Token ids of ``<cls>``/``<eos>`` (None when the vocabulary has none)."""

    cls_id: int | None = None
    eos_id: int | None = None
    pad_id: int = 0

    @classmethod
    def for_model(cls, model: Any, vocab: Any = None) -> "SpecialTokens":
        """From a vocabulary when given, else from the model's vocabulary size (V2: 2/3, V1: none).

        ``vocab`` may be a GeneVocab, "V1"/"V2", a folder, a SpecialTokens, or a token dictionary
        (token string -> id).
        """
        if isinstance(vocab, SpecialTokens):
            return vocab
        if isinstance(vocab, Mapping):
            return cls(vocab.get(CLS), vocab.get(EOS), int(vocab.get(PAD, 0)))
        if isinstance(vocab, str) and vocab.upper() in VERSIONS:  # the published ids, no files needed
            return cls(V2_CLS_ID, V2_EOS_ID, V2_PAD_ID) if vocab.upper() == "V2" else cls(None, None, 0)
        if vocab is not None:
            from ..vocab import as_vocab

            v = as_vocab(vocab)
            return cls(v.cls_id, v.eos_id, v.pad_id)
        return cls.for_model(None, model_vocab_version(model) or "V1")


def special_flags(seqs: TokenSequences, special: SpecialTokens) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: does it start with ``<cls>``, does it end with ``<eos>`` (read from the data)."""
    n = len(seqs)
    has_cls = np.zeros(n, dtype=bool) if special.cls_id is None else seqs.first_tokens() == special.cls_id
    has_eos = np.zeros(n, dtype=bool) if special.eos_id is None else seqs.last_tokens() == special.eos_id
    # a one-token cell holding only <cls> has no eos at the same position
    has_eos &= ~(has_cls & (seqs.lengths == 1))
    return has_cls, has_eos


def gene_position_mask(lengths: torch.Tensor, width: int, has_cls: torch.Tensor, has_eos: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: True at gene positions (not padding, not ``<cls>``/``<eos>``)."""
    pos = torch.arange(width, device=lengths.device)[None, :]
    start = has_cls.long()[:, None]
    end = (lengths - has_eos.long())[:, None]
    return (pos >= start) & (pos < end)


def mean_over_genes(hidden: torch.Tensor, gene_mask: torch.Tensor) -> torch.Tensor:
    """(B, H) mean of ``hidden`` (B, L, H) over the positions where ``gene_mask`` (B, L) is True
    (in ``hidden``'s dtype; a row without genes gives zeros)."""
    counts = gene_mask.sum(1, keepdim=True).clamp(min=1)
    return (hidden * gene_mask.unsqueeze(-1)).sum(1) / counts


def check_cls(has_cls: np.ndarray, special: SpecialTokens) -> None:
    """Raise unless every cell starts with ``<cls>`` (needed by the "cls" mode)."""
    if special.cls_id is None:
        raise InputError(
            "emb_mode='cls' needs a <cls> token, but this model's vocabulary has none (V1 models); "
            "use emb_mode='cell' (mean of the gene states)."
        )
    if not has_cls.all():
        missing = np.flatnonzero(~has_cls)
        raise InputError(
            f"emb_mode='cls' needs every cell to start with <cls> (id {special.cls_id}), but {len(missing)} "
            f"cell(s) do not (e.g. rows {missing[:5].tolist()}). Tokenize with special_token=True, or use "
            "emb_mode='cell'."
        )


@doc_params(data=doc_data, emb_layer=doc_emb_layer, batch_size=doc_batch_size, device=doc_device,
            progress=doc_progress)
def cell_embeddings(
    model: Any,
    data: Any,
    *,
    mode: CellEmbMode = "cell",
    emb_layer: int = -1,
    vocab: Any = None,
    batch_size: int | None = None,
    device: Any = None,
    amp_dtype: Any = None,
    progress: bool | None = None,
    on_batch: Any = None,
) -> np.ndarray:
    """(N, H) float32 cell embeddings, in input order.

    Args:
        model: a loaded model (``geneformer.models.load_model``).
        {data}
        mode: "cell" (mean over gene positions) or "cls" (the ``<cls>`` state).
        {emb_layer}
        vocab: gene vocabulary (for the ``<cls>``/``<eos>`` ids): "V1"/"V2", a token dictionary, a
            ``GeneVocab`` or folder; None infers it from the model.
        {batch_size}
        {device}
        amp_dtype: compute precision ("bf16"/"fp16"; None: ``settings.dtype``).
        {progress}
        on_batch: optional callback ``f(rows, embs)`` per batch (e.g. streaming summaries).
    """
    check_choice("mode", mode, CELL_EMB_MODES)
    seqs = as_sequences(data)
    special = SpecialTokens.for_model(model, vocab)
    has_cls, has_eos = special_flags(seqs, special)
    if mode == "cls":
        check_cls(has_cls, special)
    layer = layer_index(model, emb_layer)
    out = np.zeros((len(seqs), model.config.hidden_size), dtype=np.float32)

    def batches():
        for batch in iter_forward(model, seqs, layer=layer, batch_size=batch_size, device=device,
                                  amp_dtype=amp_dtype, pad_id=special.pad_id, progress=progress,
                                  desc=f"{mode} embeddings"):
            h = batch.hidden.float()
            if mode == "cls":
                yield batch.rows, h[:, 0, :]
                continue
            flags = [host_to_device(f[batch.rows], h.device) for f in (has_cls, has_eos)]
            yield batch.rows, mean_over_genes(h, gene_position_mask(batch.lengths, h.shape[1], *flags))

    # (on GPUs each batch's result is fetched after the next batch is queued)
    for rows, arr in lagged_to_host(batches()):
        out[rows] = arr
        if on_batch is not None:
            on_batch(rows, arr)
    return out


@dataclass
class GeneEmbeddings:
    """Per-token sums and counts over cells; ``mean()`` gives the gene embeddings."""

    token_ids: np.ndarray  # tokens seen, ascending
    sums: np.ndarray  # (T, H) float64
    counts: np.ndarray  # (T,) occurrences

    def mean(self) -> np.ndarray:
        return (self.sums / self.counts[:, None]).astype(np.float32)

    def to_frame(self, vocab: Any = None, model: Any = None):
        """DataFrame indexed by Ensembl ID (token id when no vocabulary is known), columns 0..H-1."""
        import pandas as pd

        index = token_labels(self.token_ids, vocab, model)
        return pd.DataFrame(self.mean(), index=pd.Index(index, name=None))


def token_labels(token_ids: Sequence[int], vocab: Any = None, model: Any = None) -> list:
    """Ensembl IDs (or special-token names) of token ids, via ``vocab`` or the model's published vocabulary."""
    from ..vocab import as_vocab

    if isinstance(vocab, SpecialTokens):
        vocab = None
    if vocab is None and model is not None:
        vocab = model_vocab_version(model)
    if vocab is None:
        return [int(t) for t in token_ids]
    if isinstance(vocab, Mapping):
        inv = {int(v): k for k, v in vocab.items()}
    else:
        inv = as_vocab(vocab).id_to_token
    return [inv.get(int(t), int(t)) for t in token_ids]


def gene_embeddings(
    model: Any,
    data: Any,
    *,
    emb_layer: int = -1,
    vocab: Any = None,
    include_special: bool = False,
    batch_size: int | None = None,
    device: Any = None,
    amp_dtype: Any = None,
    progress: bool | None = None,
    on_batch: Any = None,
) -> GeneEmbeddings:
    """Mean hidden state of each gene over the cells that express it.

    ``include_special`` also averages the ``<cls>``/``<eos>`` positions into rows of their own (the
    reference's gene mode does). ``on_batch(tokens, vectors)`` receives each batch's (n,) token ids and
    (n, H) float32 states at the counted positions (for streaming summaries).
    """
    seqs = as_sequences(data)
    special = SpecialTokens.for_model(model, vocab)
    has_cls, has_eos = special_flags(seqs, special)
    layer = layer_index(model, emb_layer)
    vocab_size = int(model.config.vocab_size)
    hidden_size = int(model.config.hidden_size)
    sums: torch.Tensor | None = None  # accumulated on the model's device, in float64
    counts: torch.Tensor | None = None
    for batch in iter_forward(model, seqs, layer=layer, batch_size=batch_size, device=device,
                              amp_dtype=amp_dtype, pad_id=special.pad_id, progress=progress,
                              desc="gene embeddings"):
        h = batch.hidden.float()
        if include_special:
            mask = batch.attention_mask.bool()
        else:
            rows_t = torch.from_numpy(batch.rows)
            mask = gene_position_mask(batch.lengths, h.shape[1], torch.from_numpy(has_cls)[rows_t].to(h.device),
                                      torch.from_numpy(has_eos)[rows_t].to(h.device))
        tokens = batch.input_ids[mask]
        vecs = h[mask]
        if sums is None:
            sums = torch.zeros((vocab_size, hidden_size), dtype=torch.float64, device=h.device)
            counts = torch.zeros(vocab_size, dtype=torch.float64, device=h.device)
        sums.index_add_(0, tokens, vecs.double())
        counts.index_add_(0, tokens, torch.ones(len(tokens), dtype=torch.float64, device=h.device))
        if on_batch is not None:
            on_batch(tokens.cpu().numpy(), vecs.cpu().numpy())
    seen = torch.nonzero(counts > 0).flatten()
    return GeneEmbeddings(seen.cpu().numpy(), sums[seen].cpu().numpy(), counts[seen].cpu().numpy())


def gene_states_per_cell(
    model: Any,
    data: Any,
    *,
    emb_layer: int = -1,
    batch_size: int | None = None,
    device: Any = None,
    amp_dtype: Any = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every position's state: ``(cell_rows, token_ids, (n, H) states)``, grouped by cell in input order."""
    seqs = as_sequences(data)
    layer = layer_index(model, emb_layer)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for batch in iter_forward(model, seqs, layer=layer, batch_size=batch_size, device=device,
                              amp_dtype=amp_dtype, progress=progress, desc="gene states"):
        mask = batch.attention_mask.bool()
        rows = np.repeat(batch.rows, batch.lengths.cpu().numpy())
        parts.append((rows, batch.input_ids[mask].cpu().numpy(), batch.hidden.float()[mask].cpu().numpy()))
    rows = np.concatenate([p[0] for p in parts])
    toks = np.concatenate([p[1] for p in parts])
    states = np.concatenate([p[2] for p in parts])
    order = np.argsort(rows, kind="stable")
    return rows[order], toks[order], states[order]
