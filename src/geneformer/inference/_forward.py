"""One batch through a model: hidden states at a layer (running no further layers), the first
position's state, or the full model's head outputs.

Plain BERT embeddings and layers run the inference form of ``models._fast_encoder`` (the module's
own arithmetic, faster on CPU); any other layer (LoRA-wrapped, quantized, ...) runs its own forward,
and models that are not BERT-shaped run their whole forward. On GPUs a batch of plain layers runs
packed (``models._varlen``: the cells' own tokens only, attention per cell by the flash /
memory-efficient kernels). The forward loop passes the cells' lengths from the host, so that no
step here waits for the device.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..models import (
    attention_probabilities,
    fast_embeddings,
    fast_layer_forward,
    first_position_forward,
    make_packing,
    n_layers,
    pack,
    packed_layer_forward,
    right_padded_lengths,
    supports_fast_embeddings,
    supports_fast_layer,
    supports_first_position,
    unpack,
)

#: Devices whose plain BERT layers run packed (tests add "cpu" to check the path against the others).
PACKED_DEVICES = {"cuda"}


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
    lengths: Sequence[int] | np.ndarray | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Hidden states after ``layer`` encoder layers (0 = embedding output), running no further layers.

    ``attention_layers`` (1-based, <= layer) asks for those layers' attention probabilities.
    ``workspace``: a dict to keep the layers' scratch buffers in from one call to the next (see
    ``models._fast_encoder``). ``lengths``: the cells' lengths on the host when the batch is right
    padded (None: read from ``attention_mask``). Returns ``(hidden, {layer: (B, heads, L, L)})``;
    padded positions of a packed batch hold zeros.
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
    blocks = base.encoder.layer[: max((layer, *attention_layers))]
    if (hidden.device.type in PACKED_DEVICES and not attention_layers
            and all(supports_fast_layer(block, base.config) for block in blocks)):
        if lengths is None:
            lengths = right_padded_lengths(attention_mask, *input_ids.shape)
        if lengths is not None:
            return _packed_forward(blocks, hidden, lengths, _fast_dtype(hidden)), {}
    mask = None
    if lengths is not None:  # (known on the host: no wait for the device)
        padded = attention_mask is not None and bool(np.min(lengths) < input_ids.shape[1])
    else:
        padded = attention_mask is not None and not bool(attention_mask.all())
    if padded:
        mask = _key_padding_mask(base.config, hidden, attention_mask)
    atts: dict[int, torch.Tensor] = {}
    kept = hidden
    fast_dtype = _fast_dtype(hidden)
    fast_mask = None if mask is None else attention_mask.bool()[:, None, None, :]
    fast_lengths = None
    if hidden.device.type == "cpu":  # (fast_layer_forward decides, by dtype, whether to use them)
        fast_lengths = right_padded_lengths(None if mask is None else attention_mask, *input_ids.shape)
    for i, block in enumerate(blocks, start=1):
        if i in attention_layers:
            atts[i] = attention_probabilities(block, hidden, mask)
            hidden = _module_forward(block, hidden, mask)
        elif fast_dtype != torch.float16 and supports_fast_layer(block, base.config):
            # (fp16 stays with the module under autocast, whose residual stream is fp32: a pure fp16
            # residual stream could overflow; bf16 has fp32's range)
            hidden = fast_layer_forward(block, hidden, fast_mask, fast_dtype, workspace, fast_lengths)
        else:
            hidden = _module_forward(block, hidden, mask)
        if i == layer:
            kept = hidden
    return kept, atts


def forward_first_position(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, layer: int,
                           *, workspace: dict | None = None,
                           lengths: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
    """(B, H) hidden state of position 0 (``<cls>``) after ``layer`` encoder layers.

    The last layer is evaluated for the query at position 0 only (keys and values still come from
    every position), which saves that layer's work for all other positions. ``lengths`` as for
    :func:`forward_hidden`.
    """
    base = _base_model(model)
    blocks = getattr(getattr(base, "encoder", None), "layer", None)
    if layer < 1 or blocks is None or layer > len(blocks) or not supports_first_position(blocks[layer - 1]):
        hidden, _ = forward_hidden(model, input_ids, attention_mask, layer, workspace=workspace, lengths=lengths)
        return hidden[:, 0]
    hidden, _ = forward_hidden(model, input_ids, attention_mask, layer - 1, workspace=workspace, lengths=lengths)
    padded = None if lengths is None else bool(np.min(lengths) < input_ids.shape[1])
    return first_position_forward(blocks[layer - 1], hidden, attention_mask, padded)


def forward_outputs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    *, workspace: dict | None = None, lengths: Sequence[int] | np.ndarray | None = None) -> Any:
    """The full model's outputs (``.logits`` for classifiers). Plain BERT cell and gene classifiers
    run their encoder through :func:`forward_hidden` (and so the fast layers) and then their head;
    any other model (PEFT-wrapped, custom heads) runs its own forward."""
    from torch import nn
    from transformers import BertForSequenceClassification, BertForTokenClassification
    from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

    kind = type(model)
    plain = kind in (BertForSequenceClassification, BertForTokenClassification) and type(model.classifier) is nn.Linear
    if not plain or (kind is BertForSequenceClassification and model.bert.pooler is None):
        return model(input_ids=input_ids, attention_mask=attention_mask)
    hidden, _ = forward_hidden(model, input_ids, attention_mask, n_layers(model), workspace=workspace,
                               lengths=lengths)
    if kind is BertForTokenClassification:
        return TokenClassifierOutput(logits=model.classifier(model.dropout(hidden)))
    return SequenceClassifierOutput(logits=model.classifier(model.dropout(model.bert.pooler(hidden))))


def _packed_forward(blocks: Sequence[Any], hidden: torch.Tensor, lengths: Sequence[int] | np.ndarray,
                    dtype: torch.dtype) -> torch.Tensor:
    """The layers on the cells' own tokens (packed once before the first layer, unpacked after the
    last); the result is in the compute dtype, as the CPU fast layers return it."""
    packing = make_packing(lengths, hidden.shape[1], hidden.device)
    x = pack(hidden, packing)
    for block in blocks:
        x = packed_layer_forward(block, x, packing, dtype)
    return unpack(x.to(dtype), packing)


def _module_forward(block: Any, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = block(hidden, mask)
    return out[0] if isinstance(out, tuple) else out


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
