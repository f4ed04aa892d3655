"""Fine-tuning one split: a ready ``Trainer`` (model with LoRA/quantization, frozen layers, fused
attention dropout, class weights, the reference's arguments), training, and saving the model
atomically with a record of what it is."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._constants import IGNORE_INDEX, ClassifierKind
from .._utils import (
    ClassifierDataError,
    atomic_folder,
    doc_params,
    move_contents,
    show_progress,
    trainer_device_args,
    write_pickle,
)
from ..data import as_sequences
from ..inference import validate_sequences
from ._classification_data import as_id_class_dict, column, load_labelled
from ._classification_task import DOCS, ClassifierTask, TrainingOptions, check_class_weights
from ._dropout_attention import use_fused_attention_dropout
from ._trainer import ClassifierTrainer, EpochSummary, trainer_metrics, training_arguments

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")


def has_final_model(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` already holds trained weights (full model or adapter)."""
    return any((Path(folder) / w).is_file() for w in WEIGHT_FILES)


def default_training_args(kind: ClassifierKind, model: Any) -> dict[str, Any]:
    """The reference's defaults (SPEC 5.4), before ``training_args`` overrides."""
    cell = kind == "cell"
    args: dict[str, Any] = dict(
        per_device_train_batch_size=12,
        per_device_eval_batch_size=12,
        num_train_epochs=10 if cell else 1,
        eval_strategy="epoch" if cell else "no",
        load_best_model_at_end=cell,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        save_strategy="epoch",
        save_total_limit=1,
        weight_decay=0.001,
        length_column_name="length",
        learning_rate=5e-5,
        lr_scheduler_type="linear",
        warmup_steps=0,
    )
    if int(model.config.num_hidden_layers) == 6:  # the V1 6-layer model's published recipe
        args.update(learning_rate=5e-5, lr_scheduler_type="linear", warmup_steps=500)
    return args


def build_training_arguments(kind: ClassifierKind, model: Any, n_train: int, output_directory: str | os.PathLike,
                             has_eval: bool, options: TrainingOptions,
                             overrides: Mapping[str, Any] | None = None) -> Any:
    """``TrainingArguments``: defaults, then ``options.training_args``, then ``overrides``; logging
    every tenth of an epoch; no evaluation (nor best-model reloading) without evaluation data."""
    args = default_training_args(kind, model)
    args.update(options.training_args)
    args.update(overrides or {})
    args.pop("freeze_layers", None)
    if "evaluation_strategy" in args:
        args["eval_strategy"] = args.pop("evaluation_strategy")
    bs = int(args.get("per_device_train_batch_size", 12))
    args["logging_steps"] = max(1, round(n_train / bs / 10))
    args["output_dir"] = str(output_directory)
    if not has_eval:
        args["eval_strategy"] = "no"
        args["load_best_model_at_end"] = False
    if args.get("load_best_model_at_end") and args.get("save_strategy") != args.get("eval_strategy"):
        args["save_strategy"] = args.get("eval_strategy")
    args.setdefault("seed", options.seed)
    args.setdefault("report_to", options.report_to)
    args.setdefault("disable_tqdm", not show_progress(options.progress))
    for name, value in trainer_device_args().items():
        args.setdefault(name, value)
    return training_arguments(**args)


def load_training_model(model_directory: Any, task: ClassifierTask, num_classes: int, options: TrainingOptions,
                        id_class_dict: Mapping[int, Any] | None = None) -> Any:
    """The classifier to train: a new head on the pretrained model, with LoRA or quantization."""
    from ..models import load_classifier

    return load_classifier(model_directory, task.model_type, num_classes, quantize=options.quantize,
                           lora=options.lora, id2label=id_class_dict,
                           head=options.head if task.kind == "cell" else "first")


def training_columns(ds: Any, label_column: str) -> Any:
    """``ds`` with only the columns training reads (labels, ``input_ids``, ``length``)."""
    keep = [c for c in (label_column, "input_ids", "length") if c in ds.column_names]
    if label_column not in keep:
        raise KeyError(
            f"The dataset has no {label_column!r} column; run prepare_data first (columns: {ds.column_names})."
        )
    drop = [c for c in ds.column_names if c not in keep]
    return ds.remove_columns(drop) if drop else ds


def class_weights_for(labels: np.ndarray, num_classes: int, spec: Any) -> list[float] | None:
    """Per-class loss weights: None, "balanced" (n / (C * count)), or an explicit list/dict."""
    check_class_weights(spec)
    if spec is None or spec is False:
        return None
    if isinstance(spec, str):
        labels = labels[labels != IGNORE_INDEX]
        counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(float)
        w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
        return w.tolist()
    if isinstance(spec, Mapping):
        return [float(spec.get(i, 1.0)) for i in range(num_classes)]
    w = [float(x) for x in spec]
    if len(w) != num_classes:
        raise ValueError(f"class_weights has {len(w)} values but there are {num_classes} classes.")
    return w


