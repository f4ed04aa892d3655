"""Batching cells for the forward loop: a token budget from free memory, length-sorted batches,
and right padding to each batch's own longest cell."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._utils import check_positive_int, free_memory_bytes, host_to_device
from ..data import TokenSequences


def auto_token_budget(model: Any, max_len: int, device: torch.device, itemsize: int = 4,
                      output_attentions: bool = False) -> int:
    """Tokens per batch that fit comfortably in free memory (and keep CPU batches cache-friendly).

    On a GPU the free memory is ``torch.cuda.mem_get_info``'s at the time of the call, and the
    attention scores are not counted unless they are asked for: the packed layers' flash /
    memory-efficient kernels never materialise them."""
    cfg = getattr(model, "config", model)
    h, inter, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    # live activations per token: residual stream, q/k/v, attention output, intermediate, plus slack
    per_token = (8 * h + 2 * inter) * itemsize
    # attention scores per token when a kernel materialises them (eager, or SDPA's math path)
    if device.type != "cuda" or output_attentions:
        per_token += heads * max_len * itemsize * (2 if output_attentions else 1)
    budget = int(0.4 * free_memory_bytes(device) / max(per_token, 1))
    cap = 262_144 if device.type == "cuda" else 16_384
    return max(max_len, min(budget, cap))


def make_batches(
    lengths: np.ndarray,
    batch_size: int | None = None,
    token_budget: int | None = None,
    sort: bool = True,
) -> list[np.ndarray]:
    """Group row indices into batches: longest cells first, each batch padded only to its own max.

    ``token_budget`` fills each batch up to that many padded tokens (so batches of short cells hold
    more cells); ``batch_size`` caps the cells per batch. With only ``batch_size`` every batch
    holds that many cells; with both, each budget batch is cut into pieces of at most
    ``batch_size``.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
    if batch_size is not None:
        check_positive_int("batch size", batch_size)
    if token_budget is None:
        if batch_size is None:
            raise ValueError("give batch_size or token_budget")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = _budget_batches(lengths, order, int(token_budget))
    if batch_size is None:
        return batches
    return [b[i : i + batch_size] for b in batches for i in range(0, len(b), batch_size)]


def _budget_batches(lengths: np.ndarray, order: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Greedy fill: the padded size of a batch is (cells) x (its longest cell)."""
    sorted_lengths = np.maximum(lengths[order], 1)
    if len(order) and bool(np.all(sorted_lengths[:-1] >= sorted_lengths[1:])):
        # longest first: a batch's width is its first cell's length
        batches, start = [], 0
        while start < len(order):
            take = max(1, token_budget // int(sorted_lengths[start]))
            batches.append(order[start : start + take].astype(np.int64))
            start += take
        return batches
    batches: list[np.ndarray] = []
    current: list[int] = []
    width = 0
    for r, length in zip(order.tolist(), sorted_lengths.tolist()):
        new_width = max(width, length)
        if current and (len(current) + 1) * new_width > token_budget:
            batches.append(np.asarray(current, dtype=np.int64))
            current, new_width = [], length
        current.append(r)
        width = new_width
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


def collate(seqs: TokenSequences, rows: np.ndarray, pad_id: int = 0,
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad the chosen cells to the batch's longest: ``(input_ids, attention_mask, lengths)``,
    int64 tensors on ``device`` (copied from pinned memory without blocking when it is a GPU)."""
    ids, lens = seqs.padded(rows, pad_id)
    mask = np.arange(ids.shape[1])[None, :] < lens[:, None]
    tensors = [torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(lens.astype(np.int64))]
    device = torch.device(device)
    return tuple(host_to_device(t, device) for t in tensors)
