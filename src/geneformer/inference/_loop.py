"""The one forward loop: embeddings, perturbation, prediction and state embeddings all run through
:func:`iter_forward`.

Cells are sorted by length (longest first) and grouped into batches up to a token budget (or a
number of cells), each padded only to the batch's own longest cell; the model runs under
``torch.inference_mode`` (and autocast for bf16/fp16), on the requested device, and stops at the
layer that is needed, so the hidden states of the other layers are never computed. A batch that
runs out of GPU memory is retried as two halves. Each batch carries the original row indices of
its cells, so that callers put results back in input order whatever the batching.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .._settings import settings
from .._utils import (
    OptionError,
    autocast,
    compute_dtype,
    doc_params,
    itemsize,
    model_device,
    progress_bar,
    resolve_device,
)
from .._utils._docs import doc_device, doc_progress
from ..data import as_sequences
from ..models import n_layers
from ._batching import auto_token_budget, collate, make_batches
from ._forward import forward_first_position, forward_hidden, forward_outputs
from ._validate import validate_sequences

logger = logging.getLogger(__name__)


@dataclass
class ForwardBatch:
    """One batch's results; ``rows`` index the input.

    ``hidden`` is (B, L, H) at the requested layer, or (B, H) with ``first_position``; ``outputs``
    holds the full model's outputs (``.logits``) with ``outputs=True``."""

    rows: np.ndarray
    input_ids: torch.Tensor  # (B, L) long, padded with pad_id
    lengths: torch.Tensor  # (B,) long
    attention_mask: torch.Tensor  # (B, L) long
    hidden: torch.Tensor | None = None
    attentions: dict[int, torch.Tensor] | None = None  # layer (1-based hidden index) -> (B, heads, L, L)
    outputs: Any = None


@doc_params(device=doc_device, progress=doc_progress)
def iter_forward(
    model: Any,
    data: Any,
    *,
    layer: int | None = None,
    attention_layers: Sequence[int] = (),
    first_position: bool = False,
    outputs: bool = False,
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
    workspace: dict | None = None,
) -> Iterator[ForwardBatch]:
    """Run the model over tokenized cells and yield one :class:`ForwardBatch` per batch.

    Args:
        model: a transformers model (any head); a BERT encoder runs only up to ``layer``.
        data: tokenized cells (a ``datasets.Dataset`` with ``input_ids``, a DataFrame, token lists or
            ``TokenSequences``).
        layer: hidden-state index (0 = embeddings, n_layers = last layer; see ``models.layer_index``);
            None means the last layer.
        attention_layers: 1-based layers whose attention probabilities are returned.
        first_position: return only position 0's state (``<cls>``), the last layer run for it alone.
        outputs: run the whole model, head included, and return its outputs.
        batch_size: at most this many cells per batch.
        token_budget: padded tokens per batch (None and no ``batch_size``: ``settings.token_budget``,
            else chosen from free memory). With both, budget batches are cut to ``batch_size``.
        {device}
            None here keeps the model where it is.
        amp_dtype: compute dtype, "bf16"/"fp16" under autocast (None: ``settings.dtype``, and when that
            is None too bf16 on a CUDA GPU that supports it, fp32 elsewhere; a no-op when the weights
            already are that dtype).
        sort: longest cells first (False keeps the input order).
        validate: check that the cells fit the model (vocabulary, length) first.
        {progress}
        rows: only these rows of ``data`` (in any order); results still carry the original row index.
        workspace: a dict that keeps the layers' scratch buffers from one call to the next.
    """
    if sum((bool(attention_layers), first_position, outputs)) > 1:
        raise OptionError("iter_forward: attention_layers, first_position and outputs exclude each other.")
    seqs = as_sequences(data)
    if validate:
        validate_sequences(seqs, model)
    if device is not None:
        dev = resolve_device(device)
        model.to(dev)
    else:
        dev = model_device(model)
    amp = compute_dtype(amp_dtype, dev)
    total_layers = n_layers(model)
    layer = total_layers if layer is None else int(layer)
    if not 0 <= layer <= total_layers:
        raise ValueError(f"layer must be in 0..{total_layers} (hidden-state index), got {layer}")
    lengths = seqs.lengths
    subset = np.arange(len(seqs)) if rows is None else np.asarray(rows, dtype=np.int64)
    if batch_size is None and token_budget is None:
        token_budget = settings.token_budget or auto_token_budget(
            model, int(lengths[subset].max()) if len(subset) else 1, dev, itemsize(amp),
            output_attentions=bool(attention_layers))
    batches = [subset[b] for b in make_batches(lengths[subset], batch_size, token_budget, sort=sort)]
    workspace = {} if workspace is None else workspace  # the layers' scratch buffers, reused across batches
    was_training = model.training
    model.eval()
    try:
        bar = progress_bar(total=len(subset), desc=desc, unit="cell", progress=progress)
        pending = list(reversed(batches))  # a stack, so that a split batch is retried next
        with torch.inference_mode(), autocast(dev, amp, model):
            while pending:
                batch_rows = pending.pop()
                input_ids, mask, lens = collate(seqs, batch_rows, pad_id, dev)
                try:
                    batch = _run_batch(model, batch_rows, input_ids, mask, lens, layer, attention_layers,
                                       first_position, outputs, workspace, lengths[batch_rows])
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
                yield batch
                bar.update(len(batch_rows))
        bar.close()
    finally:
        if was_training:
            model.train()


