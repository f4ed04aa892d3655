"""TODO docstring."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..models import (
    fast_embeddings,
    fast_layer_forward,
    right_padded_lengths,
    supports_fast_embeddings,
    supports_fast_layer,
)


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


