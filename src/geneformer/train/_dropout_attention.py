"""Exact attention dropout on CPU at the speed of the fused (flash) kernel.

PyTorch's fused CPU attention kernel has no dropout, so ``scaled_dot_product_attention`` with
``dropout_p > 0`` falls back to the math path, which materialises and samples all B*H*L*L
attention probabilities (3x slower for a V1 Geneformer). With P = softmax(S), an iid keep mask M
and its complement D (the dropped entries, density p):

    O = (P * M) V / (1 - p) = (P V - C) / (1 - p),   C_i = sum over dropped j of P_ij v_j,

so the forward is the fused kernel's output minus a sparse correction over the ~p*L*L dropped
entries, with P_ij = exp(S_ij - lse_i) from the kernel's log-sum-exp. The fused backward, given
X = P V - C as its "output", computes the dropout attention's row terms rowsum(dO * X) exactly;
three sparse corrections over the dropped entries then finish dQ, dK and dV
(:mod:`._dropout_kernel`). The dropped entries are sampled exactly as iid Bernoulli(p) (geometric
gaps between them) by a compiled generator seeded from torch's global generator, so
``torch.manual_seed`` and the ``Trainer``'s saved RNG states keep runs reproducible.

:func:`geneformer_sdpa_attention_forward` is a drop-in for transformers' ``sdpa`` attention,
registered as ``"geneformer_sdpa"`` by :func:`register` (or :func:`use_fused_attention_dropout`).
It takes the new path only in training with dropout on CPU float32/float64 tensors and hands
everything else (CUDA, which has fused dropout, half precision, eval mode) to ``sdpa``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: Name under which the attention function is registered with transformers.
ATTN_IMPLEMENTATION = "geneformer_sdpa"

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
def sample_dropped(n_blocks: int, block_size: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries dropped by iid Bernoulli(``p``) dropout over ``n_blocks`` blocks of ``block_size``.

    Returns ``(idx, counts)``: block ``b`` drops the sorted positions ``idx[b, :counts[b]]``
    (int32 when ``block_size`` allows, else int64). One 63-bit seed is drawn from torch's global
    generator, so ``torch.manual_seed`` and restored RNG states reproduce the draw; the compiled
    sampler turns it into independent per-block streams (:func:`._dropout_kernel.sample_blocks`).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"Dropout probability must be in (0, 1), got {p}.")
    kernel = _kernels()
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    mean = block_size * p
    cap = min(block_size, int(mean + 6.0 * math.sqrt(mean * (1.0 - p)) + 16))
    dtype = np.int32 if block_size <= np.iinfo(np.int32).max else np.int64  # halves what the backward keeps
    counts = np.empty(n_blocks, dtype=np.int64)
    idx = np.zeros((n_blocks, cap), dtype=dtype)  # deterministic padding after the counts
    kernel.sample_blocks(seed, block_size, p, idx, counts)
    if counts.max(initial=0) > cap:  # beyond 6 sigma: the same seed again, with room
        idx = np.zeros((n_blocks, int(counts.max())), dtype=dtype)
        kernel.sample_blocks(seed, block_size, p, idx, counts)
    return torch.from_numpy(idx), torch.from_numpy(counts)


def _dropped_from_mask(dropped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx, counts)`` of a boolean (B, H, Lq, Lk) tensor of dropped entries (for tests)."""
    b, h, lq, lk = dropped.shape
    flat = dropped.reshape(b * h, lq * lk)
    counts = flat.sum(1)
    idx = torch.zeros(b * h, max(int(counts.max()), 1), dtype=torch.int32 if lq * lk <= np.iinfo(np.int32).max
                      else torch.int64)
    for blk in range(b * h):
        pos = flat[blk].nonzero()[:, 0]  # sorted
        idx[blk, : len(pos)] = pos.to(idx.dtype)
    return idx, counts


