"""TODO docstring."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._utils import free_memory_bytes
from ..data import TokenSequences


def auto_token_budget(model: Any, max_len: int, device: torch.device, itemsize: int = 4,
                      output_attentions: bool = False) -> int:
    """Tokens per batch that fit comfortably in free memory (and keep CPU batches cache-friendly)."""
    cfg = getattr(model, "config", model)
    h, inter, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    # live activations per token: residual stream, q/k/v, attention output, intermediate, plus slack
    per_token = (8 * h + 2 * inter) * itemsize
    # attention scores per token when a kernel materialises them (eager, or SDPA's math path)
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