@doc_params(**DOCS)
def build_classifier_trainer(
    model_directory: Any,
    num_classes: int,
    train_data: Any,
    eval_data: Any,
    output_directory: str | os.PathLike,
    task: ClassifierTask,
    options: TrainingOptions,
    *,
    id_class_dict: Mapping[int, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] | None = None,
) -> ClassifierTrainer:
    """A ready ``Trainer`` (model loaded, layers frozen, arguments resolved); nothing trained yet.

    Args:
        {model_directory}
        {num_classes}
        {train_data}
        {eval_data}
        {output_directory}
        {task}
        {options}
        id_class_dict: the class names recorded in the model's config (``id2label``).
        overrides: ``TrainingArguments`` fields over ``options.training_args`` (a search trial's
            draw; ``freeze_layers`` here overrides ``options.freeze_layers``).
        callbacks: ``TrainerCallback`` objects.
    """
    from transformers import set_seed

    from ..models import freeze_encoder_layers

    train_data = training_columns(load_labelled(train_data), task.label_column)
    eval_data = None if (options.no_eval or eval_data is None) else training_columns(load_labelled(eval_data),
                                                                                     task.label_column)
    # the new head (and pooler) are initialised from the global RNG: seed it for reproducible runs
    set_seed(int({**options.training_args, **(overrides or {})}.get("seed", options.seed)))
    model = load_training_model(model_directory, task, num_classes, options, id_class_dict)
    validate_sequences(as_sequences(train_data), model, what="the training data")
    if eval_data is not None:
        validate_sequences(as_sequences(eval_data), model, what="the evaluation data")
    labels = np.asarray(column(train_data, task.label_column), dtype=object)
    flat = np.concatenate([np.asarray(x, dtype=np.int64).ravel() for x in labels]) if task.kind == "gene" \
        else labels.astype(np.int64)
    if flat.max(initial=-1) >= num_classes:
        raise ClassifierDataError(f"The training labels go up to {int(flat.max())} but num_classes={num_classes}.")
    freeze_encoder_layers(model, (overrides or {}).get("freeze_layers", options.freeze_layers))
    use_fused_attention_dropout(model)  # exact attention dropout at the fused kernel's speed on CPU
    args = build_training_arguments(task.kind, model, len(train_data), output_directory, eval_data is not None,
                                    options, overrides)
    weights = class_weights_for(flat, num_classes, options.class_weights)
    return ClassifierTrainer(model=model, args=args, data_collator=task.collator(), train_dataset=train_data,
                             eval_dataset=eval_data, compute_metrics=trainer_metrics, class_weights=weights,
                             callbacks=list(callbacks or []) + _option_callbacks(args, options))


def _option_callbacks(args: Any, options: TrainingOptions) -> list:
    """Early stopping on the validation metric and the epoch summary, as the options ask."""
    from transformers import EarlyStoppingCallback

    evaluates = str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "no"
    out: list = []
    if options.early_stopping is not None:
        if not (evaluates and args.load_best_model_at_end and args.metric_for_best_model):
            logger.warning("early_stopping needs per-epoch validation (cell classifiers with validation data); "
                           "training every epoch instead.")
        else:
            out.append(EarlyStoppingCallback(early_stopping_patience=int(options.early_stopping)))
    if options.epoch_summary and evaluates and show_progress(options.progress):
        out.append(EpochSummary())
    return out


def save_trained(trainer: Any, output_directory: str | os.PathLike, model_directory: Any, num_classes: int,
                 task: ClassifierTask, options: TrainingOptions,
                 id_class_dict: Mapping[int, Any] | None = None) -> Path:
    """Write the final weights (or adapter) into ``output_directory`` beside its checkpoints, staged
    in a temporary folder, plus ``geneformer_finetune.json`` and the trainer state."""
    from ..models import write_finetune_meta

    out = Path(output_directory)
    staged = out / ".final"
    with atomic_folder(staged) as tmp:
        trainer.save_model(str(tmp))
    move_contents(staged, out)
    base = Path(str(model_directory))
    write_finetune_meta(
        out, kind=task.model_type, num_labels=int(num_classes),
        id2label={int(k): str(v) for k, v in (id_class_dict or {}).items()},
        base_model=str(base.resolve()) if base.exists() else str(model_directory),
        lora=bool(options.lora) or bool(options.quantize), model_version=task.model_version,
        cell_pooling=options.head if task.kind == "cell" else "first",
    )
    trainer.save_state()
    return out


@doc_params(**DOCS)
def train_classifier(
    model_directory: Any,
    num_classes: int,
    train_data: Any,
    eval_data: Any,
    output_directory: str | os.PathLike,
    task: ClassifierTask,
    options: TrainingOptions,
    *,
    id_class_dict: Mapping[int, Any] | str | os.PathLike | None = None,
    predict: bool = False,
) -> ClassifierTrainer:
    """Fine-tune on ``train_data`` (evaluating on ``eval_data`` each epoch for cell classifiers), save
    the final model (or LoRA adapter) in ``output_directory`` and return the trainer.

    Checkpoints go to ``output_directory/checkpoint-*``; with ``options.resume_from_checkpoint`` the
    run continues from the last (or the given) checkpoint. A folder that already holds a trained
    model is refused otherwise.

    Args:
        {model_directory}
        {num_classes}
        {train_data}
        {eval_data}
        {output_directory}
        {task}
        {options}
        {id_class_dict}
        predict: also write the evaluation predictions (``predictions.pkl``, a ``PredictionOutput``)
            and ``eval_results.json``.
    """
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(output_directory)
    resume = options.resume_from_checkpoint
    if resume is True:
        resume = get_last_checkpoint(str(out)) if out.is_dir() else None
        if resume is None:
            raise ValueError(f"No checkpoint-* folder in {out} to resume from.")
    if has_final_model(out) and not resume:
        raise ValueError(
            f"{out} already holds a trained model; choose another output_directory, delete it, or set "
            "resume_from_checkpoint=True to continue from its checkpoints."
        )
    out.mkdir(parents=True, exist_ok=True)
    id_class_dict = as_id_class_dict(id_class_dict) if id_class_dict is not None else None
    trainer = build_classifier_trainer(model_directory, num_classes, train_data, eval_data, out, task, options,
                                       id_class_dict=id_class_dict)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    save_trained(trainer, out, model_directory, num_classes, task, options, id_class_dict)
    if predict and trainer.eval_dataset is not None:
        preds = trainer.predict(trainer.eval_dataset)
        write_pickle(out / "predictions.pkl", preds)
        trainer.save_metrics("eval", preds.metrics)
    return trainer
