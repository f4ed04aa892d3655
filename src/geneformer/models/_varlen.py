"""Attention over packed cells, for GPUs: no padded token is ever computed, no dense mask is built.

A batch of right-padded cells is packed into one (tokens, hidden) matrix holding only the cells'
own tokens (:class:`Packing`, :func:`pack`, :func:`unpack`); the linear layers then run on real
tokens only, and attention runs per cell over its own length through one of:

- a batch whose cells all have the batch's width (every delete-all batch of one cell): plain SDPA
  without a mask, which selects the flash kernel on CUDA;
- ``flash_attn.flash_attn_varlen_func`` when flash-attn is installed (bf16/fp16 on CUDA);
- PyTorch's nested (jagged) tensors through SDPA otherwise, which run the flash / memory-efficient
  kernels on CUDA and the math kernel per cell on CPU (where the tests check this path).

The lengths come from the host (the forward loop knows them), so packing needs no device→host
synchronisation: the gather index and the cumulative lengths are copied without blocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._utils import host_to_device, optional_module


@dataclass
class Packing:
    """Where the cells of a right-padded (batch, width) layout sit in the packed token matrix.

    ``index``: (tokens,) flat positions in the padded layout (None when nothing is padded);
    ``offsets``: (batch + 1,) int64 cumulative lengths; ``cu_seqlens``: the same in int32 (for
    flash-attn); all three on the device. ``lengths`` stays on the host."""

    lengths: np.ndarray
    width: int
    index: torch.Tensor | None
    offsets: torch.Tensor
    cu_seqlens: torch.Tensor

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def uniform(self) -> bool:
        return bool(len(self.lengths)) and int(self.lengths.min()) == self.width

    @property
    def max_len(self) -> int:
        return int(self.lengths.max()) if len(self.lengths) else 0


def make_packing(lengths: Sequence[int] | np.ndarray, width: int, device: torch.device) -> Packing:
    """The packing of right-padded cells of ``lengths`` in a batch ``width`` wide (host arithmetic)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    index = None
    if len(lengths) and int(lengths.min()) < width:
        starts = np.repeat(np.arange(len(lengths), dtype=np.int64) * width - offsets[:-1], lengths)
        index = host_to_device(starts + np.arange(int(offsets[-1]), dtype=np.int64), device)
    offsets_t = host_to_device(offsets, device)
    return Packing(lengths, int(width), index, offsets_t, host_to_device(offsets.astype(np.int32), device))


def pack(hidden: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(batch, width, H) right-padded states → (tokens, H) of the cells' own tokens."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat if packing.index is None else flat.index_select(0, packing.index)


def unpack(packed: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(tokens, H) → (batch, width, H), zeros at the padded positions."""
    if packing.index is None:
        return packed.view(packing.batch, packing.width, -1)
    out = packed.new_zeros((packing.batch * packing.width, packed.shape[-1]))
    out.index_copy_(0, packing.index, packed)
    return out.view(packing.batch, packing.width, -1)


def _flash_varlen():
    module = optional_module("flash_attn", "attention over packed cells uses PyTorch's nested-tensor SDPA")
    return None if module is None else getattr(module, "flash_attn_varlen_func", None)


def attention_backend(query: torch.Tensor, packing: Packing) -> str:
    """Which path :func:`varlen_attention` takes: "dense", "flash_attn" or "nested"."""
    if packing.uniform:
        return "dense"
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256:
        if _flash_varlen() is not None:
            return "flash_attn"
    return "nested"


def varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, packing: Packing,
                     scale: float) -> torch.Tensor:
    """Softmax attention of each cell over its own tokens: (tokens, heads, d) in, the same out."""
    backend = attention_backend(query, packing)
    if backend == "dense":
        b, width = packing.batch, packing.width
        q, k, v = (t.reshape(b, width, *t.shape[1:]).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return out.transpose(1, 2).reshape(query.shape)
    if backend == "flash_attn":
        n = packing.max_len
        return _flash_varlen()(query, key, value, packing.cu_seqlens, packing.cu_seqlens, n, n, softmax_scale=scale)
    lo, hi = int(packing.lengths.min()), packing.max_len
    q, k, v = (torch.nested.nested_tensor_from_jagged(t.contiguous(), packing.offsets, min_seqlen=lo, max_seqlen=hi)
               .transpose(1, 2) for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).values()
