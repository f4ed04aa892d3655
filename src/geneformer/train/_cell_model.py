"""Fine-tuning a cell head end to end (the core of the model-card ``GeneformerFineTuningModel``).

The model is :class:`geneformer.models.GeneformerCellModel` (encoder + cell pooling at ``emb_layer`` +
head). Training runs on the Hugging Face ``Trainer`` (:class:`._heads.HeadTrainer`) with the caller's
optimizer class and parameters, loss function and ``transformers.get_scheduler`` parameters (a
constant learning rate without them; no gradient clipping), the first ``freeze_layers`` encoder
layers fixed; after every epoch the mean training loss and, given a validation set, its loss (and
accuracy) are recorded. Outputs are the head applied to ``embeddings.cell_embeddings`` (the
package's forward loop, stopped at ``emb_layer``).

A saved folder is ``save_pretrained``'s (``config.json`` describing the head, ``model.safetensors``)
plus ``fine_tuning.json`` (the model-card configuration, the head, the history); folders written
before (``encoder/`` + ``head.safetensors`` + ``fine_tuning.json``) still load.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .._constants import CellEmbMode, CellHeadKind
from .._utils import atomic_folder, check_positive_int, model_device, write_json
from ..data import as_sequences
from ..embeddings import SpecialTokens, cell_embeddings, check_cls, special_flags
from ..inference import validate_sequences
from ..models import GeneformerCellModel, freeze_encoder_layers, head_loss, load_model
from ._heads import HeadTrainer, RowCollator, RowDataset, head_training_arguments, training_run

logger = logging.getLogger(__name__)

META_FILE = "fine_tuning.json"
HEAD_FILE = "head.safetensors"  # folders written before the head model was a PreTrainedModel
ENCODER_DIR = "encoder"


def cell_model(model: Any, head: CellHeadKind | nn.Module = "classification", output_size: int | None = None, *,
               emb_layer: int = -1, emb_mode: CellEmbMode = "cell") -> GeneformerCellModel:
    """``model`` itself when it is a cell model (its pooling set), else a cell model around its encoder."""
    if isinstance(model, GeneformerCellModel):
        model.set_pooling(emb_layer, emb_mode)
        return model
    return GeneformerCellModel.for_encoder(model, head, output_size, emb_layer=emb_layer, emb_mode=emb_mode)


def prepare_cells(model: GeneformerCellModel, data: Any, vocab: Any = None, what: str = "the dataset"
                  ) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
    """Checked token sequences and their ``(has_cls, has_eos)`` flags (``<cls>`` required in "cls" mode)."""
    seqs = as_sequences(data)
    validate_sequences(seqs, model, what=what)
    special = SpecialTokens.for_model(model, vocab)
    flags = special_flags(seqs, special)
    if model.config.emb_mode == "cls":
        check_cls(flags[0], special)
    return seqs, flags


def cell_targets(dataset: Any, label: str, kind: str, output_size: int | None) -> torch.Tensor:
    """``dataset[label]``: class ids (checked against ``output_size``) for a classification head, else floats."""
    if label not in dataset.column_names:
        raise KeyError(f"The dataset has no label column {label!r}; columns: {dataset.column_names}.")
    values = dataset[label]
    if kind == "classification":
        if any(isinstance(v, str) for v in values):
            raise ValueError(
                f"Column {label!r} holds text labels; map them to integer class ids 0..{output_size - 1} "
                "first (e.g. dataset.map(lambda x: {'label': classes.index(x['cell_type'])}))."
            )
        y = torch.as_tensor(np.asarray(values, dtype=np.int64))
        bad = (y < 0) | (y >= int(output_size))
        if bool(bad.any()):
            raise ValueError(f"Column {label!r} has class ids outside 0..{output_size - 1} "
                             f"(e.g. {int(y[bad][0])}); set output_size to the number of classes.")
        return y
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


def cell_outputs(model: GeneformerCellModel, data: Any, *, vocab: Any = None, batch_size: int | None = None,
                 progress: bool | None = None) -> np.ndarray:
    """Head outputs (logits for classification), one row per cell in the input order."""
    out: list[np.ndarray | None] = [None]
    head = model.head
    param = next(head.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32

    def apply_head(rows: np.ndarray, embs: np.ndarray) -> None:
        with torch.inference_mode():
            res = head(torch.from_numpy(embs).to(model_device(model), dtype)).float().cpu().numpy()
        if out[0] is None:
            out[0] = np.zeros((len(seqs), res.shape[1]), dtype=np.float32)
        out[0][rows] = res

    seqs = as_sequences(data)
    cell_embeddings(model, seqs, mode=model.config.emb_mode, emb_layer=model.config.emb_layer, vocab=vocab,
                    batch_size=batch_size, progress=progress, on_batch=apply_head)
    return out[0]


def _validation_record(model: GeneformerCellModel, data: Any, y: torch.Tensor, loss_function: nn.Module | None,
                       vocab: Any, batch_size: int | None) -> dict[str, float]:
    out = torch.from_numpy(cell_outputs(model, data, vocab=vocab, batch_size=batch_size, progress=False))
    kind = model.config.head_kind
    with torch.no_grad():
        record = {"val_loss": float(head_loss(out, y, kind, loss_function))}
    if kind == "classification":
        record["val_accuracy"] = float((out.argmax(1) == y).float().mean())
    return record


def train_cell_model(
    model: GeneformerCellModel,
    train_dataset: Any,
    label: str,
    validation_dataset: Any = None,
    *,
    optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
    optimizer_params: Mapping[str, Any] | None = None,
    loss_function: nn.Module | None = None,
    epochs: int = 1,
    freeze_layers: int = 2,
    lr_scheduler_params: Mapping[str, Any] | None = None,
    batch_size: int = 12,
    vocab: Any = None,
    seed: int = 0,
    progress: bool | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fine-tune encoder and head on ``train_dataset[label]``; returns one record per epoch
    (``epoch``, ``train_loss``, and ``val_loss``/``val_accuracy`` with a validation set).

    ``optimizer_params`` go to ``optimizer`` (default ``{"lr": 1e-4}``) over the trainable parameters;
    ``lr_scheduler_params`` to ``transformers.get_scheduler`` (e.g. ``{"name": "linear",
    "num_warmup_steps": 0}``; the number of training steps defaults to epochs x batches). The first
    ``freeze_layers`` encoder layers stay fixed (every other parameter is trained)."""
    epochs = check_positive_int("epochs", epochs)
    kind = model.config.head_kind
    seqs, flags = prepare_cells(model, train_dataset, vocab, "the training data")
    y = cell_targets(train_dataset, label, kind, model.config.output_size)
    val_seqs = val_y = None
    if validation_dataset is not None:
        val_seqs, _ = prepare_cells(model, validation_dataset, vocab, "the validation data")
        val_y = cell_targets(validation_dataset, label, kind, model.config.output_size)
    for p in model.parameters():
        p.requires_grad_(True)
    freeze_encoder_layers(model, freeze_layers)
    history: list[dict] = []

    def end_of_epoch(epoch: int, train_loss: float) -> None:
        record = {"epoch": epoch, "train_loss": train_loss}
        if val_y is not None:
            record.update(_validation_record(model, val_seqs, val_y, loss_function, vocab, batch_size))
        history.append(record)
        if on_record is not None:
            on_record(record)
        if progress is not False:
            logger.info("fine-tuning %s", record)

    with training_run(model) as tmp:
        args = head_training_arguments(
            tmp, progress=progress, use_cpu=model_device(model).type == "cpu", num_train_epochs=epochs,
            per_device_train_batch_size=int(batch_size), seed=int(seed), data_seed=int(seed), max_grad_norm=0.0,
            lr_scheduler_type="constant", warmup_steps=0)
        model.to(args.device)
        opt = optimizer([p for p in model.parameters() if p.requires_grad], **dict(optimizer_params or {"lr": 1e-4}))
        scheduler = None
        if lr_scheduler_params:
            from transformers import get_scheduler

            sp = dict(lr_scheduler_params)
            sp.setdefault("num_training_steps", math.ceil(len(seqs) / int(batch_size)) * epochs)
            scheduler = get_scheduler(optimizer=opt, **sp)
        trainer = HeadTrainer(model=model, args=args, train_dataset=RowDataset(len(seqs)),
                              data_collator=RowCollator(seqs, SpecialTokens.for_model(model, vocab).pad_id, y, flags),
                              optimizers=(opt, scheduler), on_epoch_end=end_of_epoch,
                              loss_function=lambda outputs, labels: head_loss(outputs.logits, labels, kind,
                                                                              loss_function))
        trainer.train()
    model.eval()
    return history


