"""The Hugging Face ``Trainer`` pieces of fine-tuning: metrics, weighted loss, arguments, freezing."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .._constants import IGNORE_INDEX
from ._console import quiet_trainer_console


def trainer_metrics(eval_pred) -> dict[str, float]:
    """``compute_metrics``: accuracy and macro-F1 over arg-max, ignoring -100 labels (gene tasks)."""
    from sklearn.metrics import accuracy_score, f1_score

    logits = eval_pred.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    labels = np.asarray(eval_pred.label_ids)
    preds = np.asarray(logits).argmax(-1)
    keep = labels != IGNORE_INDEX
    y, p = labels[keep], preds[keep]
    if len(y) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    return {"accuracy": float(accuracy_score(y, p)),
            "macro_f1": float(f1_score(y, p, average="macro", zero_division=0))}


class ClassifierTrainer(Trainer):
    """``Trainer`` with optional per-class loss weights (cross-entropy, -100 ignored)."""

    def __init__(self, *args: Any, class_weights: Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        quiet_trainer_console(self)
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.class_weights is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        weight = self.class_weights.to(logits.device, logits.dtype)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 weight=weight, ignore_index=IGNORE_INDEX)
        return (loss, outputs) if return_outputs else loss


def training_arguments(**kw: Any) -> TrainingArguments:
    """``TrainingArguments`` across transformers 4.x/5.x field names; unknown fields raise a clear error.

    Accepts either spelling of the renamed fields: ``evaluation_strategy``/``eval_strategy``,
    ``group_by_length``/``train_sampling_strategy="group_by_length"``, and ``warmup_ratio``
    (transformers 5 takes the fraction through ``warmup_steps``). Fields that a version dropped
    (``overwrite_output_dir``, ``logging_dir``, ``save_safetensors``) are left out there.
    """
    fields = TrainingArguments.__dataclass_fields__
    if "evaluation_strategy" in kw and "eval_strategy" in fields:
        kw["eval_strategy"] = kw.pop("evaluation_strategy")
    if "eval_strategy" in kw and "eval_strategy" not in fields:
        kw["evaluation_strategy"] = kw.pop("eval_strategy")
    if "group_by_length" in kw and "group_by_length" not in fields:
        if kw.pop("group_by_length"):
            kw["train_sampling_strategy"] = "group_by_length"
    if "warmup_ratio" in kw and "warmup_ratio" not in fields:
        kw["warmup_steps"] = float(kw.pop("warmup_ratio"))
    for gone in ("overwrite_output_dir", "logging_dir", "save_safetensors"):
        if gone not in fields:
            kw.pop(gone, None)
    unknown = sorted(k for k in kw if k not in fields)
    if unknown:
        raise ValueError(f"Unknown training argument(s) {unknown} for transformers TrainingArguments.")
    return TrainingArguments(**kw)


class EpochSummary(TrainerCallback):
    """After each evaluation, one line through our progress output (``tqdm.write``, so it sits
    above any bar): epoch, mean training loss since the last line, validation loss, macro-F1 and
    accuracy. No logging set-up needed; the caller adds it only when progress is shown."""

    def __init__(self, write: Any = None) -> None:
        if write is None:
            from tqdm.auto import tqdm

            write = tqdm.write
        self.write = write
        self._seen = 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        history = state.log_history[self._seen:]
        self._seen = len(state.log_history)
        losses = [h["loss"] for h in history if "loss" in h]
        m = metrics or {}
        parts = [f"epoch {state.epoch:.2f}/{args.num_train_epochs:g}"]
        if losses:
            parts.append(f"train loss {sum(losses) / len(losses):.4f}")
        for key, name in (("eval_loss", "validation loss"), ("eval_macro_f1", "macro-F1"),
                          ("eval_accuracy", "accuracy")):
            if key in m:
                parts.append(f"{name} {m[key]:.4f}")
        self.write(", ".join(parts))
