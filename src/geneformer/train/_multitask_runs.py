"""Multi-task runs (``MTLClassifier``, SPEC 9.4): the Optuna study, the manual run and the test evaluation.

Files (written by rank 0 of a distributed run): ``{results_dir}/task_label_mappings.pkl`` (+ ``_val``),
``{results_dir}/trial_{n}/val_preds.csv`` (or ``manual_run_val_preds.csv``),
``{results_dir}/optuna_trials.csv``, ``{results_dir}/best_hyperparameters.json``,
``{results_dir}/test_preds.csv``, and the whole model in ``{model_save_path}/GeneformerMultiTask``.
TensorBoard gets the scalar "Training Loss" (running mean) per optimizer step when
``tensorboard_log_dir`` is set; wandb gets each trial's validation loss and metrics when ``use_wandb``.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .._utils import ClassifierDataError, load_plain_file, rank, world_size, write_csv, write_json, write_pickle
from ..inference import validate_sequences
from ..models import GeneformerMultiTask, load_encoder
from ._classification_data import column, sorted_labels
from ._hyperopt import create_study, normalise_space, suggest
from ._multitask import (
    MODEL_DIR,
    MULTITASK_HYPERPARAMETERS,
    MULTITASK_MANUAL_HYPERPARAMETERS,
    MTLData,
    RunResult,
    evaluate_tasks,
    inverse_mappings,
    label_mappings,
    load_split,
    predict_tasks,
    predictions_table,
    train_once,
    val_predictions_table,
)

logger = logging.getLogger(__name__)

MAPPINGS_FILE = "task_label_mappings.pkl"


@dataclass
class MultiTaskRun:
    """The options of a multi-task study or run (``MTLClassifier``'s arguments, SPEC 9.1).

    ``vocab`` ("V1"/"V2", a vocabulary folder or None) is checked against the pretrained model's
    vocabulary size by the model loader; ``wandb_config`` is what ``wandb.init`` records."""

    task_columns: Sequence[str] | None = None
    train_path: Any = None
    val_path: Any = None
    test_path: Any = None
    pretrained_path: Any = None
    model_save_path: Any = None
    results_dir: Any = None
    batch_size: int = 4
    n_trials: int = 15
    study_name: str = "mtl"
    max_layers_to_freeze: int | Mapping[str, int] | None = None
    epochs: int = 1
    tensorboard_log_dir: Any = None
    distributed_training: bool = False
    use_attention_pooling: bool = True
    use_task_weights: bool = True
    hyperparameters: Mapping[str, Any] = field(default_factory=lambda: dict(MULTITASK_HYPERPARAMETERS))
    manual_hyperparameters: Mapping[str, Any] = field(default_factory=lambda: dict(MULTITASK_MANUAL_HYPERPARAMETERS))
    use_wandb: bool = False
    wandb_project: str | None = None
    wandb_config: Mapping[str, Any] | None = None
    gradient_clipping: bool = False
    max_grad_norm: float | None = None
    gradient_accumulation_steps: int = 1
    seed: int = 42
    num_workers: int = 0
    progress: bool | None = None
    vocab: Any = None


def make_output_dirs(*folders: Any) -> None:
    """Create the output folders that are given (the reference makes them when constructed)."""
    for folder in folders:
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)


def _main() -> bool:
    return rank() == 0


# ------------------------------------------------------------------------------------------------
# Setup shared by the study and the manual run
# ------------------------------------------------------------------------------------------------
def prepare_data(run: MultiTaskRun) -> tuple[MTLData, MTLData, dict]:
    """The training and validation splits, labels mapped over the training split's sorted classes;
    writes ``task_label_mappings.pkl`` (and the validation split's own, ``_val``)."""
    from ..data import check_columns, load_tokenized

    train_ds = load_tokenized(run.train_path)
    check_columns(train_ds, run.task_columns, what="task (training data)")
    mappings = label_mappings(train_ds, run.task_columns)
    val_ds = load_tokenized(run.val_path)
    check_columns(val_ds, run.task_columns, what="task (validation data)")
    val_maps = {c: {lab: i for i, lab in enumerate(sorted_labels(column(val_ds, c)))} for c in run.task_columns}
    train = load_split(train_ds, run.task_columns, mappings, "training")
    val = load_split(val_ds, run.task_columns, mappings, "validation")
    if _main():
        write_pickle(Path(run.results_dir) / MAPPINGS_FILE, mappings)
        write_pickle(Path(run.results_dir) / "task_label_mappings_val.pkl", val_maps)
    return train, val, mappings


def _encoder(run: MultiTaskRun, train: MTLData) -> Any:
    """The pretrained encoder, loaded once for every trial (zoo name, folder or hub id)."""
    if run.distributed_training and world_size() == 1:
        logger.info("distributed_training=True but one process is running; launch with `accelerate launch` "
                    "or `torchrun --nproc_per_node N` to use several GPUs.")
    encoder = load_encoder(run.pretrained_path, run.vocab)
    validate_sequences(train.seqs, encoder, what="the training data")
    return encoder


def freeze_range(max_layers_to_freeze: int | Mapping[str, int] | None, n_layers: int) -> tuple[int, int]:
    """Bounds of the number of frozen layers a study draws (SPEC 9.1: None -> 1 .. n_layers - 1)."""
    if max_layers_to_freeze is None:
        return min(1, n_layers - 1), max(0, n_layers - 1)
    if isinstance(max_layers_to_freeze, Mapping):
        return int(max_layers_to_freeze["min"]), min(int(max_layers_to_freeze["max"]), n_layers)
    return int(max_layers_to_freeze), int(max_layers_to_freeze)


def search_space(run: MultiTaskRun, n_layers: int) -> dict[str, tuple]:
    """The study's space: the hyperparameters (task weights aside), one weight per task when
    ``use_task_weights`` and a range is given, and the number of frozen layers."""
    space = normalise_space({k: v for k, v in run.hyperparameters.items() if k != "task_weights"})
    tw = run.hyperparameters.get("task_weights")
    if run.use_task_weights and isinstance(tw, Mapping):
        for i in range(len(run.task_columns)):
            space[f"task_weight_{i}"] = ("uniform", float(tw["low"]), float(tw["high"]))
    space["max_layers_to_freeze"] = ("int", *freeze_range(run.max_layers_to_freeze, n_layers))
    return space


def draw_params(trial: Any, run: MultiTaskRun, space: Mapping[str, tuple]) -> dict[str, Any]:
    """One trial's hyperparameters; drawn task weights are normalised to sum to 1."""
    params = suggest(trial, space)
    raw = [params.pop(f"task_weight_{i}") for i in range(len(run.task_columns)) if f"task_weight_{i}" in params]
    tw = run.hyperparameters.get("task_weights")
    if raw:
        params["task_weights"] = [w / sum(raw) for w in raw]
    elif isinstance(tw, Sequence) and not isinstance(tw, str):
        params["task_weights"] = [float(w) for w in tw]
    params["use_attention_pooling"] = run.use_attention_pooling
    return params


@contextmanager
def _loss_logger(run: MultiTaskRun) -> Iterator[Any]:
    """``on_step(step, loss)`` writing the TensorBoard scalar "Training Loss" (None without a log dir)."""
    if run.tensorboard_log_dir is None or not _main():
        yield None
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("tensorboard is not installed; no TensorBoard logs.")
        yield None
        return
    writer = SummaryWriter(str(run.tensorboard_log_dir))
    try:
        yield lambda step, loss: writer.add_scalar("Training Loss", loss, step)
    finally:
        writer.close()


def _save_predictions(run: MultiTaskRun, result: RunResult, val: MTLData, mappings: Mapping, path: Path) -> None:
    table = val_predictions_table(result.logits, result.labels, [val.cell_ids[i] for i in result.rows],
                                  run.task_columns, inverse_mappings(mappings))
    write_csv(path, table, index=False)


def _save_model(run: MultiTaskRun, result: RunResult, params: Mapping[str, Any]) -> None:
    result.model.save(Path(run.model_save_path) / MODEL_DIR,
                      {**params, "val_loss": result.val_loss, "task_columns": list(run.task_columns)})


# ------------------------------------------------------------------------------------------------
# The three steps
# ------------------------------------------------------------------------------------------------
def run_multitask_study(run: MultiTaskRun) -> Any:
    """Optuna search minimising the validation loss (seeded TPE sampler, in memory); the best
    model is saved with its pooling. Returns the study."""
    train, val, mappings = prepare_data(run)
    encoder = _encoder(run, train)
    num_labels = [len(mappings[c]) for c in run.task_columns]
    space = search_space(run, int(encoder.config.num_hidden_layers))
    study = create_study(None, direction="minimize", seed=int(run.seed), study_name=run.study_name, pruner=None)
    wandb = None
    if run.use_wandb and _main():
        import wandb

        wandb.init(project=run.wandb_project, config=dict(run.wandb_config or {}))
    best = {"loss": math.inf}
    with _loss_logger(run) as on_step:
        def objective(trial: Any) -> float:
            params = draw_params(trial, run, space)
            result = train_once(run, params, train, val, num_labels, run.task_columns, encoder, on_step)
            trial.set_user_attr("metrics", result.metrics)
            if _main():
                _save_predictions(run, result, val, mappings,
                                  Path(run.results_dir) / f"trial_{trial.number}" / "val_preds.csv")
                if result.val_loss < best["loss"]:
                    _save_model(run, result, params)
                if wandb is not None:
                    wandb.log({"val_loss": result.val_loss, **{f"{t}_{k}": v for t, m in result.metrics.items()
                                                               for k, v in m.items()}})
            best["loss"] = min(best["loss"], result.val_loss)
            return result.val_loss

        study.optimize(objective, n_trials=int(run.n_trials))
    if _main():
        write_csv(Path(run.results_dir) / "optuna_trials.csv", study.trials_dataframe(), index=False)
        write_json(Path(run.results_dir) / "best_hyperparameters.json",
                   {"params": study.best_trial.params, "val_loss": study.best_value})
    return study


def run_multitask(run: MultiTaskRun) -> dict:
    """One run with ``manual_hyperparameters``; saves the model and ``manual_run_val_preds.csv``.

    Returns ``{"val_loss": ..., "metrics": {task: {"macro_f1", "accuracy", "loss"}}}``."""
    train, val, mappings = prepare_data(run)
    encoder = _encoder(run, train)
    num_labels = [len(mappings[c]) for c in run.task_columns]
    params = dict(run.manual_hyperparameters)
    tw = params.get("task_weights")
    n_tasks = len(run.task_columns)
    if tw is not None and len(tw) != n_tasks:
        if len(set(tw)) == 1:  # the default [1, 1] for any number of tasks
            params["task_weights"] = [tw[0]] * n_tasks
        else:
            raise ValueError(f"manual task_weights has {len(tw)} values for {n_tasks} tasks.")
    with _loss_logger(run) as on_step:
        result = train_once(run, params, train, val, num_labels, run.task_columns, encoder, on_step)
    if _main():
        _save_predictions(run, result, val, mappings, Path(run.results_dir) / "manual_run_val_preds.csv")
        _save_model(run, result, params)
    return {"val_loss": result.val_loss, "metrics": result.metrics}


def evaluate_multitask(run: MultiTaskRun) -> dict:
    """Predict ``test_path`` with the saved model; writes ``test_preds.csv`` (Cell ID, ``{task}
    Prediction``, ``{task} Probabilities``). Returns per-task metrics when the test data has labels."""
    model = GeneformerMultiTask.load(Path(run.model_save_path) / MODEL_DIR, map_location=None, vocab=run.vocab)
    mappings_path = Path(run.results_dir) / MAPPINGS_FILE
    if not mappings_path.is_file():
        raise FileNotFoundError(f"{mappings_path} is missing; it is written when training (run a study first).")
    mappings = load_plain_file(mappings_path, "task label mappings", error=ClassifierDataError)
    if not isinstance(mappings, dict):
        raise ClassifierDataError(f"{mappings_path} holds a {type(mappings).__name__}, expected {{task: {{label: id}}}}.")
    test = load_split(run.test_path, run.task_columns, mappings, "test", require_labels=False)
    validate_sequences(test.seqs, model, what="the test data")
    logits = predict_tasks(model, test.seqs, batch_size=run.batch_size, progress=run.progress)
    metrics = {}
    if (test.labels >= 0).any():
        _, metrics = evaluate_tasks(logits, test.labels, model.config.task_weights, run.task_columns)
    if _main():
        table = predictions_table(logits, test.cell_ids, run.task_columns, inverse_mappings(mappings))
        write_csv(Path(run.results_dir) / "test_preds.csv", table, index=False)
    return metrics


__all__ = ["MultiTaskRun", "draw_params", "evaluate_multitask", "freeze_range", "make_output_dirs", "prepare_data",
           "run_multitask", "run_multitask_study", "search_space"]
