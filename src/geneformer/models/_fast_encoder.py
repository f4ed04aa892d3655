"""Inference-only forward of BERT's embedding and encoder layers, faster than the modules' own on CPU.

The arithmetic is the layer's own (post-LayerNorm BERT, absolute positions); what differs is how it
is scheduled:

- Q, K and V come from one matrix product with the three weights stacked, and residual additions
  and the activation run in place, so that each layer allocates (and the OS faults in) far fewer
  fresh activation buffers; on a small VM those page faults cost as much as the element-wise work.
- The embedding sum is built in place in a reused buffer (:func:`fast_embeddings`).
- In bf16 on CPU the layer runs in bf16 throughout (weights cast once per batch) instead
  of autocast re-casting every weight and activation at every call, and attention is computed per
  cell and head in query blocks over the cell's own length only, on one thread per core
  (:mod:`.cpu_attention`).
- In fp32 attention is PyTorch's ``scaled_dot_product_attention``: on CPU per cell over its own
  length, on GPU for the batch with a broadcast key mask, as in the module.
- On GPUs the forward loop runs :func:`packed_layer_forward` instead: the cells' tokens packed
  without padding (:mod:`._varlen`), attention per cell by flash / memory-efficient kernels, in
  bf16, fp16 (with an fp32 residual stream, as autocast keeps it) or fp32.

Only plain ``BertLayer`` blocks in eval mode under ``no_grad``/``inference_mode`` are taken (see
:func:`supports_fast_layer`); LoRA-wrapped, quantized or otherwise modified layers run their own
forward.

This is the one module that opens a BERT layer up: besides the fast forward it computes a layer's
attention probabilities (:func:`attention_probabilities`) and a layer's output at the first
position only (:func:`first_position_forward`, for ``<cls>`` embeddings and perturbations).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._cpu_attention import blocked_attention
from ._varlen import Packing, varlen_attention
from ._workspace import scratch


def _activation(block: Any) -> str | None:
    fn = block.intermediate.intermediate_act_fn
    if isinstance(fn, nn.ReLU):
        return "relu"
    name = type(fn).__name__
    if name == "GELUActivation" and getattr(fn, "act", None) is F.gelu:
        return "gelu"
    return None


def supports_fast_layer(block: Any, config: Any) -> bool:
    """Whether ``block`` is a plain BERT encoder layer that :func:`fast_layer_forward` reproduces."""
    if block.training or torch.is_grad_enabled():
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return False
    if getattr(block, "chunk_size_feed_forward", 0):
        return False
    try:
        att = block.attention
        linears = (att.self.query, att.self.key, att.self.value, att.output.dense,
                   block.intermediate.dense, block.output.dense)
        norms = (att.output.LayerNorm, block.output.LayerNorm)
    except AttributeError:
        return False
    # exact types: LoRA, quantized or other wrapped Linear modules compute something else
    if any(type(m) is not nn.Linear or m.bias is None for m in linears):
        return False
    if any(type(m) is not nn.LayerNorm for m in norms):
        return False
    return _activation(block) is not None


def supports_fast_embeddings(embeddings: Any) -> bool:
    """Whether ``embeddings`` is a plain BERT embedding layer that :func:`fast_embeddings` reproduces."""
    if embeddings.training or torch.is_grad_enabled() or type(embeddings).__name__ != "BertEmbeddings":
        return False
    if getattr(embeddings, "position_embedding_type", "absolute") != "absolute":
        return False
    parts = [getattr(embeddings, name, None) for name in ("word_embeddings", "position_embeddings",
                                                           "token_type_embeddings")]
    return (all(type(m) is nn.Embedding for m in parts) and type(getattr(embeddings, "LayerNorm", None)) is nn.LayerNorm
            and hasattr(embeddings, "position_ids") and hasattr(embeddings, "token_type_ids"))


def fast_embeddings(embeddings: Any, input_ids: torch.Tensor, workspace: dict) -> torch.Tensor:
    """``embeddings(input_ids=input_ids)`` with the sum of the three embeddings built in place in a
    reused buffer (same additions in the same order, so the same numbers); the module allocates a
    fresh batch-sized tensor for each of its three lookups and two sums."""
    b, width = input_ids.shape
    words = embeddings.word_embeddings.weight
    positions = embeddings.position_ids[0, :width]
    summed = scratch(workspace, "embeddings", (b * width, words.shape[1]), words.dtype, words.device)
    torch.index_select(words, 0, input_ids.reshape(-1), out=summed)
    summed = summed.view(b, width, -1)
    summed += embeddings.token_type_embeddings(embeddings.token_type_ids[0, positions])
    summed += embeddings.position_embeddings(positions)
    return embeddings.LayerNorm(summed)


class _LayerWeights:
    """A layer's weights in one dtype, Q/K/V stacked.

    Built per batch (cheap next to the batch's forward pass) rather than cached across calls, so
    that weights changed in place between calls (training, ``load_state_dict``) are always seen.
    """

    def __init__(self, block: Any, dtype: torch.dtype, fold_scale: bool) -> None:
        att = block.attention
        q, k, v = att.self.query, att.self.key, att.self.value
        self.scale = float(att.self.scaling)
        wq, bq = q.weight, q.bias
        if fold_scale:
            # the softmax scale applied once to the weights instead of to every score
            wq, bq = wq * self.scale, bq * self.scale
        self.w_qkv = torch.cat([wq, k.weight, v.weight]).to(dtype).contiguous()
        self.b_qkv = torch.cat([bq, k.bias, v.bias]).to(dtype).contiguous()
        self.w_o, self.b_o = att.output.dense.weight.to(dtype), att.output.dense.bias.to(dtype)
        self.w_i, self.b_i = block.intermediate.dense.weight.to(dtype), block.intermediate.dense.bias.to(dtype)
        self.w_out, self.b_out = block.output.dense.weight.to(dtype), block.output.dense.bias.to(dtype)
        ln1, ln2 = att.output.LayerNorm, block.output.LayerNorm
        self.ln1 = (ln1.normalized_shape, ln1.weight.to(dtype), ln1.bias.to(dtype), ln1.eps)
        self.ln2 = (ln2.normalized_shape, ln2.weight.to(dtype), ln2.bias.to(dtype), ln2.eps)
        self.heads = att.self.num_attention_heads
        self.head_size = att.self.attention_head_size
        self.activation = _activation(block)


def right_padded_lengths(attention_mask: torch.Tensor | None, batch: int, width: int) -> list[int] | None:
    """Per-cell lengths when every mask row is ones then zeros (right padding), else None."""
    if attention_mask is None:
        return [width] * batch
    lengths = attention_mask.sum(dim=1)
    prefix = torch.arange(width, device=attention_mask.device)[None, :] < lengths[:, None]
    if not bool((prefix == attention_mask.bool()).all()):
        return None
    return [int(n) for n in lengths.tolist()]


def fast_layer_forward(block: Any, hidden: torch.Tensor, key_mask: torch.Tensor | None,
                       dtype: torch.dtype | None = None, workspace: dict | None = None,
                       lengths: list[int] | None = None) -> torch.Tensor:
    """One encoder layer's output for ``hidden`` (B, L, H), as ``block(hidden, key_mask)`` computes it.

    Args:
        key_mask: a (B, 1, 1, L) boolean key mask for SDPA (None when no padding).
        dtype: compute dtype (None: the hidden states' dtype).
        workspace: a dict kept across layers (and batches); the layer's scratch buffers live in it
            and are reused by the next layer instead of being allocated anew.
        lengths: the cells' lengths when the batch is padded on the right
            (:func:`right_padded_lengths`, computed once per batch); on CPU they select attention
            over each cell's own length: the blocked attention in bf16, SDPA per cell in fp32.
    """
    dtype = dtype or hidden.dtype
    if hidden.device.type != "cpu" or dtype not in (torch.bfloat16, torch.float32):
        lengths = None
    with torch.autocast(hidden.device.type, enabled=False):
        return _forward(block, hidden, key_mask, dtype, {} if workspace is None else workspace, lengths)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, workspace: dict, name: str) -> torch.Tensor:
    """``F.linear`` into a reused workspace buffer."""
    rows = x.reshape(-1, x.shape[-1])
    out = scratch(workspace, name, (rows.shape[0], weight.shape[0]), x.dtype, x.device)
    torch.addmm(bias, rows, weight.t(), out=out)
    return out.view(*x.shape[:-1], weight.shape[0])


def _forward(block: Any, hidden: torch.Tensor, key_mask: torch.Tensor | None, dtype: torch.dtype, ws: dict,
             lengths: list[int] | None) -> torch.Tensor:
    b, width, _ = hidden.shape
    blocked = lengths is not None and dtype == torch.bfloat16
    w = _LayerWeights(block, dtype, fold_scale=blocked)
    x = hidden.to(dtype)
    heads, size = w.heads, w.head_size
    qkv = _linear(x, w.w_qkv, w.b_qkv, ws, "qkv").view(b, width, 3, heads, size)
    if blocked:
        # (3, B, heads, L, size): each head's rows contiguous for the per-head matrix products
        heads_first = scratch(ws, "heads", (3, b, heads, width, size), dtype, x.device)
        heads_first.copy_(qkv.permute(2, 0, 3, 1, 4))
        q, k, v = heads_first
        ctx = blocked_attention(q, k, v, lengths, scratch(ws, "context", (b, width, heads * size), dtype, x.device))
    elif lengths is not None:
        # fp32 on CPU: SDPA per cell over its own length, with no mask to build and apply, and no
        # padded keys (5-10% faster than one masked call for the batch)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        ctx = scratch(ws, "context", (b, width, heads * size), dtype, x.device)
        for cell, n in enumerate(lengths):
            one = slice(cell, cell + 1)
            att = F.scaled_dot_product_attention(q[one, :, :n], k[one, :, :n], v[one, :, :n], scale=w.scale)
            # one strided copy (reshaping the transposed output first would copy twice)
            ctx[cell, :n].view(n, heads, size).copy_(att[0].transpose(0, 1))
            ctx[cell, n:] = 0
    else:
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=w.scale)
        ctx = ctx.transpose(1, 2).reshape(b, width, heads * size)
    att = _linear(ctx, w.w_o, w.b_o, ws, "attention")
    att += x
    att = F.layer_norm(att, *w.ln1)
    inner = _linear(att, w.w_i, w.b_i, ws, "inner")
    if w.activation == "relu":
        inner.relu_()
    else:
        inner = F.gelu(inner)
    out = _linear(inner, w.w_out, w.b_out, ws, "output")
    out += att
    return F.layer_norm(out, *w.ln2)


def packed_layer_forward(block: Any, hidden: torch.Tensor, packing: Packing, dtype: torch.dtype) -> torch.Tensor:
    """One encoder layer for packed tokens ``hidden`` (tokens, H) (see :mod:`._varlen`): the layer's
    arithmetic with its matrix products in ``dtype``. The residual stream (``hidden`` and the
    result) is fp32 when ``dtype`` is fp16, whose range a residual sum can exceed, else ``dtype``."""
    residual = torch.float32 if dtype == torch.float16 else dtype
    w = _LayerWeights(block, dtype, fold_scale=False)
    ln1 = (w.ln1[0], w.ln1[1].to(residual), w.ln1[2].to(residual), w.ln1[3])
    ln2 = (w.ln2[0], w.ln2[1].to(residual), w.ln2[2].to(residual), w.ln2[3])
    with torch.autocast(hidden.device.type, enabled=False):
        x = hidden.to(residual)
        qkv = F.linear(x.to(dtype), w.w_qkv, w.b_qkv).view(x.shape[0], 3, w.heads, w.head_size)
        ctx = varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], packing, w.scale).reshape(x.shape[0], -1)
        att = F.layer_norm(F.linear(ctx, w.w_o, w.b_o).to(residual) + x, *ln1)
        inner = F.linear(att.to(dtype), w.w_i, w.b_i)
        inner = inner.relu_() if w.activation == "relu" else F.gelu(inner)
        return F.layer_norm(F.linear(inner, w.w_out, w.b_out).to(residual) + att, *ln2)


# ---- the two other ways into a BERT layer: attention probabilities, and the first position only ----
def attention_probabilities(block: Any, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, heads, L, L) attention probabilities of ``block`` for ``hidden``: the eager formula
    ``softmax(Q K^T / sqrt(d) + mask)``, computed in fp32 and returned in the hidden states' dtype.
    ``mask`` is a (B, 1, 1, L) boolean key mask or an additive float mask (None: no padding)."""
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
    return torch.softmax(scores.float(), dim=-1).to(hidden.dtype)


def supports_first_position(block: Any) -> bool:
    """Whether ``block`` is a BERT layer whose output at position 0 :func:`first_position_forward` computes."""
    try:
        att = block.attention.self
        parts = (att.query, att.key, att.value, block.attention.output, block.intermediate, block.output,
                 att.num_attention_heads, att.attention_head_size)
    except AttributeError:
        return False
    return all(p is not None for p in parts)


def first_position_forward(block: Any, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                           padded: bool | None = None) -> torch.Tensor:
    """(B, H) output of ``block`` at position 0 (``<cls>``) only: the query of position 0 attends to
    every position's keys and values, and the rest of the layer runs for that one position.
    ``padded``: whether any cell is shorter than the batch, when the caller knows (None: read the
    mask, a device→host synchronisation on GPUs)."""
    att = block.attention.self
    heads, d = int(att.num_attention_heads), int(att.attention_head_size)
    b, length, _ = hidden.shape
    q = att.query(hidden[:, :1]).view(b, 1, heads, d).transpose(1, 2)
    k = att.key(hidden).view(b, length, heads, d).transpose(1, 2)
    v = att.value(hidden).view(b, length, heads, d).transpose(1, 2)
    key_mask = None
    if padded is None:
        padded = attention_mask is not None and not bool(attention_mask.all())
    if padded and attention_mask is not None:
        key_mask = attention_mask.bool()[:, None, None, :]
    scale = getattr(att, "scaling", d ** -0.5)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
    ctx = ctx.transpose(1, 2).reshape(b, 1, heads * d)
    a = block.attention.output(ctx, hidden[:, :1])
    return block.output(block.intermediate(a), a)[:, 0]
