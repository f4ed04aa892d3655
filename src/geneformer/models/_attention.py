"""The CPU attention kernels as a transformers attention function (``attn_implementation="geneformer_cpu"``).

The fast encoder layers (``_fast_encoder``) call the kernels directly, since they also fuse the
Q/K/V product and reuse buffers across layers. Layers that run their own forward instead — LoRA-wrapped
or quantized layers, or any transformers BERT — reach the same kernels through transformers'
attention interface once registered here: in inference on CPU, attention is computed per cell over
its own length (no mask, no padded keys), in bf16 by the blocked kernel of ``_cpu_attention``, in
fp32 by PyTorch's SDPA. Anything else (training, dropout, GPUs, other masks, attention weights
asked for) is handed to transformers' own ``sdpa`` function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._cpu_attention import blocked_attention

ATTN_IMPLEMENTATION = "geneformer_cpu"


def _right_padded_lengths(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> list[int] | None:
    """Per-cell lengths when ``mask`` only hides padded keys at the right end (None otherwise)."""
    b, _, length, _ = query.shape
    if key.shape[2] != length:
        return None
    if mask is None:
        return [length] * b
    if mask.dim() != 4 or mask.shape[0] != b or mask.shape[-1] != length:
        return None
    keep = mask if mask.dtype == torch.bool else mask == 0
    if keep.shape[1] != 1 or not bool((keep == keep[:, :, :1, :]).all()):
        return None  # a per-query (not key-padding) mask
    keep = keep[:, 0, 0, :]
    lengths = keep.sum(dim=1)
    prefix = torch.arange(length, device=keep.device)[None, :] < lengths[:, None]
    if not bool((prefix == keep).all()):
        return None
    return [int(n) for n in lengths.tolist()]


def geneformer_cpu_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: per-cell attention over each cell's own length on CPU.

    Same signature and output layout ((B, L, H, D)) as transformers' ``sdpa_attention_forward``, to
    which it delegates outside CPU inference in fp32/bf16 with right-padded key masks.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    usable = (query.device.type == "cpu" and query.dtype in (torch.float32, torch.bfloat16)
              and key.dtype == value.dtype == query.dtype and not torch.is_grad_enabled()
              and not (dropout and module.training) and not kwargs.get("output_attentions")
              and query.dim() == 4 and key.shape[1] == query.shape[1])
    lengths = _right_padded_lengths(attention_mask, query, key) if usable else None
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, heads, length, size = query.shape
    scale = scaling if scaling is not None else size ** -0.5
    out = torch.empty((b, length, heads * size), dtype=query.dtype)
    if query.dtype == torch.bfloat16:
        blocked_attention((query * scale).contiguous(), key.contiguous(), value.contiguous(), lengths, out)
    else:
        for cell, n in enumerate(lengths):
            one = slice(cell, cell + 1)
            att = F.scaled_dot_product_attention(query[one, :, :n], key[one, :, :n], value[one, :, :n], scale=scale)
            out[cell, :n].view(n, heads, size).copy_(att[0].transpose(0, 1))
            out[cell, n:] = 0
    return out.view(b, length, heads, size), None


def register_cpu_attention() -> str:
    """Register :func:`geneformer_cpu_attention` (and sdpa's mask format) with transformers; returns
    the implementation name to pass as ``attn_implementation``. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, geneformer_cpu_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
