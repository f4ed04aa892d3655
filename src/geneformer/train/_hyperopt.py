"""Hyperparameter search with Optuna: search spaces, trial suggestions and Trainer pruning.

A search space maps a hyperparameter to a spec:

* ``("loguniform", low, high)``, ``("uniform", low, high)``, ``("int", low, high)``,
  ``("logint", low, high)``, ``("choice", [a, b, ...])`` — or the same as a dict ``{"type": ...,
  "low": ..., "high": ..., "choices": [...]}``; the multi-task trainer's (and Optuna's) dict form
  ``{"type": "float" | "int", "low": ..., "high": ..., "log": bool}`` or ``{"type": "categorical",
  "choices": [...]}`` is the same thing;
* a list (a choice), or a scalar (fixed).

Both the classifier search and the multi-task search draw through :func:`suggest`.

Known names: ``learning_rate``, ``weight_decay``, ``lr_scheduler_type``, ``warmup_steps`` (an int,
or a float < 1 meaning a fraction of the steps), ``warmup_ratio``, ``num_train_epochs``, ``seed``,
``per_device_train_batch_size`` and ``freeze_layers``; other names are passed to
``TrainingArguments`` when it has such a field.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from transformers import TrainerCallback

from .._utils import check_positive_int, write_csv, write_json

logger = logging.getLogger(__name__)

_KINDS = ("loguniform", "uniform", "int", "logint", "choice")


def default_space(n_layers: int, epochs: int = 1, batch_size: int = 12) -> dict[str, Any]:
    """The default search space (the reference's, with warm-up as a fraction of the steps)."""
    return {
        "learning_rate": ("loguniform", 1e-6, 1e-3),
        "weight_decay": ("uniform", 0.0, 0.3),
        "lr_scheduler_type": ("choice", ["linear", "cosine", "polynomial"]),
        "warmup_steps": ("uniform", 0.0, 0.2),
        "num_train_epochs": ("choice", [int(epochs)]),
        "seed": ("int", 0, 100),
        "per_device_train_batch_size": ("choice", [int(batch_size)]),
        "freeze_layers": ("int", 0, max(0, int(n_layers) - 1)),
    }


def normalise_spec(name: str, spec: Any) -> tuple:
    """Any accepted spec form → ``(kind, ...)`` (``("fixed", value)`` for scalars)."""
    if isinstance(spec, Mapping):
        kind = str(spec.get("type", "")).lower()
        if kind in ("choice", "categorical") or "choices" in spec:
            return ("choice", list(spec["choices"]))
        log = bool(spec.get("log"))
        if kind == "float":
            kind = "loguniform" if log else "uniform"
        elif kind == "int" and log:
            kind = "logint"
        if kind in _KINDS:
            return (kind, spec["low"], spec["high"])
        raise ValueError(f"Search space entry {name!r}: unknown type {spec.get('type')!r}; use one of {_KINDS}.")
    if isinstance(spec, tuple) and spec and isinstance(spec[0], str) and spec[0].lower() in _KINDS:
        kind = spec[0].lower()
        if kind == "choice":
            return ("choice", list(spec[1]))
        if len(spec) != 3 or spec[1] > spec[2]:
            raise ValueError(f"Search space entry {name!r}: {spec!r} must be ({kind!r}, low, high) with low <= high.")
        return (kind, spec[1], spec[2])
    if isinstance(spec, list):
        return ("choice", list(spec))
    if hasattr(spec, "sample") and hasattr(spec, "domain_str"):
        raise ValueError(
            f"Search space entry {name!r} is a Ray Tune object; Ray is not used here. Write it as "
            "('loguniform', low, high), ('uniform', low, high), ('int', low, high) or ('choice', [...])."
        )
    return ("fixed", spec)


def normalise_space(space: Mapping[str, Any]) -> dict[str, tuple]:
    return {name: normalise_spec(name, spec) for name, spec in space.items()}


def suggest(trial: Any, space: Mapping[str, tuple]) -> dict[str, Any]:
    """Draw one value per hyperparameter from an Optuna trial."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "fixed":
            params[name] = spec[1]
        elif kind == "choice":
            params[name] = trial.suggest_categorical(name, spec[1])
        elif kind in ("int", "logint"):
            params[name] = trial.suggest_int(name, int(spec[1]), int(spec[2]), log=kind == "logint")
        else:
            params[name] = trial.suggest_float(name, float(spec[1]), float(spec[2]), log=kind == "loguniform")
    return params


def trainer_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drawn hyperparameters as ``TrainingArguments`` overrides (transformers 5 takes a warm-up
    fraction through ``warmup_steps``)."""
    params = dict(params)
    if "warmup_ratio" in params:
        params["warmup_steps"] = float(params.pop("warmup_ratio"))
    return params


class OptunaPruningCallback(TrainerCallback):
    """Reports an evaluation metric to an Optuna trial at each evaluation and prunes bad trials."""

    def __init__(self, trial: Any, metric: str = "eval_macro_f1") -> None:
        self.trial = trial
        self.metric = metric
        self._reported: set[int] = set()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import optuna

        if not metrics or self.metric not in metrics:
            return
        step = int(round(state.epoch or 0)) if state.epoch is not None else state.global_step
        if step in self._reported:  # the final evaluate() repeats the last epoch's
            return
        self._reported.add(step)
        self.trial.report(float(metrics[self.metric]), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {step}: {self.metric}={metrics[self.metric]:.4f}")


@dataclass
class HyperoptResult:
    """Outcome of a search: the best trial's parameters, value and saved model."""

    best_params: dict
    best_value: float
    best_trial: int
    best_model_dir: Path | None
    study: Any = field(repr=False, default=None)
    trials: Any = field(repr=False, default=None)  # DataFrame of all trials

    # the reference returns a transformers BestRun with these names
    @property
    def hyperparameters(self) -> dict:
        return self.best_params

    @property
    def objective(self) -> float:
        return self.best_value


def create_study(output_directory: Path | None, *, direction: str, seed: int, study_name: str,
                 pruner: Any = "median", storage: str | None = None):
    """An Optuna study with a seeded TPE sampler; saved in ``output_directory/optuna.db`` when given."""
    import optuna

    if pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    elif pruner is None:
        pruner = optuna.pruners.NopPruner()
    if storage is None and output_directory is not None:
        storage = f"sqlite:///{Path(output_directory).resolve() / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed),
                               pruner=pruner, study_name=study_name, storage=storage, load_if_exists=True)


def write_best(output_directory: Path, result: dict) -> Path:
    """Record the best trial so far (parameters, value, model folder) in ``best_trial.json``."""
    return write_json(Path(output_directory) / "best_trial.json", result, default=str)


def read_best(output_directory: str | os.PathLike) -> dict:
    """The ``best_trial.json`` a search wrote (parameters, value, model folder)."""
    path = Path(output_directory) / "best_trial.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the hyperparameter search first.")
    return json.loads(path.read_text())


