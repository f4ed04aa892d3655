"""Optuna hyperparameter search for cell and gene classifiers, on the same Trainer path as single runs.

Each trial draws its hyperparameters with :func:`geneformer.train._hyperopt.suggest`, trains with
evaluation every epoch (pruned by the median rule) and keeps its model only when it is the best so
far: ``best_trial/`` always holds the best trial's model, ``best_trial.json`` describes it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal, Mapping

from .._utils import atomic_folder, doc_params, move_contents
from . import _hyperopt as ho
from ._classification_data import load_labelled
from ._classification_task import DOCS, ClassifierTask, TrainingOptions
from ._classification_training import build_classifier_trainer, load_training_model, save_trained

logger = logging.getLogger(__name__)


def search_space(model_directory: Any, num_classes: int, task: ClassifierTask, options: TrainingOptions,
                 ) -> dict[str, tuple]:
    """``options.hyperopt_space``, else the default space for the model's depth and the run's epochs
    and batch size; in the normalised form."""
    if options.hyperopt_space:
        return ho.normalise_space(options.hyperopt_space)
    probe = load_training_model(model_directory, task, num_classes, options)
    n_layers = int(probe.config.num_hidden_layers)
    del probe
    epochs = int(options.training_args.get("num_train_epochs", 1))
    bs = int(options.training_args.get("per_device_train_batch_size", 12))
    return ho.normalise_space(ho.default_space(n_layers, epochs, bs))


@doc_params(**DOCS)
def search_classifier(
    model_directory: Any,
    num_classes: int,
    train_data: Any,
    eval_data: Any,
    output_directory: str | os.PathLike,
    task: ClassifierTask,
    options: TrainingOptions,
    *,
    id_class_dict: Mapping[int, Any] | None = None,
    n_trials: int = 100,
    direction: Literal["maximize", "minimize"] = "maximize",
    metric: str = "eval_macro_f1",
    pruner: Any = "median",
) -> ho.HyperoptResult:
    """Optuna search maximising eval macro-F1 (median pruning at each epoch's evaluation).

    The best trial's model is saved in ``output_directory/best_trial`` (reload it with
    :func:`geneformer.models.load_finetuned`) and described in ``best_trial.json``; all trials are in
    ``trials.csv`` and the study in ``optuna.db`` (a second call resumes the study).

    Args:
        {model_directory}
        {num_classes}
        {train_data}
        eval_data: labelled evaluation cells (required).
        {output_directory}
        {task}
        {options}
        id_class_dict: the class names recorded in the models' config.
        n_trials: trials to run.
        direction: "maximize" or "minimize" ``metric``.
        metric: the evaluation metric reported to Optuna.
        pruner: "median", None (no pruning) or an Optuna pruner.
    """
    if eval_data is None or options.no_eval:
        raise ValueError("Hyperparameter search needs evaluation data (no_eval must be False).")
    out = Path(output_directory)
    out.mkdir(parents=True, exist_ok=True)
    train_data, eval_data = load_labelled(train_data), load_labelled(eval_data)
    space = search_space(model_directory, num_classes, task, options)
    best_dir = out / "best_trial"
    state = {"best": None}
    if (out / "best_trial.json").is_file() and best_dir.is_dir():  # a resumed study keeps its best model
        state["best"] = float(ho.read_best(out)["value"])

    def objective(trial: Any) -> float:
        params = ho.trainer_params(ho.suggest(trial, space))
        trial_dir = out / f"trial_{trial.number}"
        overrides = {**params, "eval_strategy": "epoch", "save_strategy": "no", "load_best_model_at_end": False}
        trainer = build_classifier_trainer(model_directory, num_classes, train_data, eval_data, trial_dir, task,
                                           options, id_class_dict=id_class_dict, overrides=overrides,
                                           callbacks=[ho.OptunaPruningCallback(trial, metric)])
        try:
            trainer.train()
            value = float(trainer.evaluate()[metric])
            better = state["best"] is None or (value > state["best"] if direction == "maximize"
                                               else value < state["best"])
            if better:
                state["best"] = value
                save_trained(trainer, trial_dir, model_directory, num_classes, task, options, id_class_dict)
                with atomic_folder(best_dir) as tmp:
                    move_contents(trial_dir, tmp)
                ho.write_best(out, {"trial": trial.number, "value": value, "params": params,
                                    "metric": metric, "model_dir": str(best_dir)})
            return value
        finally:
            shutil.rmtree(trial_dir, ignore_errors=True)
            del trainer

    study = ho.run_search(objective, n_trials, out, direction=direction, seed=options.seed, pruner=pruner,
                          study_name=f"geneformer_{task.kind}_classifier")
    return ho.study_result(study, out)
