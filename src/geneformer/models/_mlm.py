"""Masked-gene language model whose prediction head runs only where it is needed.

The vocabulary projection of the MLM head is the most expensive single matrix product of a small
Geneformer (hidden x ~20-25k genes at *every* position). With 15% masking, computing it only at the
masked positions saves ~85% of that work, and ~100% at padding. Parameters and state-dict keys are
exactly those of ``BertForMaskedLM``; checkpoints are saved as, and load as, plain BERT.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM
from transformers.modeling_outputs import MaskedLMOutput

from .._constants import IGNORE_INDEX
from .._utils import write_text


class GeneformerForMaskedLM(BertForMaskedLM):
    """``BertForMaskedLM`` with a sparse head.

    With ``labels``: the head (transform + decoder) runs only at positions whose label is not -100;
    ``logits`` then has shape ``(n_masked, vocab_size)``, rows in row-major order of
    ``labels != -100``, and ``loss`` equals the standard head's mean cross-entropy (or, given
    ``num_items_in_batch`` by the ``Trainer``, the summed cross-entropy divided by it).

    Without ``labels``: logits of shape ``(batch, length, vocab_size)``, computed only where
    ``attention_mask`` is 1 (zeros at padding).
    """

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> MaskedLMOutput:
        kwargs.pop("return_dict", None)
        # the Trainer passes the number of masked genes over all micro-batches and devices of a step,
        # so that every masked gene weighs the same in the step's loss
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        extra = {}
        if output_hidden_states is not None:
            extra["output_hidden_states"] = output_hidden_states
        if output_attentions is not None:
            extra["output_attentions"] = output_attentions
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **extra,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        loss = None
        if labels is not None:
            selected = labels != IGNORE_INDEX
            logits = self.cls(hidden[selected])
            if logits.shape[0] and num_items_in_batch is None:
                loss = F.cross_entropy(logits.float(), labels[selected])
            elif logits.shape[0]:
                loss = F.cross_entropy(logits.float(), labels[selected], reduction="sum") / num_items_in_batch
            else:
                # nothing masked in this batch: a zero loss still touching every head parameter, so
                # that distributed gradient reduction sees the same parameters on every process
                loss = logits.sum() * 0.0 + hidden.sum() * 0.0
        elif attention_mask is not None and not bool(attention_mask.all()):
            real = attention_mask.bool()
            logits = hidden.new_zeros(hidden.shape[:-1] + (self.config.vocab_size,))
            logits[real] = self.cls(hidden[real]).to(logits.dtype)
        else:
            logits = self.cls(hidden)
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Save as a plain ``BertForMaskedLM`` checkpoint (``architectures`` says so in config.json)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        cfg_path = Path(save_directory) / "config.json"
        if cfg_path.is_file():
            data = json.loads(cfg_path.read_text())
            if data.get("architectures") != ["BertForMaskedLM"]:
                data["architectures"] = ["BertForMaskedLM"]
                write_text(cfg_path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return result


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) predictions at masked positions, for sparse or full logits."""
    selected = labels != IGNORE_INDEX
    if logits.dim() == 3:
        logits = logits[selected]
    preds = logits.argmax(dim=-1)
    return int((preds == labels[selected]).sum()), int(selected.sum())
