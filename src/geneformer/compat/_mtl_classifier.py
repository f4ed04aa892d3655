"""TODO docstring."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..models import GeneformerMultiTask
from ..models._multitask import _json_default
from ..train._classification_data import column, load_pickle, save_pickle, sorted_labels, write_csv
from ..train._multitask import (
    DEFAULT_HYPERPARAMETERS,
    DEFAULT_MANUAL_HYPERPARAMETERS,
    MODEL_DIR,
    MTLData,
    RunResult,
    _predict,
    _softmax,
    evaluate_tasks,
    label_mappings,
    load_split,
    make_loader,
    train_once,
    val_predictions_table,
)

logger = logging.getLogger(__name__)


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
        from ..data import check_columns, load_tokenized

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