# ------------------------------------------------------------------------------------------------
# Masks and layouts
# ------------------------------------------------------------------------------------------------
def compact_bias(attn_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
    """The attention mask as a contiguous additive float bias of shape (Bm, Hm, Qm, Lk).

    Dimensions that ``attn_mask`` only broadcasts (size 1, or expanded with stride 0, as
    transformers' key-padding masks are) stay of size 1. Boolean masks become 0 / -inf.
    Raises ``ValueError`` for a mask that does not broadcast to (B, H, Lq, Lk).
    """
    if attn_mask is None:
        return None
    if not _mask_broadcasts(attn_mask, query, key):
        raise ValueError(f"Attention mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                         f"{(*query.shape[:3], key.shape[2])}.")
    m = attn_mask
    for d in range(3):
        if m.shape[d] > 1 and m.stride(d) == 0:
            m = m.narrow(d, 0, 1)
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=query.dtype, device=m.device).masked_fill_(~m, float("-inf"))
    return m.to(query.dtype).contiguous()


def _mask_broadcasts(attn_mask: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> bool:
    b, h, lq, _ = query.shape
    return attn_mask.dim() == 4 and attn_mask.shape[3] == key.shape[2] and all(
        attn_mask.shape[d] in (1, n) for d, n in ((0, b), (1, h), (2, lq)))


def _blhd(t: torch.Tensor) -> np.ndarray:
    """A (B, H, L, D) tensor (or the kernel's (B, H, L) log-sum-exp) as a C-contiguous numpy
    (B, L, H, D) (or (B, L, H)) array: a view when the memory is already in that order, as BERT's
    head split and the fused kernel's outputs are."""
    t = t.detach().transpose(1, 2)
    return (t if t.is_contiguous() else t.contiguous()).numpy()


def _min_bias(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).min)


def _kernels():
    """The compiled kernels (imported on first use: numba compiles or loads its cache), run on as
    many threads as torch uses."""
    import numba

    from . import _dropout_kernel

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return _dropout_kernel


# ------------------------------------------------------------------------------------------------
# Autograd function
# ------------------------------------------------------------------------------------------------
class _DropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, p, scale, dropped):
        kernel = _kernels()
        b, h, lq, _ = q.shape
        lk = k.shape[2]
        idx, counts = dropped if dropped is not None else sample_dropped(b * h, lq * lk, p)
        x, lse = _flash(q, k, v, 0.0, False, attn_mask=bias, scale=scale)
        bias_np = (bias if bias is not None else q.new_zeros(1, 1, 1, lk)).detach().numpy()
        x_np = _blhd(x)
        kernel.forward_correction(_blhd(q), _blhd(k), _blhd(v), bias_np, _blhd(lse), idx.numpy(),
                                  counts.numpy(), scale, _min_bias(q.dtype), x_np)
        if not np.shares_memory(x_np, x.detach().numpy()):
            x = torch.from_numpy(x_np).transpose(1, 2)
        out = x / (1.0 - p)
        ctx.save_for_backward(q, k, v, bias, out, lse, idx, counts)
        ctx.p, ctx.scale = p, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        kernel = _kernels()
        q, k, v, bias, out, lse, idx, counts = ctx.saved_tensors
        p, scale = ctx.p, ctx.scale
        g = grad_out / (1.0 - p)
        x = out * (1.0 - p)  # P V - C: the fused backward then computes the right rowsum(dO * O)
        dq, dk, dv = _flash_backward(g, q, k, v, x, lse, 0.0, False, attn_mask=bias, scale=scale)
        grads = [_blhd(t) for t in (dq, dk, dv)]
        bias_np = (bias if bias is not None else q.new_zeros(1, 1, 1, k.shape[2])).detach().numpy()
        kernel.backward_correction(_blhd(q), _blhd(k), _blhd(v), bias_np, _blhd(lse), idx.numpy(),
                                   counts.numpy(), scale, _min_bias(q.dtype), _blhd(g), *grads)
        out_grads = []
        for t, a in zip((dq, dk, dv), grads):
            out_grads.append(t if np.shares_memory(a, t.detach().numpy()) else torch.from_numpy(a).transpose(1, 2))
        return (*out_grads, None, None, None, None)