# ------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------
def save_cell_model(model: GeneformerCellModel, path: str | os.PathLike, *, config: Mapping[str, Any],
                    base_model: Any = None, history: list | None = None) -> Path:
    """``save_pretrained`` plus ``fine_tuning.json`` (``config``: the model-card configuration), atomically."""
    meta = {"fine_tuning_head": model.config.head_kind, "output_size": model.config.output_size,
            "config": {**config, "model_name": "."}, "base_model": base_model, "history": list(history or [])}
    with atomic_folder(path) as tmp:
        model.save_pretrained(str(tmp))
        write_json(tmp / META_FILE, meta)
    return Path(path)


def load_cell_model(path: str | os.PathLike, head: nn.Module | None = None, **config_overrides: Any
                    ) -> tuple[GeneformerCellModel, dict, dict]:
    """A folder written by :func:`save_cell_model` (or by the earlier ``encoder/`` + ``head.safetensors``
    layout): ``(model, model-card configuration with the overrides, fine_tuning.json)``. A custom head
    needs ``head`` (the same module) again."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {META_FILE}; it was not written by GeneformerFineTuningModel.save.")
    meta = json.loads((path / META_FILE).read_text())
    legacy = (path / ENCODER_DIR).is_dir() and (path / HEAD_FILE).is_file()
    config = {**meta["config"], "model_name": str(path / ENCODER_DIR if legacy else path), **config_overrides}
    kind = meta["fine_tuning_head"]
    if kind == "custom" and head is None:
        raise ValueError(f"{path} was saved with a custom head; pass fine_tuning_head=<the same nn.Module>.")
    custom = head if kind == "custom" else None
    vocab, device = config.get("vocab"), config.get("device")
    if legacy:
        from safetensors.torch import load_file

        encoder = load_model(config["model_name"], vocab=vocab, device=device)
        model = GeneformerCellModel.for_encoder(encoder, kind if custom is None else custom, meta.get("output_size"))
        model.head.load_state_dict(load_file(str(path / HEAD_FILE), device=str(model_device(model))))
    else:
        model = GeneformerCellModel.load(path, vocab=vocab, device=device, head=custom)
    return model.eval(), config, meta


__all__ = ["cell_model", "cell_outputs", "cell_targets", "load_cell_model", "prepare_cells", "save_cell_model",
           "train_cell_model"]
