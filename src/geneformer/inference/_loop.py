"""The one batched forward pass shared by embeddings, perturbation and prediction.

Cells are sorted by length (longest first) and grouped into batches padded only to the batch's own
longest cell; the encoder is run under ``torch.inference_mode`` with SDPA attention and stops at the
layer that is needed, so the hidden states of the other layers are never kept. Each batch carries the
original row indices of its cells, so that callers put results back in input order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from .._utils import autocast as _autocast
from .._utils import progress_bar, resolve_device, resolve_dtype
from ..data import as_sequences
from ..models import n_layers
from ._batching import auto_token_budget, collate, make_batches
from ._forward import forward_hidden
from ._validate import validate_sequences

if TYPE_CHECKING:  # pragma: no cover
    pass

logger = logging.getLogger(__name__)


@dataclass
class ForwardBatch:
    """One batch's results: rows index the input, ``hidden`` is (B, L, H) at the requested layer."""

    rows: np.ndarray
    input_ids: torch.Tensor  # (B, L) long, padded with pad_id
    lengths: torch.Tensor  # (B,) long
    attention_mask: torch.Tensor  # (B, L) long
    hidden: torch.Tensor | None = None
    attentions: dict[int, torch.Tensor] | None = None  # layer (1-based hidden index) -> (B, heads, L, L)


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
    progress: bool | None = None,
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
        bar = progress_bar(total=len(subset), desc=desc, unit="cell", progress=progress)
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
              amp_dtype: Any = None, progress: bool | None = None, desc: str = "predict") -> Iterator[tuple[np.ndarray, Any]]:
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
    model.eval()
    workspace: dict = {}
    with torch.inference_mode(), _autocast(dev, amp, model):
        bar = progress_bar(total=len(seqs), desc=desc, unit="cell", progress=progress)
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
