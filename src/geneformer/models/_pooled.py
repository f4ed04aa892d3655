"""A cell classifier pooled by the mean of its genes' states or by its ``<cls>`` state.

The reference's cell classifier (``BertForSequenceClassification``) classifies the BERT pooler's
output: a dense + tanh layer over the first position. On Geneformer's V1 cells the first position
is simply the top-ranked gene, and the README's fine-tuning benchmark shows the mean of the gene
states far ahead. :class:`PooledSequenceClassifier` keeps the reference class's weights and names
(``bert.*``, ``classifier.*``; no pooler) and only changes the pooling, recorded in the
configuration as ``cell_pooling`` so that :func:`geneformer.models.load_model` reopens a saved
folder with this class (``cell_pooling`` "first" or absent: the reference class).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import BertForSequenceClassification, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = ["PooledSequenceClassifier", "cell_pooling_of"]


def cell_pooling_of(config: Any) -> str:
    """The pooling a cell classifier configuration records ("first" when it records none)."""
    return getattr(config, "cell_pooling", None) or "first"


class PooledSequenceClassifier(BertForSequenceClassification):
    """``BertForSequenceClassification`` pooled by ``config.cell_pooling``: "mean" (the states of the
    positions ``attention_mask`` marks) or "cls" (the first position's state, without the pooler's
    dense + tanh)."""

    def __init__(self, config: Any, cell_pooling: str | None = None) -> None:
        if cell_pooling is not None:
            config.cell_pooling = cell_pooling
        if cell_pooling_of(config) not in ("mean", "cls"):
            raise ValueError(f"PooledSequenceClassifier pools by 'mean' or 'cls', got {cell_pooling_of(config)!r}.")
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state
        if self.config.cell_pooling == "cls":
            cells = hidden[:, 0]
        else:
            mask = (torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None
                    else attention_mask.to(hidden.dtype))
            cells = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        logits = self.classifier(self.dropout(cells))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
