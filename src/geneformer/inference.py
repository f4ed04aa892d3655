"""The one batched forward pass shared by embeddings, perturbation and prediction.

Cells are sorted by length (longest first) and grouped into batches padded only to the batch's own
longest cell; the encoder is run under ``torch.inference_mode`` with SDPA attention and stops at the
layer that is needed, so the hidden states of the other layers are never kept. Each batch carries the
original row indices of its cells, so that callers put results back in input order.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from .models.fast_encoder import (fast_embeddings, fast_layer_forward, right_padded_lengths, supports_fast_embeddings,
                                  supports_fast_layer)
from .models.loading import model_input_size, n_layers, resolve_device, resolve_dtype
from .models.zoo import vocab_version_for_size

if TYPE_CHECKING:  # pragma: no cover
    import datasets

logger = logging.getLogger(__name__)

V2_CLS_ID, V2_EOS_ID = 2, 3


class InputError(ValueError):
    """Tokenized input that the model cannot take (wrong vocabulary, too long, empty)."""


# ---- token sequences ----------------------------------------------------------------------------
@dataclass
class TokenSequences:
    """Ragged token sequences as one flat array plus offsets (no per-cell Python objects)."""

    values: np.ndarray  # all tokens, concatenated (int64)
    offsets: np.ndarray  # (N + 1,) start of each cell in ``values``

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def first_tokens(self) -> np.ndarray:
        """First token of every cell (-1 for empty cells)."""
        lens = self.lengths
        out = np.full(len(self), -1, dtype=np.int64)
        ok = lens > 0
        out[ok] = self.values[self.offsets[:-1][ok]]
        return out

    def last_tokens(self) -> np.ndarray:
        """Last token of every cell (-1 for empty cells)."""
        lens = self.lengths
        out = np.full(len(self), -1, dtype=np.int64)
        ok = lens > 0
        out[ok] = self.values[self.offsets[1:][ok] - 1]
        return out


def as_sequences(data: Any, column: str = "input_ids") -> TokenSequences:
    """Read token sequences from a datasets.Dataset, a pandas DataFrame, a list of lists, or a TokenSequences."""
    if isinstance(data, TokenSequences):
        return data
    try:
        import datasets

        is_ds = isinstance(data, datasets.Dataset)
    except ImportError:  # pragma: no cover
        is_ds = False
    if is_ds:
        if column not in data.column_names:
            raise KeyError(
                f"The dataset has no {column!r} column (columns: {data.column_names}); "
                "tokenize the cells first (geneformer tokenize / tokenize_anndata)."
            )
        import pyarrow as pa
        import pyarrow.compute as pc

        col = data.with_format("arrow")[column]
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks() if col.num_chunks else pa.array([], type=col.type)
        lens = np.asarray(pc.list_value_length(col).fill_null(0), dtype=np.int64)
        values = np.asarray(col.flatten(), dtype=np.int64)
        return TokenSequences(values, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            if column not in data.columns:
                raise KeyError(f"The table has no {column!r} column (columns: {list(data.columns)}).")
            data = data[column].tolist()
    except ImportError:  # pragma: no cover
        pass
    seqs = [np.asarray(s, dtype=np.int64).ravel() for s in data]
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    values = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    return TokenSequences(values, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))


def validate_sequences(seqs: TokenSequences, model: Any, what: str = "the dataset") -> None:
    """Raise InputError when the sequences do not fit the model: empty, other vocabulary, too long."""
    config = getattr(model, "config", model)
    n = len(seqs)
    if n == 0:
        raise InputError(f"{what} has no cells; nothing to run the model on (check filters and max_ncells).")
    lens = seqs.lengths
    if (lens == 0).any():
        bad = np.flatnonzero(lens == 0)[:5].tolist()
        raise InputError(f"{what} has {int((lens == 0).sum())} empty cells (rows {bad}...); drop them first.")
    vocab_size = int(config.vocab_size)
    model_v = vocab_version_for_size(vocab_size)
    vmax, vmin = int(seqs.values.max()), int(seqs.values.min())
    if vmax >= vocab_size or vmin < 0:
        other = {"V1": "V2", "V2": "V1"}.get(model_v or "", "another")
        raise InputError(
            f"{what} holds token ids from {vmin} to {vmax:,} but the model's vocabulary has {vocab_size:,} tokens"
            f"{f' (the {model_v} vocabulary)' if model_v else ''}: the data was probably tokenized with the "
            f"{other} vocabulary. Re-tokenize with model_version='{model_v or '...'}' or use a {other} model."
        )
    max_len = model_input_size(config)
    if int(lens.max()) > max_len:
        i = int(np.argmax(lens))
        raise InputError(
            f"Cell {i} of {what} has {int(lens[i]):,} tokens but the model accepts at most {max_len:,} "
            f"(max_position_embeddings). Re-tokenize with model_input_size={max_len}."
        )
    if model_v == "V1":
        bracketed = (seqs.first_tokens() == V2_CLS_ID) & (seqs.last_tokens() == V2_EOS_ID)
        if bracketed.mean() > 0.5:
            raise InputError(
                f"{what} looks tokenized with the V2 vocabulary (cells start with <cls>=2 and end with <eos>=3) "
                "but the model is a V1 model (25,426 tokens, no special tokens). Re-tokenize with "
                "model_version='V1' or use a V2 model."
            )


# ---- batching -----------------------------------------------------------------------------------
def _free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 4 << 30


def auto_token_budget(model: Any, max_len: int, device: torch.device, itemsize: int = 4,
                      output_attentions: bool = False) -> int:
    """Tokens per batch that fit comfortably in free memory (and keep CPU batches cache-friendly)."""
    cfg = getattr(model, "config", model)
    h, inter, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    # live activations per token: residual stream, q/k/v, attention output, intermediate, plus slack
    per_token = (8 * h + 2 * inter) * itemsize
    # attention scores per token when a kernel materialises them (eager, or SDPA's math path)
    per_token += heads * max_len * itemsize * (2 if output_attentions else 1)
    budget = int(0.4 * _free_memory_bytes(device) / max(per_token, 1))
    cap = 262_144 if device.type == "cuda" else 16_384
    return max(max_len, min(budget, cap))


def make_batches(
    lengths: np.ndarray,
    batch_size: int | None = None,
    token_budget: int | None = None,
    sort: bool = True,
) -> list[np.ndarray]:
    """Group row indices into batches: longest cells first, each batch padded only to its own max.

    With ``batch_size`` every batch holds that many cells; otherwise batches are filled up to
    ``token_budget`` padded tokens, so batches of short cells hold more cells.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if token_budget is None:
        raise ValueError("give batch_size or token_budget")
    batches: list[np.ndarray] = []
    current: list[int] = []
    width = 0
    for r in order:
        # greedy fill: the padded size of a batch is (cells) x (its longest cell)
        new_width = max(width, int(lengths[r]), 1)
        if current and (len(current) + 1) * new_width > token_budget:
            batches.append(np.asarray(current, dtype=np.int64))
            current, new_width = [], max(int(lengths[r]), 1)
        current.append(int(r))
        width = new_width
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


