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
``model`` is the whole fine-tuning model (``geneformer.models.GeneformerCellModel``: the encoder as
``model.bert``, the head as ``model.head``); it trains on the Hugging Face ``Trainer``
(``geneformer.train.train_cell_model``). ``save(path)`` / ``load(path)`` keep both parts.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..train import cell_model, cell_outputs, load_cell_model, save_cell_model, train_cell_model
from ._config import GeneformerConfig
from ._model import Geneformer


class GeneformerFineTuningModel(Geneformer):
    """A Geneformer encoder plus a task head, fine-tuned end to end (see the module docstring)."""

    def __init__(self, geneformer_config: GeneformerConfig | None = None, fine_tuning_head: Any = "classification",
                 output_size: int | None = None, *, model: Any = None) -> None:
        super().__init__(geneformer_config, model=model)
        if self.config.emb_mode not in ("cell", "cls"):
            raise ValueError("Fine-tuning pools cells: GeneformerConfig.emb_mode must be 'cell' or 'cls'.")
        self.model = cell_model(self.model, fine_tuning_head, output_size, emb_layer=self.config.emb_layer,
                                emb_mode=self.config.emb_mode)
        self.fine_tuning_head: nn.Module = self.model.head
        self.head_kind: str = self.model.config.head_kind
        self.output_size = self.model.config.output_size
        self.history: list[dict] = []

    def _vocab_source(self) -> Any:
        return self.config.vocab or self.vocab_version

    def _batch_size(self) -> int:
        return int(self.config.batch_size or 12)

    # ---- training ------------------------------------------------------------------------------
    def train(self, train_dataset: Any, label: str, validation_dataset: Any = None,
              optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
              optimizer_params: Mapping[str, Any] | None = None, loss_function: nn.Module | None = None,
              epochs: int = 1, freeze_layers: int = 2, lr_scheduler_params: Mapping[str, Any] | None = None,
              silent: bool = False, seed: int = 0) -> GeneformerFineTuningModel:
        """Fine-tune encoder and head on ``train_dataset[label]`` (class ids, or float targets).

        ``optimizer_params`` go to ``optimizer`` (default ``{"lr": 1e-4}``); ``lr_scheduler_params`` to
        ``transformers.get_scheduler`` (e.g. ``{"name": "linear", "num_warmup_steps": 0}``; the
        number of training steps defaults to epochs x batches). The first ``freeze_layers`` encoder
        layers stay fixed. With ``validation_dataset`` the loss (and accuracy) is reported every epoch
        (``history``).
        """
        train_cell_model(self.model, train_dataset, label, validation_dataset, optimizer=optimizer,
                         optimizer_params=optimizer_params, loss_function=loss_function, epochs=epochs,
                         freeze_layers=freeze_layers, lr_scheduler_params=lr_scheduler_params,
                         batch_size=self._batch_size(), vocab=self._vocab_source(), seed=seed, progress=not silent,
                         on_record=self.history.append)
        return self

    # ---- inference -----------------------------------------------------------------------------
    def get_outputs(self, dataset: Any, silent: bool = False) -> np.ndarray:
        """Head outputs (logits for classification), one row per cell in the dataset's order."""
        return cell_outputs(self.model, dataset, vocab=self._vocab_source(), batch_size=self._batch_size(),
                            progress=not silent)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (``save_pretrained``: ``config.json`` with the head, ``model.safetensors``)
        and ``fine_tuning.json`` (configuration, head, history)."""
        return save_cell_model(self.model, path, config=asdict(self.config), base_model=self.config.model_name,
                               history=self.history)

    @classmethod
    def load(cls, path: str | os.PathLike, fine_tuning_head: nn.Module | None = None,
             **config_overrides: Any) -> GeneformerFineTuningModel:
        """Reload a folder written by :meth:`save` (pass the module again for a custom head)."""
        model, config, meta = load_cell_model(path, fine_tuning_head, **config_overrides)
        obj = cls(GeneformerConfig(**config), fine_tuning_head=model.head, output_size=meta.get("output_size"),
                  model=model)
        obj.history = list(meta.get("history") or [])
        return obj


__all__ = ["GeneformerFineTuningModel"]
