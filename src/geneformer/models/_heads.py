"""Task heads on a Geneformer encoder, as ``transformers`` models (``PreTrainedModel`` subclasses).

:class:`EncoderWithHead` is what every head shares: the BERT encoder sits under ``bert`` (so its
weights are saved as ``bert.*`` and a saved folder also opens as a ``BertForMaskedLM`` encoder), the
head is described by fields of the configuration (a ``BertConfig`` subclass whose ``model_type`` stays
"bert"), and ``save_pretrained`` / ``from_pretrained`` round-trip both. A model is built either from
its configuration (``from_pretrained``, ``from_config``) or around an encoder that is already loaded
(:func:`load_encoder`, the package's one loader: zoo names, folders, hub ids, vocabulary check).

:class:`GeneformerCellModel` is the model-card fine-tuning model: the cell representation at
``emb_layer`` ("cell": mean of the gene states, "cls": the ``<cls>`` state) followed by a
classification (dropout + linear), regression (linear) or custom head. The multi-task model is in
:mod:`._multitask`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel, PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from .._constants import CELL_EMB_MODES, CELL_HEAD_KINDS, CellEmbMode, CellHeadKind
from .._utils import ModelLoadError, OptionError, check_choice, check_emb_layer, quiet_transformers, resolve_device
from ._loading import check_vocab_matches, layer_index, load_model, resolve_model_source


def load_encoder(name_or_path: str | os.PathLike, vocab: Any = None) -> BertModel:
    """The BERT encoder (``bert.*`` weights) of any Geneformer checkpoint, on the CPU, in train mode."""
    return load_model(name_or_path, kind="pretrained", vocab=vocab, device="cpu", eval_mode=False).bert


def head_config(config_class: type[BertConfig], encoder_config: PretrainedConfig, **head: Any) -> BertConfig:
    """``config_class`` with the encoder's architecture (and attention implementation) plus head fields."""
    fields = {k: v for k, v in encoder_config.to_dict().items() if k not in ("architectures", "transformers_version")}
    config = config_class(**{**fields, **head})  # (an encoder taken from another head model has head fields too)
    attn = getattr(encoder_config, "_attn_implementation", None)
    if attn:
        config._attn_implementation = attn
    return config


class EncoderWithHead(BertPreTrainedModel):
    """Base of the head models: an encoder under ``bert``, a head described by the configuration."""

    def _attach_encoder(self, encoder: nn.Module) -> None:
        """Use an already loaded encoder (after ``post_init``, so that its weights stay as loaded).

        Every module of the encoder is pointed at this model's configuration, so that one
        configuration describes the whole model (attention implementation included)."""
        old = encoder.config
        for module in encoder.modules():
            if getattr(module, "config", None) is old:
                module.config = self.config
        self.bert = encoder

    @classmethod
    def complete_config(cls, config: PretrainedConfig, source: str, **kwargs: Any) -> PretrainedConfig:
        """Fill head fields that an older folder's ``config.json`` lacks (none by default)."""
        return config

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, *, vocab: Any = None, device: Any = None,
             **model_kwargs: Any) -> EncoderWithHead:
        """Load a saved model from a folder or hub id (eval mode), refusing weights that do not fit.

        ``vocab`` is checked against the model's ``vocab_size`` with the loader's message."""
        source, kwargs, _ = resolve_model_source(name_or_path)
        try:
            config = cls.complete_config(cls.config_class.from_pretrained(source, **kwargs), source, **kwargs)
            with quiet_transformers():
                model, info = cls.from_pretrained(source, config=config, output_loading_info=True,
                                                  attn_implementation="sdpa", **kwargs, **model_kwargs)
        except OSError as exc:
            raise ModelLoadError(f"Could not load {cls.__name__} from {name_or_path!r}: {exc}") from exc
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ModelLoadError(f"{name_or_path}: the weights do not fit {cls.__name__} (missing {missing[:5]}).")
        check_vocab_matches(model, vocab, source=f"Model {name_or_path}")
        return model.to(resolve_device(device)).eval()


# ------------------------------------------------------------------------------------------------
# The model-card fine-tuning model
# ------------------------------------------------------------------------------------------------
class CellModelConfig(BertConfig):
    """``BertConfig`` plus the cell head: ``head_kind`` ("classification", "regression" or "custom"),
    ``output_size``, ``head_dropout`` and the pooling (``emb_layer``, ``emb_mode``)."""

    model_type = "bert"  # the folder stays a BERT checkpoint for every other loader

    def __init__(self, head_kind: str = "classification", output_size: int | None = None, head_dropout: float = 0.1,
                 emb_layer: int = -1, emb_mode: str = "cell", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_kind = head_kind
        self.output_size = None if output_size is None else int(output_size)
        self.head_dropout = float(head_dropout)
        self.emb_layer = int(emb_layer)
        self.emb_mode = emb_mode


def _check_head_kind(kind: Any) -> None:
    if kind not in CELL_HEAD_KINDS:
        raise OptionError(f"fine_tuning_head must be 'classification', 'regression' or an nn.Module, got {kind!r}.")


def build_head(kind: CellHeadKind, hidden: int, output_size: int | None, dropout: float = 0.1) -> nn.Module:
    """The built-in heads: dropout + linear ("classification"), linear ("regression")."""
    _check_head_kind(kind)
    if output_size is None or int(output_size) < 1:
        raise ValueError(f"A {kind} head needs output_size >= 1 (number of classes / targets), got {output_size!r}.")
    if kind == "classification":
        if int(output_size) < 2:
            raise ValueError("A classification head needs output_size >= 2 classes.")
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, int(output_size)))
    return nn.Linear(hidden, int(output_size))


