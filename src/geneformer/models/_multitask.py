"""The multi-task cell classifier (``MTLClassifier``'s model, SPEC 9.3) as a ``PreTrainedModel``.

A BERT encoder **loaded from the pretrained checkpoint** (the reference builds a randomly initialised
one), cells pooled by attention pooling that **ignores padding** (the reference lets padding take
part) or by the first position, dropout, and one Xavier-initialised ``Linear`` head per task; the
loss is the task-weighted sum of cross-entropies.

The head is described by :class:`MultiTaskConfig` (classes per task, pooling, dropout, task
weights), so ``save_pretrained``/``from_pretrained`` round-trip the whole model; the folder's
``bert.*`` weights also open as a ``BertForMaskedLM`` for embeddings and perturbation. Folders
written before (a plain BERT ``config.json`` plus ``hyperparameters.json``) and the reference's
(``pytorch_model.bin``) still load: the head fields then come from ``hyperparameters.json`` or the
weights' shapes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers import BertConfig, BertModel, PretrainedConfig

from .._utils import ModelLoadError, atomic_folder, write_json
from ._freeze import freeze_encoder_layers
from ._heads import EncoderWithHead, head_config, load_encoder

HYPERPARAMETERS_FILE = "hyperparameters.json"


class MultiTaskConfig(BertConfig):
    """``BertConfig`` plus the multi-task head: ``num_labels_list`` (classes per task),
    ``use_attention_pooling``, ``dropout_rate``, ``task_weights`` (the loss weights in use) and
    ``use_task_weights``."""

    model_type = "bert"  # the folder stays a BERT checkpoint for every other loader

    def __init__(self, num_labels_list: Sequence[int] | None = None, use_attention_pooling: bool = False,
                 dropout_rate: float = 0.1, task_weights: Sequence[float] | None = None,
                 use_task_weights: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_labels_list = None if num_labels_list is None else [int(n) for n in num_labels_list]
        self.use_attention_pooling = bool(use_attention_pooling)
        self.dropout_rate = float(dropout_rate)
        self.task_weights = None if task_weights is None else [float(w) for w in task_weights]
        self.use_task_weights = bool(use_task_weights)


def _task_weights(num_labels_list: Sequence[int], use_task_weights: bool, task_weights: Sequence[float] | None
                  ) -> list[float]:
    weights = list(task_weights) if (use_task_weights and task_weights is not None) else [1.0] * len(num_labels_list)
    if len(weights) != len(num_labels_list):
        raise ValueError(f"{len(weights)} task weights for {len(num_labels_list)} tasks.")
    return [float(w) for w in weights]


# (spelled torch.nn.Module: transformers takes a module defining "class *Attention*(nn.Module)" for
# one with its own attention layers and then refuses set_attn_implementation on its models)
class AttentionPool(torch.nn.Module):
    """Softmax-weighted sum over positions, scores ``h · w``; padded positions get zero weight."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.attention_weights = nn.Parameter(torch.empty(hidden_size, 1))
        nn.init.xavier_uniform_(self.attention_weights)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = hidden @ self.attention_weights  # (B, L, 1)
        if attention_mask is not None:
            keep = attention_mask.bool().unsqueeze(-1)
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1)
        return (weights * hidden).sum(dim=1)