@dataclass
class ForwardBatch:
    """One batch's results: rows index the input, ``hidden`` is (B, L, H) at the requested layer."""

    rows: np.ndarray
    input_ids: torch.Tensor  # (B, L) long, padded with pad_id
    lengths: torch.Tensor  # (B,) long
    attention_mask: torch.Tensor  # (B, L) long
    hidden: torch.Tensor | None = None
    attentions: dict[int, torch.Tensor] | None = None  # layer (1-based hidden index) -> (B, heads, L, L)


def collate(seqs: TokenSequences, rows: np.ndarray, pad_id: int = 0,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad the chosen cells to the batch's longest: (input_ids, attention_mask, lengths)."""
    lens = seqs.lengths[rows]
    width = int(lens.max())
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, : lens[j]] = seqs.row(int(r))
    input_ids = torch.from_numpy(ids)
    lengths = torch.from_numpy(lens.astype(np.int64))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return input_ids.to(device), mask.to(device), lengths.to(device)


# ---- forward ------------------------------------------------------------------------------------
def _base_model(model: Any) -> Any:
    return getattr(model, "base_model", model)


def _can_stop_early(model: Any) -> bool:
    base = _base_model(model)
    return hasattr(base, "embeddings") and hasattr(base, "encoder") and hasattr(base.encoder, "layer")


