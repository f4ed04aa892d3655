"""``MTLClassifier``: the reference's multi-task fine-tuning class (SPEC 9), translated onto
``geneformer.train``'s multi-task runs (``run_multitask_study``, ``run_multitask``,
``evaluate_multitask``)."""

from __future__ import annotations

import numbers
import os
from dataclasses import fields
from typing import Any, Mapping, Sequence

from .._utils import check_choice, check_model_version, check_positive_int
from ..train import (
    MULTITASK_HYPERPARAMETERS,
    MULTITASK_MANUAL_HYPERPARAMETERS,
    MultiTaskRun,
    evaluate_multitask,
    make_output_dirs,
    run_multitask,
    run_multitask_study,
)

_RUN_FIELDS = {f.name for f in fields(MultiTaskRun)}


class MTLClassifier:
    """Multi-task fine-tuning with hyperparameter search (reference-compatible arguments, SPEC 9.1).

    Differences from the reference: the encoder starts from ``pretrained_path`` (not random; a zoo
    name, a folder or a hub id), attention pooling ignores padding, the saved model keeps its
    pooling, validation labels only need to be a subset of the training labels, the model is saved as
    safetensors, and distribution is delegated to ``accelerate launch`` / ``torchrun`` (training runs
    on the Hugging Face ``Trainer``; ``distributed_training`` only documents the intent). TensorBoard
    logging is on when ``tensorboard_log_dir`` is given. ``model_version`` ("V1"/"V2", keyword only)
    makes the model loader check the pretrained model's vocabulary size.
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
        progress: bool | None = None,
        model_version: str | None = None,
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
        self.hyperparameters = dict(hyperparameters) if hyperparameters is not None else dict(MULTITASK_HYPERPARAMETERS)
        self.manual_hyperparameters = (dict(manual_hyperparameters) if manual_hyperparameters is not None
                                       else dict(MULTITASK_MANUAL_HYPERPARAMETERS))
        self.use_manual_hyperparameters = use_manual_hyperparameters
        self.use_wandb, self.wandb_project = use_wandb, wandb_project
        self.gradient_clipping, self.max_grad_norm = gradient_clipping, max_grad_norm
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.seed = seed
        self.num_workers = num_workers
        self.progress = progress
        self.model_version = model_version
        self.validate_options()
        make_output_dirs(self.model_save_path, self.results_dir)
        self.config = {k: v for k, v in vars(self).items() if not k.startswith("_")}

    # ---- options -------------------------------------------------------------------------------
    def validate_options(self) -> None:
        cols = self.task_columns
        if cols is not None and (not cols or not all(isinstance(c, str) for c in cols)):
            raise ValueError(f"task_columns must be a non-empty list of column names, got {self.task_columns!r}.")
        for name in ("batch_size", "n_trials", "epochs", "gradient_accumulation_steps"):
            check_positive_int(name, getattr(self, name))
        if self.gradient_clipping and not self.max_grad_norm:
            raise ValueError("gradient_clipping=True needs max_grad_norm (e.g. 1.0).")
        mlf = self.max_layers_to_freeze
        if mlf is not None and not isinstance(mlf, numbers.Integral):
            if not isinstance(mlf, Mapping) or set(mlf) != {"min", "max"} or mlf["min"] > mlf["max"] or mlf["min"] < 0:
                raise ValueError(f"max_layers_to_freeze must be None, an int or {{'min': a, 'max': b}}, got {mlf!r}.")
        for name, spec in self.hyperparameters.items():
            if isinstance(spec, Mapping):
                check_choice(f"hyperparameters[{name!r}] type", spec.get("type"), ("float", "int", "categorical"))
        if self.model_version is not None:
            self.model_version = check_model_version(self.model_version)
        if self.use_wandb:
            try:
                import wandb  # noqa: F401
            except ImportError as exc:
                raise ValueError("use_wandb=True needs the wandb package (pip install wandb).") from exc

    def _require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) in (None, [], "")]
        if missing:
            raise ValueError(f"MTLClassifier needs {', '.join(missing)} for this step.")

    def _run(self) -> MultiTaskRun:
        options = {k: v for k, v in vars(self).items() if k in _RUN_FIELDS}
        return MultiTaskRun(**options, wandb_config=self.config, vocab=self.model_version)

    @property
    def task_names(self) -> list[str]:
        return list(self.task_columns)

    # ---- public steps --------------------------------------------------------------------------
    def run_optuna_study(self):
        """Optuna search minimising the validation loss; the best model is saved with its pooling.

        Returns the study; ``best_trial.params`` and ``{model_save_path}/GeneformerMultiTask`` hold the winner.
        """
        self._require("task_columns", "train_path", "val_path", "pretrained_path", "model_save_path", "results_dir")
        return run_multitask_study(self._run())

    def run_manual_tuning(self) -> dict:
        """Train once with ``manual_hyperparameters``; saves the model and ``manual_run_val_preds.csv``.

        Returns ``{"val_loss": ..., "metrics": {task: {"macro_f1", "accuracy", "loss"}}}``.
        """
        self._require("task_columns", "train_path", "val_path", "pretrained_path", "model_save_path", "results_dir")
        if not self.use_manual_hyperparameters:
            raise ValueError("run_manual_tuning needs use_manual_hyperparameters=True.")
        return run_multitask(self._run())

    def load_and_evaluate_test_model(self) -> dict:
        """Predict ``test_path`` with the saved model; writes ``{results_dir}/test_preds.csv`` (Cell ID,
        ``{task} Prediction``, ``{task} Probabilities``). Returns per-task metrics when the test data has labels."""
        self._require("task_columns", "test_path", "model_save_path", "results_dir")
        return evaluate_multitask(self._run())