def head_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, loss_function: nn.Module | None = None
              ) -> torch.Tensor:
    """``loss_function`` (default: MSE for regression, else cross-entropy) of a cell head's outputs;
    regression targets take the outputs' dtype, and one target per cell fits a one-column head."""
    if kind == "regression":
        target = target.to(logits.dtype)
        if logits.shape[-1] == 1 and target.dim() == 1:
            target = target[:, None]
    fn = loss_function or (nn.MSELoss() if kind == "regression" else nn.CrossEntropyLoss())
    return fn(logits, target.to(logits.device))


class GeneformerCellModel(EncoderWithHead):
    """Encoder + cell pooling at ``emb_layer`` + a head (the model-card fine-tuning model).

    ``forward(input_ids, attention_mask, gene_mask=None, labels=None)``: ``gene_mask`` (B, L) marks
    the positions the "cell" mode averages (the caller knows which cells carry ``<cls>``/``<eos>``;
    default: every real position). Returns a ``SequenceClassifierOutput`` (``loss`` with ``labels``).
    In training the encoder runs through transformers' own forward (so that DDP, DeepSpeed and
    gradient checkpointing see a standard module); the package's prediction loop
    (``inference.iter_forward``) stops at ``emb_layer``.
    """

    config_class = CellModelConfig

    def __init__(self, config: CellModelConfig, head: nn.Module | None = None, *, encoder: nn.Module | None = None
                 ) -> None:
        super().__init__(config)
        check_choice("emb_mode", config.emb_mode, CELL_EMB_MODES)
        check_emb_layer(config.emb_layer, config.num_hidden_layers)
        self.bert = None if encoder is not None else BertModel(config, add_pooling_layer=False)
        if head is not None:
            config.head_kind = "custom"
        elif config.head_kind == "custom":
            raise ValueError("This model has a custom head; pass head=<the same nn.Module> to rebuild it.")
        self.head = head if head is not None else build_head(config.head_kind, config.hidden_size,
                                                             config.output_size, config.head_dropout)
        self.post_init()
        if encoder is not None:
            self._attach_encoder(encoder)

    @classmethod
    def for_encoder(cls, encoder: nn.Module, head: CellHeadKind | nn.Module = "classification",
                    output_size: int | None = None, *, emb_layer: int = -1, emb_mode: CellEmbMode = "cell",
                    head_dropout: float = 0.1
                    ) -> GeneformerCellModel:
        """A cell model around a loaded encoder (any BERT model; its ``base_model`` is used, shared)."""
        base = getattr(encoder, "base_model", encoder)
        custom = isinstance(head, nn.Module)
        if not custom:
            _check_head_kind(head)
        config = head_config(cls.config_class, base.config, head_kind="custom" if custom else head,
                             output_size=output_size, head_dropout=head_dropout, emb_layer=emb_layer, emb_mode=emb_mode)
        return cls(config, head if custom else None, encoder=base).to(next(base.parameters()).device)

    def _init_weights(self, module: nn.Module) -> None:
        # the head keeps its modules' own initialisation (a custom head may come pre-trained)
        if any(module is m for m in self.head.modules()):
            return
        super()._init_weights(module)

    @property
    def layer(self) -> int:
        """Hidden-state index of ``emb_layer`` (0 = embeddings, n_layers = the last layer)."""
        return layer_index(self.config, self.config.emb_layer)

    def set_pooling(self, emb_layer: int, emb_mode: CellEmbMode) -> None:
        """Change where and how cells are pooled (the model-card configuration's ``emb_layer``/``emb_mode``)."""
        check_choice("emb_mode", emb_mode, CELL_EMB_MODES)
        self.config.emb_layer = check_emb_layer(emb_layer, self.config.num_hidden_layers)
        self.config.emb_mode = emb_mode

    def pool(self, hidden: torch.Tensor, gene_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, H) cells: the first position ("cls") or the mean over ``gene_mask`` ("cell")."""
        if self.config.emb_mode == "cls":
            return hidden[:, 0, :]
        if gene_mask is None:
            return hidden.mean(1)
        mask = gene_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                gene_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        last = self.layer == self.config.num_hidden_layers
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=not last)
        hidden = out.last_hidden_state if last else out.hidden_states[self.layer]
        logits = self.head(self.pool(hidden, attention_mask if gene_mask is None else gene_mask))
        loss = None if labels is None else head_loss(logits, labels, self.config.head_kind)
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = ["CellModelConfig", "EncoderWithHead", "GeneformerCellModel", "build_head", "head_config", "head_loss",
           "load_encoder"]