class GeneformerMultiTask(EncoderWithHead):
    """BERT encoder + (attention or first-position) pooling + dropout + one linear head per task.

    Built as before from ``(pretrained_path, num_labels_list, dropout_rate, use_task_weights,
    task_weights, max_layers_to_freeze, use_attention_pooling)`` (the encoder loaded through
    ``models.load_model``: zoo names, folders, hub ids; ``vocab`` checks its vocabulary size), around
    a loaded ``encoder=``, from a ``BertConfig`` (``config=``, an untrained model), or from a
    :class:`MultiTaskConfig` (what ``from_pretrained`` does).

    ``forward`` returns ``(total_loss, logits_list, per_task_losses)``; the losses are None without labels.
    """

    config_class = MultiTaskConfig

    def __init__(
        self,
        pretrained_path: str | os.PathLike | PretrainedConfig | None = None,
        num_labels_list: Sequence[int] | None = None,
        dropout_rate: float = 0.1,
        use_task_weights: bool = False,
        task_weights: Sequence[float] | None = None,
        max_layers_to_freeze: int = 0,
        use_attention_pooling: bool = False,
        *,
        config: PretrainedConfig | None = None,
        encoder: BertModel | None = None,
        vocab: Any = None,
    ) -> None:
        if isinstance(pretrained_path, PretrainedConfig):  # cls(config), as from_pretrained calls it
            config, pretrained_path = pretrained_path, None
        if encoder is None and pretrained_path is not None:
            encoder = load_encoder(pretrained_path, vocab)
        if num_labels_list is not None:
            base = encoder.config if encoder is not None else config
            if base is None:
                raise ValueError("GeneformerMultiTask needs pretrained_path (or a BertConfig for an untrained model).")
            config = head_config(MultiTaskConfig, base, num_labels_list=num_labels_list,
                                 use_attention_pooling=use_attention_pooling, dropout_rate=dropout_rate,
                                 use_task_weights=use_task_weights,
                                 task_weights=_task_weights(num_labels_list, use_task_weights, task_weights))
        elif getattr(config, "num_labels_list", None) is None:
            raise ValueError("GeneformerMultiTask needs num_labels_list (the number of classes of each task).")
        if any(n < 2 for n in config.num_labels_list):
            raise ValueError(f"Every task needs at least 2 classes, got {config.num_labels_list}.")
        if config.task_weights is None:
            config.task_weights = [1.0] * len(config.num_labels_list)
        super().__init__(config)
        hidden = config.hidden_size
        self.bert = None if encoder is not None else BertModel(config, add_pooling_layer=False)
        self.attention_pool = AttentionPool(hidden) if config.use_attention_pooling else None
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classification_heads = nn.ModuleList(nn.Linear(hidden, n) for n in config.num_labels_list)
        self.post_init()
        if encoder is not None:
            self._attach_encoder(encoder)
        self.max_layers_to_freeze = freeze_encoder_layers(self, max_layers_to_freeze)
        self.hyperparameters: dict = {}

    def _init_weights(self, module: nn.Module) -> None:
        # the reference's head initialisation: Xavier-uniform weights, zero biases
        if isinstance(module, AttentionPool):
            nn.init.xavier_uniform_(module.attention_weights)
        elif any(module is head for head in self.classification_heads):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    # ---- the head as before ------------------------------------------------------------------------
    @property
    def num_labels_list(self) -> list[int]:
        return list(self.config.num_labels_list)

    @property
    def use_attention_pooling(self) -> bool:
        return self.attention_pool is not None

    @property
    def use_task_weights(self) -> bool:
        return bool(self.config.use_task_weights)

    @property
    def task_weights(self) -> torch.Tensor:
        """The loss weight of each task (1 each without ``use_task_weights``)."""
        return torch.tensor(self.config.task_weights, dtype=torch.float32)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.attention_pool is not None:
            return self.attention_pool(hidden, attention_mask)
        return hidden[:, 0]

    def task_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Each task's logits from the encoder's last hidden states."""
        pooled = self.dropout(self.pool(hidden, attention_mask))
        return [head(pooled) for head in self.classification_heads]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | Sequence[torch.Tensor] | None = None):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.task_logits(hidden, attention_mask)
        if labels is None:
            return None, logits, None
        if isinstance(labels, torch.Tensor):
            labels = [labels[:, t] for t in range(labels.shape[1])]
        losses = [nn.functional.cross_entropy(lg, y) for lg, y in zip(logits, labels)]
        w = self.task_weights.to(logits[0].device)
        total = sum(w[t] * losses[t] for t in range(len(losses)))
        return total, logits, losses

    # ---- persistence -------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, hyperparameters: Mapping[str, Any]) -> Path:
        """``save_pretrained`` (``model.safetensors`` with ``bert.*``, ``attention_pool.*``,
        ``classification_heads.*``; ``config.json`` describing the head) plus ``hyperparameters.json``,
        the whole folder written atomically."""
        hp = dict(hyperparameters)
        hp.update(num_labels_list=self.num_labels_list, use_attention_pooling=self.use_attention_pooling,
                  task_weights=list(self.config.task_weights), dropout_rate=float(self.dropout.p))
        with atomic_folder(folder) as tmp:
            self.save_pretrained(str(tmp))
            write_json(tmp / HYPERPARAMETERS_FILE, hp)
        self.hyperparameters = hp
        return Path(folder)

    @classmethod
    def complete_config(cls, config: PretrainedConfig, source: str, **kwargs: Any) -> PretrainedConfig:
        """Head fields of a folder written before the head was in ``config.json`` (or by the reference):
        from ``hyperparameters.json``, else from the weights' shapes."""
        if getattr(config, "num_labels_list", None) is not None:
            return config
        folder = Path(source) / (kwargs.get("subfolder") or "")
        hp = _read_hyperparameters(folder)
        names = _weight_shapes(folder)
        n_tasks = sum(1 for k in names if k.startswith("classification_heads.") and k.endswith(".weight"))
        num_labels = hp.get("num_labels_list") or [names[f"classification_heads.{i}.weight"][0] for i in range(n_tasks)]
        if not num_labels:
            raise ModelLoadError(f"{folder} holds no multi-task heads; it is not a saved GeneformerMultiTask folder.")
        config.num_labels_list = [int(n) for n in num_labels]
        config.use_attention_pooling = bool(hp.get("use_attention_pooling",
                                                   any(k.startswith("attention_pool.") for k in names)))
        config.dropout_rate = float(hp.get("dropout_rate", 0.1))
        config.task_weights = [float(w) for w in (hp.get("task_weights") or [1.0] * len(num_labels))]
        config.use_task_weights = True
        return config

    @classmethod
    def load(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu", *, vocab: Any = None
             ) -> GeneformerMultiTask:
        """Rebuild a saved model exactly (pooling, dropout, heads) from its folder, in eval mode."""
        model = super().load(folder, vocab=vocab, device=map_location)
        model.hyperparameters = _read_hyperparameters(Path(folder))
        return model


def _read_hyperparameters(folder: Path) -> dict:
    path = folder / HYPERPARAMETERS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _weight_shapes(folder: Path) -> dict[str, tuple]:
    """Parameter name -> shape of the weights in a model folder (without loading safetensors data)."""
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
            # (safe_open is not iterable)
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    if (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    raise ModelLoadError(f"{folder} has neither model.safetensors nor pytorch_model.bin.")


__all__ = ["AttentionPool", "GeneformerMultiTask", "MultiTaskConfig"]
