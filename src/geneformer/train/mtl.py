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

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..inference import as_sequences
from .classifier_data import column, load_pickle, save_pickle, sorted_labels, write_csv
from .collators import pad_input_ids

logger = logging.getLogger(__name__)

MODEL_DIR = "GeneformerMultiTask"
CELL_ID_COLUMNS = ("unique_cell_id", "cell_id")

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
    from ..data_ops import load_tokenized

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


# ------------------------------------------------------------------------------------------------
# MTLClassifier
# ------------------------------------------------------------------------------------------------
class MTLClassifier:
    """Multi-task fine-tuning with hyperparameter search (reference-compatible arguments, SPEC 9.1).

    Differences from the reference: the encoder starts from ``pretrained_path`` (not random), attention
    pooling ignores padding, the saved model keeps its pooling, validation labels only need to be a
    subset of the training labels, the model is saved as safetensors, and distribution is delegated to
    ``accelerate launch`` / ``torchrun`` (``distributed_training`` only documents the intent). TensorBoard
    logging is on when ``tensorboard_log_dir`` is given.
    """

    def __init__(
        self,
        task_columns: Sequence[str] | None = None,
        train_path: str | os.PathLike | None = None,
        val_path: str | os.PathLike | None = None,
        test_path: str | os.PathLike | None = None,
        pretrained_path: str | os.PathLike | None = None,
        model_save_path: str | os.PathLike | None = None,
        results_dir: str | os.PathLike | None = None,
        trials_result_path: str | os.PathLike | None = None,
        batch_size: int = 4,
        n_trials: int = 15,
        study_name: str = "mtl",
        max_layers_to_freeze: int | Mapping[str, int] | None = None,
        epochs: int = 1,
        tensorboard_log_dir: str | os.PathLike | None = None,
        distributed_training: bool = False,
        master_addr: str = "localhost",
        master_port: str = "12355",
        use_attention_pooling: bool = True,
        use_task_weights: bool = True,
        hyperparameters: Mapping[str, Any] | None = None,
        manual_hyperparameters: Mapping[str, Any] | None = None,
        use_manual_hyperparameters: bool = False,
        use_wandb: bool = False,
        wandb_project: str | None = None,
        gradient_clipping: bool = False,
        max_grad_norm: float | None = None,
        gradient_accumulation_steps: int = 1,
        seed: int = 42,
        *,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        self.task_columns = list(task_columns) if task_columns else None
        self.train_path, self.val_path, self.test_path = train_path, val_path, test_path
        self.pretrained_path = pretrained_path
        self.model_save_path = model_save_path
        self.results_dir = results_dir
        self.trials_result_path = trials_result_path
        self.batch_size = batch_size
        self.n_trials = n_trials
        self.study_name = study_name
        self.max_layers_to_freeze = max_layers_to_freeze
        self.epochs = epochs
        self.tensorboard_log_dir = tensorboard_log_dir
        self.distributed_training = distributed_training
        self.master_addr, self.master_port = master_addr, master_port
        self.use_attention_pooling = use_attention_pooling
        self.use_task_weights = use_task_weights
        self.hyperparameters = dict(hyperparameters) if hyperparameters is not None else dict(DEFAULT_HYPERPARAMETERS)
        self.manual_hyperparameters = (dict(manual_hyperparameters) if manual_hyperparameters is not None
                                       else dict(DEFAULT_MANUAL_HYPERPARAMETERS))
        self.use_manual_hyperparameters = use_manual_hyperparameters
        self.use_wandb, self.wandb_project = use_wandb, wandb_project
        self.gradient_clipping, self.max_grad_norm = gradient_clipping, max_grad_norm
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.seed = seed
        self.num_workers = num_workers
        self.progress = progress
        self.validate_options()
        for d in (self.model_save_path, self.results_dir):
            if d is not None:
                Path(d).mkdir(parents=True, exist_ok=True)
        self.config = {k: v for k, v in vars(self).items() if not k.startswith("_")}

    # ---- options -------------------------------------------------------------------------------
    def validate_options(self) -> None:
        cols = self.task_columns
        if cols is not None and (not cols or not all(isinstance(c, str) for c in cols)):
            raise ValueError(f"task_columns must be a non-empty list of column names, got {self.task_columns!r}.")
        for name in ("batch_size", "n_trials", "epochs", "gradient_accumulation_steps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        if self.gradient_clipping and not self.max_grad_norm:
            raise ValueError("gradient_clipping=True needs max_grad_norm (e.g. 1.0).")
        mlf = self.max_layers_to_freeze
        if mlf is not None and not isinstance(mlf, (int, np.integer)):
            if not isinstance(mlf, Mapping) or set(mlf) != {"min", "max"} or mlf["min"] > mlf["max"] or mlf["min"] < 0:
                raise ValueError(f"max_layers_to_freeze must be None, an int or {{'min': a, 'max': b}}, got {mlf!r}.")
        for name, spec in self.hyperparameters.items():
            if isinstance(spec, Mapping) and spec.get("type") not in ("float", "int", "categorical"):
                raise ValueError(
                    f"hyperparameters[{name!r}] type must be 'float', 'int' or 'categorical', got {spec!r}.")
        if self.use_wandb:
            try:
                import wandb  # noqa: F401
            except ImportError as exc:
                raise ValueError("use_wandb=True needs the wandb package (pip install wandb).") from exc

    def _require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) in (None, [], "")]
        if missing:
            raise ValueError(f"MTLClassifier needs {', '.join(missing)} for this step.")

    # ---- shared setup --------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator

        acc = Accelerator(gradient_accumulation_steps=int(self.gradient_accumulation_steps),
                          cpu=not torch.cuda.is_available())
        if self.distributed_training and acc.num_processes == 1:
            logger.info("distributed_training=True but one process is running; launch with `accelerate launch` "
                        "or `torchrun --nproc_per_node N` to use several GPUs.")
        return acc

    def _writer(self, accelerator):
        if self.tensorboard_log_dir is None or not accelerator.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed; no TensorBoard logs.")
            return None
        return SummaryWriter(str(self.tensorboard_log_dir))

    def _data(self, accelerator) -> tuple[MTLData, MTLData, dict]:
        from ..data_ops import load_tokenized

        from ..data_ops import check_columns

        train_ds = load_tokenized(self.train_path)
        check_columns(train_ds, self.task_columns, what="task (training data)")
        mappings = label_mappings(train_ds, self.task_columns)
        val_ds = load_tokenized(self.val_path)
        check_columns(val_ds, self.task_columns, what="task (validation data)")
        val_maps = {c: {lab: i for i, lab in enumerate(sorted_labels(column(val_ds, c)))} for c in self.task_columns}
        train = load_split(train_ds, self.task_columns, mappings, "training")
        val = load_split(val_ds, self.task_columns, mappings, "validation")
        if accelerator.is_main_process:
            save_pickle(mappings, Path(self.results_dir) / "task_label_mappings.pkl")
            save_pickle(val_maps, Path(self.results_dir) / "task_label_mappings_val.pkl")
        self._check_vocab(train)
        return train, val, mappings

    def _check_vocab(self, data: MTLData) -> None:
        from transformers import BertConfig

        from ..inference import validate_sequences

        validate_sequences(data.seqs, BertConfig.from_pretrained(str(self.pretrained_path)), what="the training data")

    def _freeze_range(self) -> tuple[int, int]:
        from transformers import BertConfig

        n_layers = BertConfig.from_pretrained(str(self.pretrained_path)).num_hidden_layers
        mlf = self.max_layers_to_freeze
        if mlf is None:
            return min(1, n_layers - 1), max(0, n_layers - 1)
        if isinstance(mlf, Mapping):
            return int(mlf["min"]), min(int(mlf["max"]), n_layers)
        return int(mlf), int(mlf)

    @property
    def task_names(self) -> list[str]:
        return list(self.task_columns)

    def _suggest(self, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        n_tasks = len(self.task_columns)
        for name, spec in self.hyperparameters.items():
            if name == "task_weights":
                continue
            if not isinstance(spec, Mapping):
                params[name] = spec
            elif spec["type"] == "categorical":
                params[name] = trial.suggest_categorical(name, list(spec["choices"]))
            elif spec["type"] == "int":
                params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
            else:
                params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                                   log=bool(spec.get("log")))
        tw = self.hyperparameters.get("task_weights")
        if self.use_task_weights and isinstance(tw, Mapping):
            raw = [trial.suggest_float(f"task_weight_{i}", float(tw["low"]), float(tw["high"])) for i in range(n_tasks)]
            params["task_weights"] = [w / sum(raw) for w in raw]
        elif isinstance(tw, Sequence):
            params["task_weights"] = [float(w) for w in tw]
        lo, hi = self._freeze_range()
        params["max_layers_to_freeze"] = trial.suggest_int("max_layers_to_freeze", lo, hi)
        params["use_attention_pooling"] = self.use_attention_pooling
        return params

    def _run_config(self) -> dict[str, Any]:
        return {"seed": self.seed, "pretrained_path": self.pretrained_path, "use_task_weights": self.use_task_weights,
                "use_attention_pooling": self.use_attention_pooling, "batch_size": self.batch_size,
                "epochs": self.epochs, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "gradient_clipping": self.gradient_clipping, "max_grad_norm": self.max_grad_norm,
                "num_workers": self.num_workers, "progress": self.progress}

    def _save_run(self, accelerator, result: RunResult, params: Mapping[str, Any], val: MTLData, mappings,
                  preds_path: Path) -> None:
        """Rank 0 writes the validation predictions CSV and, when ``save_model``, the whole model."""
        if not accelerator.is_main_process:
            return
        inverse = {c: {i: lab for lab, i in mappings[c].items()} for c in self.task_columns}
        table = val_predictions_table(result.logits, result.labels, [val.cell_ids[i] for i in result.rows],
                                      self.task_columns, inverse)
        write_csv(table, preds_path, index=False)

    def _save_model(self, accelerator, result: RunResult, params: Mapping[str, Any]) -> None:
        if accelerator.is_main_process:
            result.model.save(Path(self.model_save_path) / MODEL_DIR,
                              {**params, "val_loss": result.val_loss, "task_columns": self.task_columns})

    # ---- public steps --------------------------------------------------------------------------
    def run_optuna_study(self):
        """Optuna search minimising the validation loss; the best model is saved with its pooling.

        Returns the study; ``best_trial.params`` and ``{model_save_path}/GeneformerMultiTask`` hold the winner.
        """
        import optuna

        self._require("task_columns", "train_path", "val_path", "pretrained_path", "model_save_path", "results_dir")
        accelerator = self._accelerator()
        train, val, mappings = self._data(accelerator)
        num_labels = [len(mappings[c]) for c in self.task_columns]
        writer = self._writer(accelerator)
        best = {"loss": math.inf}
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="minimize", study_name=self.study_name,
                                    sampler=optuna.samplers.TPESampler(seed=self.seed), load_if_exists=True)

        def objective(trial):
            params = self._suggest(trial)
            result = train_once(self._run_config(), params, train, val, num_labels, self.task_columns,
                                accelerator, writer)
            trial.set_user_attr("metrics", result.metrics)
            trial_dir = Path(self.results_dir) / f"trial_{trial.number}"
            self._save_run(accelerator, result, params, val, mappings, trial_dir / "val_preds.csv")
            if result.val_loss < best["loss"]:
                best["loss"] = result.val_loss
                self._save_model(accelerator, result, params)
            if self.use_wandb and accelerator.is_main_process:
                import wandb

                wandb.log({"val_loss": result.val_loss, **{f"{t}_{k}": v for t, m in result.metrics.items()
                                                           for k, v in m.items()}})
            return result.val_loss

        if self.use_wandb and accelerator.is_main_process:
            import wandb

            wandb.init(project=self.wandb_project, config=self.config)
        study.optimize(objective, n_trials=int(self.n_trials))
        if accelerator.is_main_process:
            write_csv(study.trials_dataframe(), Path(self.results_dir) / "optuna_trials.csv", index=False)
            (Path(self.results_dir) / "best_hyperparameters.json").write_text(
                json.dumps({"params": study.best_trial.params, "val_loss": study.best_value}, indent=2,
                           default=_json_default))
        if writer is not None:
            writer.close()
        return study

    def run_manual_tuning(self) -> dict:
        """Train once with ``manual_hyperparameters``; saves the model and ``manual_run_val_preds.csv``.

        Returns ``{"val_loss": ..., "metrics": {task: {"macro_f1", "accuracy", "loss"}}}``.
        """
        self._require("task_columns", "train_path", "val_path", "pretrained_path", "model_save_path", "results_dir")
        if not self.use_manual_hyperparameters:
            raise ValueError("run_manual_tuning needs use_manual_hyperparameters=True.")
        accelerator = self._accelerator()
        train, val, mappings = self._data(accelerator)
        num_labels = [len(mappings[c]) for c in self.task_columns]
        params = dict(self.manual_hyperparameters)
        tw = params.get("task_weights")
        if tw is not None and len(tw) != len(self.task_columns):
            if len(set(tw)) == 1:  # the default [1, 1] for any number of tasks
                params["task_weights"] = [tw[0]] * len(self.task_columns)
            else:
                raise ValueError(f"manual task_weights has {len(tw)} values for {len(self.task_columns)} tasks.")
        writer = self._writer(accelerator)
        result = train_once(self._run_config(), params, train, val, num_labels, self.task_columns, accelerator, writer)
        self._save_run(accelerator, result, params, val, mappings, Path(self.results_dir) / "manual_run_val_preds.csv")
        self._save_model(accelerator, result, params)
        if writer is not None:
            writer.close()
        return {"val_loss": result.val_loss, "metrics": result.metrics}

    def load_and_evaluate_test_model(self) -> dict:
        """Predict ``test_path`` with the saved model; writes ``{results_dir}/test_preds.csv`` (Cell ID,
        ``{task} Prediction``, ``{task} Probabilities``). Returns per-task metrics when the test data has labels."""
        self._require("task_columns", "test_path", "model_save_path", "results_dir")
        folder = Path(self.model_save_path) / MODEL_DIR
        model = GeneformerMultiTask.load(folder)
        mappings_path = Path(self.results_dir) / "task_label_mappings.pkl"
        if not mappings_path.is_file():
            raise FileNotFoundError(f"{mappings_path} is missing; it is written when training (run a study first).")
        mappings = load_pickle(mappings_path)
        test = load_split(self.test_path, self.task_columns, mappings, "test", require_labels=False)
        from ..inference import validate_sequences

        validate_sequences(test.seqs, model.bert.config, what="the test data")
        accelerator = self._accelerator()
        loader = make_loader(test, self.batch_size, False, self.seed)
        model_p, loader = accelerator.prepare(model, loader)
        logits, labels, idx = _predict(model_p, loader, accelerator, len(self.task_columns))
        accelerator.free_memory()
        metrics = {}
        if (labels >= 0).any():
            _, metrics = evaluate_tasks(logits, labels, model.task_weights.tolist(), self.task_columns)
        if accelerator.is_main_process:
            inverse = {c: {i: lab for lab, i in mappings[c].items()} for c in self.task_columns}
            df = pd.DataFrame({"Cell ID": [test.cell_ids[i] for i in idx]})
            for t, name in enumerate(self.task_columns):
                probs = _softmax(logits[t])
                df[f"{name} Prediction"] = [inverse[name][int(i)] for i in probs.argmax(1)]
                df[f"{name} Probabilities"] = [",".join(f"{p:.6g}" for p in row) for row in probs]
            write_csv(df, Path(self.results_dir) / "test_preds.csv", index=False)
        return metrics


__all__ = ["AttentionPool", "GeneformerMultiTask", "MTLClassifier", "label_mappings"]
