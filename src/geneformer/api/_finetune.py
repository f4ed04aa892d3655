"""``GeneformerFineTuningModel``: the model-card (Helical-style) fine-tuning API.

::

    config = GeneformerConfig(model_name="gf-12L-95M-i4096", batch_size=10)
    ft = GeneformerFineTuningModel(geneformer_config=config, fine_tuning_head="classification",
                                   output_size=n_classes)
    dataset = ft.process_data(adata)                        # tokenized datasets.Dataset
    dataset = dataset.add_column("cell_types", labels)      # integer class ids
    ft.train(train_dataset=dataset, label="cell_types", epochs=1, optimizer_params={"lr": 1e-4})
    logits = ft.get_outputs(dataset)                        # (N, n_classes) numpy array
    embeddings = ft.get_embeddings(dataset)                 # from the fine-tuned encoder

The cell representation is the configuration's ``emb_mode`` ("cell": mean of the gene states,
"cls": the ``<cls>`` state) at ``emb_layer`` (0 = last layer, -1 = second-to-last); a head (dropout +
linear for "classification", linear for "regression", or any ``nn.Module``) maps it to the outputs.
Encoder layers past ``emb_layer`` are never run. ``save(path)`` / ``load(path)`` keep both parts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..data import as_sequences
from ..embeddings import SpecialTokens, gene_position_mask, special_flags
from ..embeddings import check_cls as _check_cls
from ..inference import collate, forward_hidden, make_batches, validate_sequences
from ..models import layer_index
from ._config import GeneformerConfig
from ._model import Geneformer

logger = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
META_FILE = "fine_tuning.json"
ENCODER_DIR = "encoder"


def _make_head(kind: Any, hidden: int, output_size: int | None, dropout: float = 0.1) -> tuple[nn.Module, str]:
    if isinstance(kind, nn.Module):
        return kind, "custom"
    if kind not in ("classification", "regression"):
        raise ValueError(f"fine_tuning_head must be 'classification', 'regression' or an nn.Module, got {kind!r}.")
    if output_size is None or int(output_size) < 1:
        raise ValueError(f"A {kind} head needs output_size >= 1 (number of classes / targets), got {output_size!r}.")
    if kind == "classification":
        if int(output_size) < 2:
            raise ValueError("A classification head needs output_size >= 2 classes.")
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, int(output_size))), kind
    return nn.Linear(hidden, int(output_size)), kind


class GeneformerFineTuningModel(Geneformer):
    """A Geneformer encoder plus a task head, fine-tuned end to end (see the module docstring)."""

    def __init__(self, geneformer_config: GeneformerConfig | None = None, fine_tuning_head: Any = "classification",
                 output_size: int | None = None, *, model: Any = None) -> None:
        super().__init__(geneformer_config, model=model)
        if self.config.emb_mode not in ("cell", "cls"):
            raise ValueError("Fine-tuning pools cells: GeneformerConfig.emb_mode must be 'cell' or 'cls'.")
        hidden = int(self.model.config.hidden_size)
        self.fine_tuning_head, self.head_kind = _make_head(fine_tuning_head, hidden, output_size)
        self.output_size = output_size
        self.fine_tuning_head.to(self._device)
        self.history: list[dict] = []

    # ---- internals -----------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _special(self) -> SpecialTokens:
        vocab = self.config.vocab or self.vocab_version
        return SpecialTokens.for_model(self.model, vocab)

    def _pooled(self, seqs: Any, rows: np.ndarray, flags: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        """(B, H) cell representations of ``rows`` (differentiable)."""
        dev = self._device
        ids, mask, lengths = collate(seqs, rows, self._special().pad_id, dev)
        layer = layer_index(self.model, self.config.emb_layer)
        hidden, _ = forward_hidden(self.model, ids, mask, layer)
        if self.config.emb_mode == "cls":
            return hidden[:, 0, :]
        has_cls = torch.from_numpy(flags[0][rows]).to(dev)
        has_eos = torch.from_numpy(flags[1][rows]).to(dev)
        gene_mask = gene_position_mask(lengths, hidden.shape[1], has_cls, has_eos).unsqueeze(-1)
        return (hidden * gene_mask).sum(1) / gene_mask.sum(1).clamp(min=1)

    def _prepare(self, dataset: Any, what: str) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
        seqs = as_sequences(dataset)
        validate_sequences(seqs, self.model, what=what)
        has_cls, has_eos = special_flags(seqs, self._special())
        if self.config.emb_mode == "cls":
            _check_cls(has_cls, self._special())
        return seqs, (has_cls, has_eos)

    def _targets(self, dataset: Any, label: str) -> torch.Tensor:
        if label not in dataset.column_names:
            raise KeyError(f"The dataset has no label column {label!r}; columns: {dataset.column_names}.")
        values = dataset[label]
        if self.head_kind == "classification":
            if any(isinstance(v, str) for v in values):
                raise ValueError(
                    f"Column {label!r} holds text labels; map them to integer class ids 0..{self.output_size - 1} "
                    "first (e.g. dataset.map(lambda x: {'label': classes.index(x['cell_type'])}))."
                )
            y = torch.as_tensor(np.asarray(values, dtype=np.int64))
            bad = (y < 0) | (y >= int(self.output_size))
            if bool(bad.any()):
                raise ValueError(f"Column {label!r} has class ids outside 0..{self.output_size - 1} "
                                 f"(e.g. {int(y[bad][0])}); set output_size to the number of classes.")
            return y
        return torch.as_tensor(np.asarray(values, dtype=np.float32))

    def _freeze(self, freeze_layers: int) -> None:
        n = int(freeze_layers or 0)
        layers = self.model.base_model.encoder.layer
        if n > len(layers):
            raise ValueError(f"freeze_layers={n} but the model has {len(layers)} encoder layers.")
        for p in self.model.parameters():
            p.requires_grad = True
        for layer in layers[:n]:
            for p in layer.parameters():
                p.requires_grad = False

    def _batch_size(self) -> int:
        return int(self.config.batch_size or 12)

    # ---- training ------------------------------------------------------------------------------
    def train(self, train_dataset: Any, label: str, validation_dataset: Any = None,
              optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
              optimizer_params: Mapping[str, Any] | None = None, loss_function: nn.Module | None = None,
              epochs: int = 1, freeze_layers: int = 2, lr_scheduler_params: Mapping[str, Any] | None = None,
              silent: bool = False, seed: int = 0) -> "GeneformerFineTuningModel":
        """Fine-tune encoder and head on ``train_dataset[label]`` (class ids, or float targets).

        ``optimizer_params`` go to ``optimizer`` (default ``{"lr": 1e-4}``); ``lr_scheduler_params`` to
        ``transformers.get_scheduler`` (e.g. ``{"name": "linear", "num_warmup_steps": 0}``; the
        number of training steps defaults to epochs x batches). The first ``freeze_layers`` encoder
        layers stay fixed. With ``validation_dataset`` the loss (and accuracy) is reported every epoch.
        """
        from tqdm.auto import tqdm

        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}.")
        seqs, flags = self._prepare(train_dataset, "the training data")
        y = self._targets(train_dataset, label)
        val = None
        if validation_dataset is not None:
            val = (*self._prepare(validation_dataset, "the validation data"), self._targets(validation_dataset, label))
        loss_fn = loss_function or (nn.CrossEntropyLoss() if self.head_kind != "regression" else nn.MSELoss())
        self._freeze(freeze_layers)
        params = [p for p in self.model.parameters() if p.requires_grad] + list(self.fine_tuning_head.parameters())
        opt = optimizer(params, **dict(optimizer_params or {"lr": 1e-4}))
        bs = self._batch_size()
        n_batches = math.ceil(len(seqs) / bs)
        scheduler = None
        if lr_scheduler_params:
            from transformers import get_scheduler

            sp = dict(lr_scheduler_params)
            sp.setdefault("num_training_steps", n_batches * int(epochs))
            scheduler = get_scheduler(optimizer=opt, **sp)
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        for epoch in range(int(epochs)):
            self.model.train()
            self.fine_tuning_head.train()
            order = rng.permutation(len(seqs))
            total = 0.0
            bar = tqdm(range(n_batches), desc=f"fine-tuning epoch {epoch + 1}/{epochs}", disable=silent, leave=False)
            for b in bar:
                rows = np.sort(order[b * bs:(b + 1) * bs])
                out = self.fine_tuning_head(self._pooled(seqs, rows, flags))
                target = y[torch.from_numpy(rows)].to(out.device)
                if self.head_kind == "regression" and out.shape[-1] == 1 and target.dim() == 1:
                    target = target[:, None]
                loss = loss_fn(out, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.detach()) * len(rows)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            record = {"epoch": epoch + 1, "train_loss": total / len(seqs)}
            if val is not None:
                record.update(self._validate(val, loss_fn))
            self.history.append(record)
            if not silent:
                logger.info("fine-tuning %s", record)
        self.model.eval()
        self.fine_tuning_head.eval()
        return self

    def _validate(self, val: tuple, loss_fn: nn.Module) -> dict[str, float]:
        seqs, flags, y = val
        out = torch.from_numpy(self._outputs(seqs, flags, silent=True))
        target = y.to(out.dtype) if self.head_kind == "regression" else y
        if self.head_kind == "regression" and out.shape[-1] == 1 and target.dim() == 1:
            target = target[:, None]
        with torch.no_grad():
            rec = {"val_loss": float(loss_fn(out, target))}
        if self.head_kind == "classification":
            rec["val_accuracy"] = float((out.argmax(1) == y).float().mean())
        return rec

    # ---- inference -----------------------------------------------------------------------------
    def _outputs(self, seqs: Any, flags: tuple[np.ndarray, np.ndarray], silent: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        self.model.eval()
        self.fine_tuning_head.eval()
        out = None
        batches = make_batches(seqs.lengths, self._batch_size())
        with torch.inference_mode():
            for rows in tqdm(batches, desc="outputs", disable=silent, leave=False):
                res = self.fine_tuning_head(self._pooled(seqs, rows, flags)).float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(seqs), res.shape[1]), dtype=np.float32)
                out[rows] = res
        return out

    def get_outputs(self, dataset: Any, silent: bool = False) -> np.ndarray:
        """Head outputs (logits for classification), one row per cell in the dataset's order."""
        seqs, flags = self._prepare(dataset, "the dataset")
        return self._outputs(seqs, flags, silent=silent)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``encoder/`` (Hugging Face folder), ``head.safetensors`` and ``fine_tuning.json``."""
        from dataclasses import asdict

        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(str(tmp / ENCODER_DIR))
        state = {k: v.detach().contiguous().cpu() for k, v in self.fine_tuning_head.state_dict().items()}
        save_file(state, str(tmp / HEAD_FILE))
        cfg = asdict(self.config)
        cfg["model_name"] = ENCODER_DIR
        meta = {"fine_tuning_head": self.head_kind, "output_size": self.output_size, "config": cfg,
                "base_model": self.config.model_name, "history": self.history}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, fine_tuning_head: nn.Module | None = None,
             **config_overrides: Any) -> "GeneformerFineTuningModel":
        """Reload a folder written by :meth:`save` (pass the module again for a custom head)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {META_FILE}; it was not written by GeneformerFineTuningModel.save.")
        meta = json.loads((path / META_FILE).read_text())
        cfg = dict(meta["config"])
        cfg["model_name"] = str(path / ENCODER_DIR)
        cfg.update(config_overrides)
        head = meta["fine_tuning_head"]
        if head == "custom":
            if fine_tuning_head is None:
                raise ValueError(f"{path} was saved with a custom head; pass fine_tuning_head=<the same nn.Module>.")
            head = fine_tuning_head
        obj = cls(GeneformerConfig(**cfg), fine_tuning_head=head, output_size=meta.get("output_size"))
        obj.fine_tuning_head.load_state_dict(load_file(str(path / HEAD_FILE), device=str(obj._device)))
        obj.fine_tuning_head.eval()
        obj.history = list(meta.get("history") or [])
        return obj


__all__ = ["GeneformerFineTuningModel"]