def forward_hidden(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layer: int,
    *,
    attention_layers: Sequence[int] = (),
    workspace: dict | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Hidden states after ``layer`` encoder layers (0 = embedding output), running no further layers.

    ``attention_layers`` (1-based, ≤ layer) asks for those layers' attention probabilities, which needs
    a model loaded with eager attention. ``workspace``: a dict to keep the layers' scratch buffers in
    from one call to the next (see ``models.fast_encoder``). Returns ``(hidden, {layer: (B, heads, L, L)})``.
    """
    attention_layers = tuple(int(a) for a in attention_layers)
    if not _can_stop_early(model):  # any other architecture: full forward, pick the layer
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                    output_attentions=bool(attention_layers))
        atts = {a: out.attentions[a - 1] for a in attention_layers} if attention_layers else {}
        return out.hidden_states[layer], atts
    base = _base_model(model)
    workspace = {} if workspace is None else workspace
    if supports_fast_embeddings(base.embeddings):
        hidden = fast_embeddings(base.embeddings, input_ids, workspace)
    else:
        hidden = base.embeddings(input_ids=input_ids)
    if layer == 0 and not attention_layers:
        return hidden, {}
    mask = None
    if attention_mask is not None and not bool(attention_mask.all()):
        mask = _key_padding_mask(base.config, hidden, attention_mask)
    atts: dict[int, torch.Tensor] = {}
    kept = hidden
    fast_dtype = _fast_dtype(hidden)
    fast_mask = None if mask is None else attention_mask.bool()[:, None, None, :]
    fast_lengths = None
    if hidden.device.type == "cpu":  # (fast_layer_forward decides, by dtype, whether to use them)
        fast_lengths = right_padded_lengths(None if mask is None else attention_mask, *input_ids.shape)
    for i, block in enumerate(base.encoder.layer[: max((layer, *attention_layers))], start=1):
        if i in attention_layers:
            hidden, atts[i] = _layer_with_attention(block, hidden, mask, base.config)
        elif fast_dtype != torch.float16 and supports_fast_layer(block, base.config):
            # (fp16 stays with the module under autocast, whose residual stream is fp32: a pure fp16
            # residual stream could overflow; bf16 has fp32's range)
            hidden = fast_layer_forward(block, hidden, fast_mask, fast_dtype, workspace, fast_lengths)
        else:
            out = block(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        if i == layer:
            kept = hidden
    return kept, atts


def _fast_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the layers compute in: autocast's when it is on, else the hidden states'."""
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return hidden.dtype


def _key_padding_mask(config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A (B, 1, 1, L) key-padding mask: bool for SDPA, additive float for eager attention.

    transformers builds a full (B, 1, L, L) mask, which SDPA on CPU then converts to a float tensor
    of that size in every layer; a broadcastable key mask gives the same result without that cost.
    """
    keep = attention_mask.bool()[:, None, None, :]
    impl = getattr(config, "_attn_implementation", "eager")
    if impl == "sdpa":
        return keep
    if impl in (None, "eager"):
        mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        return mask.masked_fill_(~keep, torch.finfo(hidden.dtype).min)
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)


def _layer_with_attention(block: Any, hidden: torch.Tensor, mask: torch.Tensor | None, config: Any):
    """Run one BERT layer and also return its attention probabilities (eager softmax(QK^T/sqrt(d)))."""
    self_att = block.attention.self
    b, length, _ = hidden.shape
    shape = (b, length, -1, self_att.attention_head_size)
    q = self_att.query(hidden).view(*shape).transpose(1, 2)
    k = self_att.key(hidden).view(*shape).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * self_att.scaling
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = torch.softmax(scores.float(), dim=-1).to(hidden.dtype)
    out = block(hidden, mask)
    return (out[0] if isinstance(out, tuple) else out), probs


def _autocast(device: torch.device, amp_dtype: torch.dtype | None, model: Any):
    if amp_dtype is None or amp_dtype == torch.float32:
        return nullcontext()
    param = next(model.parameters(), None)
    if param is not None and param.dtype == amp_dtype:
        return nullcontext()  # weights already in that dtype
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def iter_forward(
    model: Any,
    data: Any,
    *,
    layer: int | None = None,
    attention_layers: Sequence[int] = (),
    batch_size: int | None = None,
    token_budget: int | None = None,
    device: str | torch.device | None = None,
    amp_dtype: str | torch.dtype | None = None,
    pad_id: int = 0,
    sort: bool = True,
    validate: bool = True,
    progress: bool = True,
    desc: str = "forward",
    rows: np.ndarray | None = None,
) -> Iterator[ForwardBatch]:
    """Run the model over tokenized cells and yield one ForwardBatch per batch.

    Args:
        model: a transformers BERT model (any head); its encoder is run only up to ``layer``.
        data: a datasets.Dataset with ``input_ids``, a DataFrame, a list of token lists or TokenSequences.
        layer: hidden-state index (0 = embeddings, n_layers = last layer; see ``models.layer_index``);
            None means the last layer.
        attention_layers: 1-based layers whose attention probabilities are returned (eager math).
        batch_size: cells per batch; None chooses batches from free memory (a token budget).
        device: where to run; None moves nothing and uses the model's device.
        amp_dtype: "bf16"/"fp16" runs under autocast (no-op when the weights are already that dtype).
        rows: only these rows of ``data`` (in any order); results still carry the original row index.
    """
    seqs = as_sequences(data)
    if validate:
        validate_sequences(seqs, model)
    if device is not None:
        dev = resolve_device(device)
        model.to(dev)
    else:
        param = next(model.parameters(), None)
        dev = param.device if param is not None else torch.device("cpu")
    amp = resolve_dtype(amp_dtype)
    total_layers = n_layers(model)
    layer = total_layers if layer is None else int(layer)
    if not 0 <= layer <= total_layers:
        raise ValueError(f"layer must be in 0..{total_layers} (hidden-state index), got {layer}")
    lengths = seqs.lengths
    subset = np.arange(len(seqs)) if rows is None else np.asarray(rows, dtype=np.int64)
    if batch_size is None and token_budget is None:
        itemsize = 2 if amp in (torch.float16, torch.bfloat16) else 4
        token_budget = auto_token_budget(model, int(lengths[subset].max()) if len(subset) else 1, dev, itemsize,
                                         output_attentions=bool(attention_layers))
    batches = [subset[b] for b in make_batches(lengths[subset], batch_size, token_budget, sort=sort)]
    was_training = model.training
    model.eval()
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(subset), desc=desc, unit="cell", disable=not progress, leave=False)
        pending = list(reversed(batches))  # a stack, so that a split batch is retried next
        workspace: dict = {}  # the layers' scratch buffers, reused from batch to batch
        with torch.inference_mode(), _autocast(dev, amp, model):
            while pending:
                batch_rows = pending.pop()
                input_ids, mask, lens = collate(seqs, batch_rows, pad_id, dev)
                try:
                    hidden, atts = forward_hidden(model, input_ids, mask, layer, attention_layers=attention_layers,
                                                  workspace=workspace)
                except torch.OutOfMemoryError:
                    if len(batch_rows) == 1:
                        raise
                    # out of GPU memory: retry the batch as two halves
                    del input_ids, mask, lens
                    workspace.clear()
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    half = len(batch_rows) // 2
                    pending.extend([batch_rows[half:], batch_rows[:half]])
                    logger.info("Out of memory with %d cells per batch; retrying with %d", len(batch_rows), half)
                    continue
                yield ForwardBatch(batch_rows, input_ids, lens, mask, hidden, atts or None)
                bar.update(len(batch_rows))
        bar.close()
    finally:
        if was_training:
            model.train()


def run_model(model: Any, data: Any, *, batch_size: int | None = None, device: Any = None,
              amp_dtype: Any = None, progress: bool = True, desc: str = "predict") -> Iterator[tuple[np.ndarray, Any]]:
    """Full forward (with the model's head) in length-sorted batches; yields ``(rows, outputs)``.

    For prediction with classifier heads: ``outputs.logits`` is (B, num_labels) for cell classifiers
    and (B, L, num_labels) for gene classifiers (padded positions included; use the lengths).
    """
    seqs = as_sequences(data)
    validate_sequences(seqs, model)
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    amp = resolve_dtype(amp_dtype)
    if batch_size is None:
        token_budget = auto_token_budget(model, int(seqs.lengths.max()), dev)
    else:
        token_budget = None
    from tqdm.auto import tqdm

    model.eval()
    workspace: dict = {}
    with torch.inference_mode(), _autocast(dev, amp, model):
        bar = tqdm(total=len(seqs), desc=desc, unit="cell", disable=not progress, leave=False)
        for rows in make_batches(seqs.lengths, batch_size, token_budget):
            input_ids, mask, _ = collate(seqs, rows, 0, dev)
            out = _classifier_forward(model, input_ids, mask, workspace)
            yield rows, out if out is not None else model(input_ids=input_ids, attention_mask=mask)
            bar.update(len(rows))
        bar.close()


def _classifier_forward(model: Any, input_ids: torch.Tensor, mask: torch.Tensor, workspace: dict) -> Any:
    """A plain BERT cell or gene classifier's outputs, its encoder run through ``forward_hidden``
    (and so the fast layers); None for any other model (PEFT-wrapped, custom heads), which then
    runs its own forward."""
    from torch import nn
    from transformers import BertForSequenceClassification, BertForTokenClassification
    from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

    kind = type(model)
    if kind not in (BertForSequenceClassification, BertForTokenClassification) or type(model.classifier) is not nn.Linear:
        return None
    if kind is BertForSequenceClassification and model.bert.pooler is None:
        return None
    hidden, _ = forward_hidden(model, input_ids, mask, n_layers(model), workspace=workspace)
    if kind is BertForTokenClassification:
        return TokenClassifierOutput(logits=model.classifier(model.dropout(hidden)))
    return SequenceClassifierOutput(logits=model.classifier(model.dropout(model.bert.pooler(hidden))))
