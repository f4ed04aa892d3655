"""Multi-task cell classification (``MTLClassifier``, SPEC 9): one encoder, one head per task.

The encoder is a ``BertModel`` **loaded from the pretrained checkpoint** (the reference builds a
randomly initialised one). Cells are pooled either by attention pooling that **ignores padding**
(the reference lets padding take part) or by the first position; after dropout each task has its own
``Linear`` head, and the loss is the task-weighted sum of cross-entropies.

Training runs through ``accelerate.Accelerator``, so the same code runs on one CPU/GPU or, unchanged,
on several GPUs or nodes under ``accelerate launch`` / ``torchrun`` (rank 0 writes the files). In an
Optuna study every process draws the same hyperparameters (seeded sampler, identical gathered
validation losses), so a distributed study stays in step without extra communication.

Files: ``{results_dir}/task_label_mappings.pkl`` (+ ``_val``), ``{results_dir}/trial_{n}/val_preds.csv``
(or ``manual_run_val_preds.csv``), ``{results_dir}/test_preds.csv``, and the whole model — encoder,
pooling and heads — in ``{model_save_path}/GeneformerMultiTask/{model.safetensors, config.json,
hyperparameters.json}``. The folder also loads as a ``BertForMaskedLM`` (its ``bert.*`` weights) for
embeddings and perturbation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._constants import CELL_ID_COLUMNS
from ..data import as_sequences
from ..models import GeneformerMultiTask
from ._classification_data import column, sorted_labels
from ._collators import pad_input_ids

logger = logging.getLogger(__name__)

MODEL_DIR = "GeneformerMultiTask"

DEFAULT_HYPERPARAMETERS: dict[str, dict] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.005, "high": 0.01},
    "weight_decay": {"type": "float", "low": 0.01, "high": 0.1},
    "dropout_rate": {"type": "float", "low": 0.0, "high": 0.7},
    "lr_scheduler_type": {"type": "categorical", "choices": ["cosine"]},
    "task_weights": {"type": "float", "low": 0.1, "high": 2.0},
}
DEFAULT_MANUAL_HYPERPARAMETERS: dict[str, Any] = {
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


class _Rows(torch.utils.data.Dataset):
    def __init__(self, data: MTLData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        return self.data.seqs.row(i), self.data.labels[i], i


def collate(batch: Sequence[tuple[np.ndarray, np.ndarray, int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    ids, att = pad_input_ids([b[0] for b in batch], pad_id)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(att),
            "labels": torch.from_numpy(np.stack([b[1] for b in batch])),
            "index": torch.tensor([b[2] for b in batch], dtype=torch.long)}


def make_loader(data: MTLData, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0):
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(_Rows(data), batch_size=int(batch_size), shuffle=shuffle, generator=gen,
                                       collate_fn=collate, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available())


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay except biases and LayerNorm weights; frozen parameters left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if ("bias" in name or "LayerNorm.weight" in name) else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class RunResult:
    """One training run: validation loss and metrics, the trained model (CPU) and its validation outputs."""

    val_loss: float
    metrics: dict
    model: GeneformerMultiTask
    logits: list[np.ndarray]
    labels: np.ndarray
    rows: np.ndarray


def _predict(model, loader, accelerator, n_tasks: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Gathered logits per task, labels and row indices over the whole loader (all processes)."""
    model.eval()
    logits: list[list[torch.Tensor]] = [[] for _ in range(n_tasks)]
    labels, index = [], []
    with torch.no_grad():
        for batch in loader:
            _, lg, _ = model(batch["input_ids"], batch["attention_mask"])
            gathered = accelerator.gather_for_metrics((tuple(lg), batch["labels"], batch["index"]))
            for t in range(n_tasks):
                logits[t].append(gathered[0][t].float().cpu())
            labels.append(gathered[1].cpu())
            index.append(gathered[2].cpu())
    idx = torch.cat(index).numpy()
    order = np.argsort(idx, kind="stable")
    return ([torch.cat(l).numpy()[order] for l in logits], torch.cat(labels).numpy()[order], idx[order])


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
        df[f"{name}_all_probs"] = [",".join(f"{p:.6g}" for p in row) for row in probs]
        for c in range(probs.shape[1]):
            df[f"{name}_prob_{inv[c]}"] = probs[:, c]
    return df


def train_once(config: Mapping[str, Any], params: Mapping[str, Any], train: MTLData, val: MTLData,
               num_labels_list: Sequence[int], task_names: Sequence[str], accelerator: Any,
               writer: Any = None) -> RunResult:
    """Train one model with ``params`` and evaluate it on ``val``."""
    from transformers import get_scheduler, set_seed

    set_seed(int(config["seed"]))
    model = GeneformerMultiTask(config["pretrained_path"], num_labels_list,
                                dropout_rate=params.get("dropout_rate", 0.1),
                                use_task_weights=config["use_task_weights"], task_weights=params.get("task_weights"),
                                max_layers_to_freeze=int(params.get("max_layers_to_freeze", 0)),
                                use_attention_pooling=params.get("use_attention_pooling",
                                                                 config["use_attention_pooling"]))
    optimizer = torch.optim.AdamW(optimizer_groups(model, params.get("weight_decay", 0.0)),
                                  lr=float(params["learning_rate"]), eps=1e-8)
    train_loader = make_loader(train, config["batch_size"], True, config["seed"], config.get("num_workers", 0))
    val_loader = make_loader(val, config["batch_size"], False, config["seed"], config.get("num_workers", 0))
    accum = int(config.get("gradient_accumulation_steps", 1))
    epochs = int(config["epochs"])
    total_steps = math.ceil(len(train_loader) / accum) * epochs
    scheduler = get_scheduler(params.get("lr_scheduler_type", "linear"), optimizer,
                              num_warmup_steps=int(total_steps * float(params.get("warmup_ratio", 0.0))),
                              num_training_steps=total_steps)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    clip = config.get("gradient_clipping") and config.get("max_grad_norm")
    from tqdm.auto import tqdm

    step, running = 0, 0.0
    for epoch in range(epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"MTL epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not (config.get("progress", True) and accelerator.is_main_process))
        for batch in bar:
            with accelerator.accumulate(model):
                loss, _, _ = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if clip:
                        accelerator.clip_grad_norm_(model.parameters(), float(config["max_grad_norm"]))
                    step += 1
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if writer is not None and accelerator.sync_gradients:
                writer.add_scalar("Training Loss", running / max(1, step), step)
    unwrapped = accelerator.unwrap_model(model)
    logits, labels, idx = _predict(model, val_loader, accelerator, len(task_names))
    weights = unwrapped.task_weights.tolist()
    val_loss, metrics = evaluate_tasks(logits, labels, weights, task_names)
    accelerator.free_memory()
    return RunResult(val_loss, metrics, unwrapped.to("cpu"), logits, labels, idx)


__all__ = ["AttentionPool", "GeneformerMultiTask", "MTLClassifier", "label_mappings"]
