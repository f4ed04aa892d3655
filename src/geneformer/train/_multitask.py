"""Multi-task cell classification (``MTLClassifier``, SPEC 9): data, one training run, prediction,
metrics and the prediction tables. The runs themselves (Optuna study, manual run, test evaluation)
are in :mod:`._multitask_runs`; the model is :class:`geneformer.models.GeneformerMultiTask`.

A run trains on the Hugging Face ``Trainer`` (:class:`._heads.HeadTrainer`), so the same code runs on
one CPU/GPU or, unchanged, on several GPUs or nodes under ``torchrun`` / ``accelerate launch`` (rank 0
writes the files). The hyperparameters keep the reference's meanings: AdamW (eps 1e-8) with weight
decay except on biases and LayerNorm weights, frozen layers left out; a linear or cosine schedule
with ``int(total_steps * warmup_ratio)`` warm-up steps; gradient accumulation and optional clipping.
Validation runs through the package's forward loop (``inference.iter_forward``) on every process
over the whole split, so that every process of a distributed study sees the same validation loss
and Optuna draws the same hyperparameters everywhere.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._constants import CELL_ID_COLUMNS
from ..data import as_sequences
from ..inference import iter_forward
from ..models import GeneformerMultiTask
from ._classification_data import column, sorted_labels
from ._heads import HeadTrainer, RowCollator, RowDataset, head_training_arguments, training_run

logger = logging.getLogger(__name__)

MODEL_DIR = "GeneformerMultiTask"

MULTITASK_HYPERPARAMETERS: dict[str, dict] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.005, "high": 0.01},
    "weight_decay": {"type": "float", "low": 0.01, "high": 0.1},
    "dropout_rate": {"type": "float", "low": 0.0, "high": 0.7},
    "lr_scheduler_type": {"type": "categorical", "choices": ["cosine"]},
    "task_weights": {"type": "float", "low": 0.1, "high": 2.0},
}
MULTITASK_MANUAL_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "warmup_ratio": 0.01,
    "weight_decay": 0.1,
    "dropout_rate": 0.1,
    "lr_scheduler_type": "cosine",
    "use_attention_pooling": False,
    "task_weights": [1, 1],
    "max_layers_to_freeze": 2,
}


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
@dataclass
class MTLData:
    """Token sequences, integer labels per task (-1 when unknown) and cell ids of one split."""

    seqs: Any
    labels: np.ndarray  # (N, T) int64
    cell_ids: list

    def __len__(self) -> int:
        return len(self.seqs)


def label_mappings(ds: Any, task_columns: Sequence[str]) -> dict[str, dict[Any, int]]:
    """``{column: {label: index}}`` over each column's sorted distinct labels."""
    out = {}
    for col in task_columns:
        classes = sorted_labels(column(ds, col))
        if len(classes) < 2:
            raise ValueError(f"Task column {col!r} has a single class {classes!r}; each task needs >= 2 classes.")
        out[col] = {lab: i for i, lab in enumerate(classes)}
    return out


def load_split(path: Any, task_columns: Sequence[str], mappings: Mapping[str, Mapping[Any, int]] | None,
               what: str, require_labels: bool = True) -> MTLData:
    """Read a tokenized split; labels mapped through ``mappings`` (unseen labels raise)."""
    from ..data import load_tokenized

    ds = load_tokenized(path)
    missing = [c for c in task_columns if c not in ds.column_names]
    if missing and require_labels:
        raise KeyError(f"Task column(s) {missing} are not in the {what} data; available columns: {ds.column_names}.")
    labels = np.full((len(ds), len(task_columns)), -1, dtype=np.int64)
    for t, col in enumerate(task_columns):
        if col in missing:
            continue
        values = column(ds, col)
        mapping = mappings[col]
        unseen = sorted_labels(set(values) - set(mapping))
        if unseen and require_labels:
            raise ValueError(
                f"The {what} data has labels {unseen} in {col!r} that the training data does not have "
                f"({list(mapping)}); every class must appear in the training split."
            )
        labels[:, t] = [mapping.get(v, -1) for v in values]
    id_col = next((c for c in CELL_ID_COLUMNS if c in ds.column_names), None)
    cell_ids = column(ds, id_col) if id_col else [f"cell_{i}" for i in range(len(ds))]
    return MTLData(as_sequences(ds), labels, cell_ids)


# ------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One training run: validation loss and metrics, the trained model (CPU) and its validation outputs."""

    val_loss: float
    metrics: dict
    model: GeneformerMultiTask
    logits: list[np.ndarray]
    labels: np.ndarray
    rows: np.ndarray