def run_search(objective: Callable[[Any], float], n_trials: int, output_directory: Path, *, direction: str,
               seed: int = 42, study_name: str = "geneformer_classifier", pruner: Any = "median",
               storage: str | None = None):
    """Run ``n_trials`` of ``objective`` and return the study (trials table written as CSV)."""
    import optuna

    n_trials = check_positive_int("n_trials", n_trials)
    study = create_study(output_directory, direction=direction, seed=seed, study_name=study_name,
                         pruner=pruner, storage=storage)
    study.optimize(objective, n_trials=n_trials, catch=())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"All {len(study.trials)} trials were pruned or failed; widen the search space.")
    try:
        write_csv(Path(output_directory) / "trials.csv", study.trials_dataframe(), index=False)
    except Exception as exc:  # the table is a convenience; never fail the search for it
        logger.debug("could not write trials.csv: %s", exc)
    return study


def study_result(study: Any, output_directory: str | os.PathLike) -> HyperoptResult:
    """The outcome of a finished search whose objective recorded its best trial with :func:`write_best`."""
    import optuna

    best = read_best(output_directory)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return HyperoptResult(best_params=best["params"], best_value=best["value"], best_trial=best["trial"],
                          best_model_dir=Path(best["model_dir"]), study=study,
                          trials=study.trials_dataframe() if done else None)
