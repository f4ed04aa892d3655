"""TODO docstring."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
class AttentionPool(nn.Module):
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


class GeneformerMultiTask(nn.Module):
    """BERT encoder + (attention or first-position) pooling + dropout + one linear head per task.

    ``forward`` returns ``(total_loss, logits_list, per_task_losses)``; the losses are None without labels.
    """

    def __init__(
        self,
        pretrained_path: str | os.PathLike | None,
        num_labels_list: Sequence[int],
        dropout_rate: float = 0.1,
        use_task_weights: bool = False,
        task_weights: Sequence[float] | None = None,
        max_layers_to_freeze: int = 0,
        use_attention_pooling: bool = False,
        *,
        config: Any = None,
    ) -> None:
        super().__init__()
        from transformers import BertModel

        if config is None:
            if pretrained_path is None:
                raise ValueError("GeneformerMultiTask needs pretrained_path (or a BertConfig for an untrained model).")
            self.bert = BertModel.from_pretrained(str(pretrained_path), add_pooling_layer=False,
                                                  attn_implementation="sdpa")
        else:
            self.bert = BertModel(config, add_pooling_layer=False)
        self.num_labels_list = [int(n) for n in num_labels_list]
        if any(n < 2 for n in self.num_labels_list):
            raise ValueError(f"Every task needs at least 2 classes, got {self.num_labels_list}.")
        hidden = self.bert.config.hidden_size
        self.use_attention_pooling = bool(use_attention_pooling)
        self.attention_pool = AttentionPool(hidden) if self.use_attention_pooling else None
        self.dropout = nn.Dropout(float(dropout_rate))
        self.classification_heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.num_labels_list)
        for head in self.classification_heads:
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        self.use_task_weights = bool(use_task_weights)
        use = use_task_weights and task_weights is not None
        weights = list(task_weights) if use else [1.0] * len(num_labels_list)
        if len(weights) != len(self.num_labels_list):
            raise ValueError(f"{len(weights)} task weights for {len(self.num_labels_list)} tasks.")
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.max_layers_to_freeze = int(max_layers_to_freeze or 0)
        self._freeze(self.max_layers_to_freeze)

    def _freeze(self, n: int) -> None:
        layers = self.bert.encoder.layer
        if n > len(layers):
            raise ValueError(f"max_layers_to_freeze={n} but the encoder has {len(layers)} layers.")
        for layer in layers[:n]:
            for p in layer.parameters():
                p.requires_grad = False

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.attention_pool is not None:
            return self.attention_pool(hidden, attention_mask)
        return hidden[:, 0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | Sequence[torch.Tensor] | None = None):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.dropout(self.pool(hidden, attention_mask))
        logits = [head(pooled) for head in self.classification_heads]
        if labels is None:
            return None, logits, None
        if isinstance(labels, torch.Tensor):
            labels = [labels[:, t] for t in range(labels.shape[1])]
        losses = [nn.functional.cross_entropy(lg, y) for lg, y in zip(logits, labels)]
        w = self.task_weights.to(logits[0].device)
        total = sum(w[t] * losses[t] for t in range(len(losses)))
        return total, logits, losses

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, hyperparameters: Mapping[str, Any]) -> Path:
        """Write ``model.safetensors`` (``bert.*``, ``attention_pool.*``, ``classification_heads.*``),
        ``config.json`` (the BERT config) and ``hyperparameters.json``, atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = self.bert.config
        cfg.architectures = ["BertForMaskedLM"]  # so that the folder also opens as the encoder
        cfg.to_json_file(str(tmp / "config.json"))
        hp = dict(hyperparameters)
        hp.update(num_labels_list=self.num_labels_list, use_attention_pooling=self.use_attention_pooling,
                  task_weights=self.task_weights.tolist(), dropout_rate=float(self.dropout.p))
        (tmp / "hyperparameters.json").write_text(json.dumps(hp, indent=2, default=_json_default))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> "GeneformerMultiTask":
        """Rebuild a saved model exactly (pooling, dropout, heads) from its folder."""
        from transformers import BertConfig

        folder = Path(folder)
        for f in ("config.json", "hyperparameters.json"):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder} has no {f}; it is not a saved GeneformerMultiTask folder.")
        hp = json.loads((folder / "hyperparameters.json").read_text())
        config = BertConfig.from_pretrained(str(folder))
        config._attn_implementation = "sdpa"
        state = _load_state(folder, map_location)
        num_labels = hp.get("num_labels_list") or [
            state[f"classification_heads.{i}.weight"].shape[0]
            for i in range(sum(1 for k in state if k.startswith("classification_heads.") and k.endswith(".weight")))
        ]
        use_pool = hp.get("use_attention_pooling", any(k.startswith("attention_pool.") for k in state))
        model = cls(None, num_labels, dropout_rate=hp.get("dropout_rate", 0.1), use_task_weights=True,
                    task_weights=hp.get("task_weights") or [1.0] * len(num_labels), max_layers_to_freeze=0,
                    use_attention_pooling=use_pool, config=config)
        state = {k: v for k, v in state.items() if not k.startswith("bert.pooler.")}  # reference files carry one
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{folder}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]}).")
        model.hyperparameters = hp
        return model.eval()


def _load_state(folder: Path, map_location: Any) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"), device=str(map_location))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location=map_location, weights_only=True)
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin.")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