def train_once(settings: Any, params: Mapping[str, Any], train: MTLData, val: MTLData,
               num_labels_list: Sequence[int], task_names: Sequence[str], encoder: nn.Module,
               on_step: Callable[[int, float], None] | None = None) -> RunResult:
    """Train one model with ``params`` (on a copy of ``encoder``) and evaluate it on ``val``.

    ``settings`` carries the run's fixed options (a ``MultiTaskRun``: seed, batch size, epochs,
    accumulation, clipping, pooling, ...); ``on_step(step, mean_loss)`` follows the training loss."""
    from transformers import set_seed

    set_seed(int(settings.seed))  # the heads (and the attention pool) start from the seeded RNG
    model = GeneformerMultiTask(None, num_labels_list, dropout_rate=params.get("dropout_rate", 0.1),
                                use_task_weights=settings.use_task_weights, task_weights=params.get("task_weights"),
                                max_layers_to_freeze=int(params.get("max_layers_to_freeze", 0)),
                                use_attention_pooling=params.get("use_attention_pooling",
                                                                 settings.use_attention_pooling),
                                encoder=copy.deepcopy(encoder))
    clip = float(settings.max_grad_norm) if settings.gradient_clipping and settings.max_grad_norm else 0.0
    with training_run(model) as tmp:
        args = head_training_arguments(
            tmp, progress=settings.progress, num_train_epochs=int(settings.epochs),
            per_device_train_batch_size=int(settings.batch_size),
            gradient_accumulation_steps=int(settings.gradient_accumulation_steps),
            learning_rate=float(params["learning_rate"]), weight_decay=float(params.get("weight_decay", 0.0)),
            lr_scheduler_type=params.get("lr_scheduler_type", "linear"), max_grad_norm=clip, optim="adamw_torch",
            adam_epsilon=1e-8, seed=int(settings.seed), data_seed=int(settings.seed),
            dataloader_num_workers=int(settings.num_workers))
        trainer = HeadTrainer(model=model, args=args, train_dataset=RowDataset(len(train)),
                              data_collator=RowCollator(train.seqs, 0, train.labels),
                              warmup_ratio=float(params.get("warmup_ratio", 0.0)), on_step=on_step)
        trainer.train()
    model = trainer.model
    logits = predict_tasks(model, val.seqs, batch_size=settings.batch_size, progress=False)
    val_loss, metrics = evaluate_tasks(logits, val.labels, model.config.task_weights, task_names)
    return RunResult(val_loss, metrics, model.to("cpu"), logits, val.labels, np.arange(len(val)))


def predict_tasks(model: GeneformerMultiTask, seqs: Any, *, batch_size: int | None = None, device: Any = None,
                  progress: bool | None = None) -> list[np.ndarray]:
    """(N, classes) logits of each task, in input order, through the package's forward loop."""
    logits = [np.zeros((len(seqs), n), dtype=np.float32) for n in model.num_labels_list]
    for batch in iter_forward(model, seqs, batch_size=batch_size, device=device, validate=False, progress=progress,
                              desc="multi-task predictions"):
        for t, lg in enumerate(model.task_logits(batch.hidden, batch.attention_mask)):
            logits[t][batch.rows] = lg.float().cpu().numpy()
    return logits


# ------------------------------------------------------------------------------------------------
# Metrics and tables
# ------------------------------------------------------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate_tasks(logits: list[np.ndarray], labels: np.ndarray, weights: Sequence[float],
                   task_names: Sequence[str]) -> tuple[float, dict]:
    """Task-weighted loss over all cells and per-task macro-F1/accuracy."""
    from sklearn.metrics import accuracy_score, f1_score

    total = 0.0
    metrics: dict[str, dict] = {}
    for t, name in enumerate(task_names):
        y = labels[:, t]
        keep = y >= 0
        if not keep.any():
            continue
        lg = torch.from_numpy(logits[t][keep])
        loss = float(nn.functional.cross_entropy(lg, torch.from_numpy(y[keep])))
        total += float(weights[t]) * loss
        pred = logits[t][keep].argmax(1)
        metrics[name] = {"loss": loss, "macro_f1": float(f1_score(y[keep], pred, average="macro", zero_division=0)),
                         "accuracy": float(accuracy_score(y[keep], pred))}
    return total, metrics


def _probabilities_text(probs: np.ndarray) -> list[str]:
    return [",".join(f"{p:.6g}" for p in row) for row in probs]


def val_predictions_table(logits, labels, cell_ids, task_names, inverse_maps) -> pd.DataFrame:
    """SPEC 9.4 columns: Cell ID, then per task true/pred index and label, all probabilities, one per class."""
    df = pd.DataFrame({"Cell ID": list(cell_ids)})
    for t, name in enumerate(task_names):
        probs = _softmax(logits[t])
        pred = probs.argmax(1)
        inv = inverse_maps[name]
        df[f"{name}_true_idx"] = labels[:, t]
        df[f"{name}_pred_idx"] = pred
        df[f"{name}_true_label"] = [inv.get(int(i)) for i in labels[:, t]]
        df[f"{name}_pred_label"] = [inv[int(i)] for i in pred]
        df[f"{name}_all_probs"] = _probabilities_text(probs)
        for c in range(probs.shape[1]):
            df[f"{name}_prob_{inv[c]}"] = probs[:, c]
    return df


def predictions_table(logits, cell_ids, task_names, inverse_maps) -> pd.DataFrame:
    """SPEC 9.4 test columns: Cell ID, then per task ``{task} Prediction`` and ``{task} Probabilities``."""
    df = pd.DataFrame({"Cell ID": list(cell_ids)})
    for t, name in enumerate(task_names):
        probs = _softmax(logits[t])
        df[f"{name} Prediction"] = [inverse_maps[name][int(i)] for i in probs.argmax(1)]
        df[f"{name} Probabilities"] = _probabilities_text(probs)
    return df


def inverse_mappings(mappings: Mapping[str, Mapping[Any, int]]) -> dict[str, dict[int, Any]]:
    """``{task: {index: label}}``."""
    return {c: {i: lab for lab, i in m.items()} for c, m in mappings.items()}


__all__ = [
    "MODEL_DIR",
    "MULTITASK_HYPERPARAMETERS",
    "MULTITASK_MANUAL_HYPERPARAMETERS",
    "MTLData",
    "RunResult",
    "evaluate_tasks",
    "inverse_mappings",
    "label_mappings",
    "load_split",
    "predict_tasks",
    "predictions_table",
    "train_once",
    "val_predictions_table",
]