def _run_batch(model, rows, input_ids, mask, lens, layer, attention_layers, first_position, outputs,
               workspace, host_lengths) -> ForwardBatch:
    # (the host's copy of the lengths: deciding on padding from the device tensors would wait for the GPU)
    if outputs:
        return ForwardBatch(rows, input_ids, lens, mask, outputs=forward_outputs(
            model, input_ids, mask, workspace=workspace, lengths=host_lengths))
    if first_position:
        hidden = forward_first_position(model, input_ids, mask, layer, workspace=workspace, lengths=host_lengths)
        return ForwardBatch(rows, input_ids, lens, mask, hidden)
    hidden, atts = forward_hidden(model, input_ids, mask, layer, attention_layers=attention_layers,
                                  workspace=workspace, lengths=host_lengths)
    return ForwardBatch(rows, input_ids, lens, mask, hidden, atts or None)


def run_model(model: Any, data: Any, *, batch_size: int | None = None, device: Any = None,
              amp_dtype: Any = None, progress: bool | None = None,
              desc: str = "predict") -> Iterator[tuple[np.ndarray, Any]]:
    """Full forward (with the model's head) in length-sorted batches; yields ``(rows, outputs)``.

    For prediction with classifier heads: ``outputs.logits`` is (B, num_labels) for cell classifiers
    and (B, L, num_labels) for gene classifiers (padded positions included; use the lengths).
    """
    for batch in iter_forward(model, data, outputs=True, batch_size=batch_size, device=device, amp_dtype=amp_dtype,
                              progress=progress, desc=desc):
        yield batch.rows, batch.outputs


def lagged_to_host(items: Iterator[tuple[Any, torch.Tensor]]) -> Iterator[tuple[Any, np.ndarray]]:
    """``(key, numpy array)`` for each ``(key, tensor)`` of ``items``, one item late on GPUs.

    A GPU tensor's copy into pinned host memory is started without blocking and waited for only
    after the next item has been produced, i.e. after the next batch's work is queued: the device
    never idles while the host waits for a result. CPU tensors pass through at once."""
    pending = None
    for key, tensor in items:
        if tensor.device.type != "cuda":
            if pending is not None:
                yield _arrived(*pending)
                pending = None
            # (at once: a CPU result may share memory that the next batch reuses)
            yield key, tensor.numpy()
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        if pending is not None:
            yield _arrived(*pending)
        pending = (key, host, event)
    if pending is not None:
        yield _arrived(*pending)


def _arrived(key: Any, host: torch.Tensor, event: Any) -> tuple[Any, np.ndarray]:
    event.synchronize()
    return key, host.numpy()


__all__ = ["ForwardBatch", "iter_forward", "lagged_to_host", "run_model"]