def dropout_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, scale: float | None = None,
                      *, dropped: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, scale=scale)`` on CPU.

    Inputs are (B, H, L, D) float32/float64 CPU tensors; ``attn_mask`` is boolean (True = attend) or
    additive, broadcastable to (B, H, Lq, Lk). The output is (B, H, Lq, D) (memory laid out as
    (B, Lq, H, D)). ``dropped`` (tests): a boolean (B, H, Lq, Lk) tensor of the entries to drop,
    instead of sampling them. ``dropout_p`` 0 runs the fused kernel alone.
    """
    if query.device.type != "cpu" or query.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dropout_attention runs on CPU float32/float64 tensors, got {query.dtype} on {query.device}.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}.")
    if key.shape[1] != query.shape[1] or value.shape[:3] != key.shape[:3]:
        raise ValueError(f"Incompatible query/key/value shapes {tuple(query.shape)}, {tuple(key.shape)}, "
                         f"{tuple(value.shape)} (grouped-query attention is not supported).")
    scale = float(scale) if scale is not None else query.shape[-1] ** -0.5
    bias = compact_bias(attn_mask, query, key)
    if bias is not None and bias.requires_grad:
        raise ValueError("dropout_attention does not differentiate the attention mask.")
    if dropout_p == 0.0 and dropped is None:
        return _flash(query, key, value, 0.0, False, attn_mask=bias, scale=scale)[0]
    if dropped is not None:
        b, h, lq, _ = query.shape
        if tuple(dropped.shape) != (b, h, lq, key.shape[2]):
            raise ValueError(f"dropped has shape {tuple(dropped.shape)}, expected {(b, h, lq, key.shape[2])}.")
        dropped = _dropped_from_mask(dropped.bool())
    return _DropoutAttention.apply(query, key, value, bias, float(dropout_p), scale, dropped)


# ------------------------------------------------------------------------------------------------
# transformers integration
# ------------------------------------------------------------------------------------------------
def _fused_applicable(module, query, key, value, attention_mask, dropout, kwargs) -> bool:
    if not dropout or not 0.0 < dropout < 1.0:
        return False
    if query.device.type != "cpu" or query.dtype not in (torch.float32, torch.float64):
        return False
    if key.dtype != query.dtype or value.dtype != query.dtype:
        return False
    if query.dim() != 4 or key.shape[1] != query.shape[1] or value.shape[:3] != key.shape[:3]:
        return False  # grouped-query attention: sdpa repeats the heads
    if key.shape[2] * query.shape[2] > np.iinfo(np.int32).max:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if any(kwargs.get(name) is not None for name in ("position_bias", "cache", "softcap")):
        return False
    is_causal = kwargs.get("is_causal")
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if is_causal and attention_mask is None and query.shape[2] > 1:
        return False
    if attention_mask is not None and (attention_mask.requires_grad or attention_mask.device != query.device
                                       or not _mask_broadcasts(attention_mask, query, key)):
        return False
    return True


def geneformer_sdpa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                                      dropout: float = 0.0, scaling: float | None = None,
                                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``sdpa`` with exact, fused-speed attention dropout on CPU.

    Same signature and output layout ((B, L, H, D), contiguous) as transformers'
    ``sdpa_attention_forward``, to which it delegates whenever dropout is off or the inputs are not
    CPU float32/float64 self-attention tensors.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _fused_applicable(module, query, key, value, attention_mask, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("output_attentions", False):
        from transformers.utils import logging

        logging.get_logger(__name__).warning_once(
            f"`{ATTN_IMPLEMENTATION}` attention does not return attention weights; use attn_implementation='eager'."
        )
    out = dropout_attention(query, key, value, attention_mask, dropout, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the attention function (and sdpa's mask format) with transformers under
    :data:`ATTN_IMPLEMENTATION`; returns the name. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, geneformer_sdpa_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION


def use_fused_attention_dropout(model: Any, enabled: bool = True) -> bool:
    """Switch a transformers model (``BertForMaskedLM``, a classifier, a PEFT wrapper) between
    ``sdpa`` and the fused attention dropout; returns whether the model now uses the latter.

    ``enabled``: models on ``sdpa`` switch to :data:`ATTN_IMPLEMENTATION`; ``False`` switches them
    back. Models on another implementation (``eager`` to read attention weights, flash-attention)
    are left alone. Only the in-memory config changes: ``save_pretrained`` writes no attention
    implementation, so checkpoints stay plain BERT that loads without this module.
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if not hasattr(model, "set_attn_implementation") or current not in ("sdpa", ATTN_IMPLEMENTATION):
        return False
    target = register() if enabled else "sdpa"
    if current != target:
        model.set_attn_implementation(target)
    return enabled
