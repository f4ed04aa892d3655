"""``Classifier``: fine-tune Geneformer to classify cells or genes (reference-compatible, SPEC 5).

Typical use (the reference's notebooks run unchanged)::

    cc = Classifier(classifier="cell", cell_state_dict={"state_key": "cell_type", "states": "all"},
                    training_args={"num_train_epochs": 1}, num_crossval_splits=1)
    cc.prepare_data("pbmc.dataset", "out", "pbmc")               # labels, splits, id_class_dict
    metrics = cc.validate("model_dir", "out/pbmc_labeled_train.dataset",
                          "out/pbmc_id_class_dict.pkl", "out", "pbmc")
    cc.evaluate_saved_model(".../ksplit1", "out/pbmc_id_class_dict.pkl",
                            "out/pbmc_labeled_test.dataset", "out", "pbmc")

The class translates the reference's arguments onto the classification functions of
:mod:`geneformer.train` (``prepare_classifier_data``, ``train_classifier``,
``cross_validate_classifier``, ``search_classifier``, ``evaluate_classifier``, ...).

Differences from the reference (all fixes): class ids follow the sorted labels; ``rare_threshold``
works; splits are stratified by class; the attribute-balanced split uses the best trial; every
evaluation example is scored and ties go to the lowest class id; unknown genes of a gene-class
dictionary are listed and dropped; cross-validation folds are stratified (by patient groups when
``attr_to_split`` is given); hyperparameter search uses Optuna (no Ray); LoRA keeps the head trainable.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import pandas as pd

from .. import plotting
from .._utils import check_choice, check_model_version, check_positive_int
from ..train import (
    ClassifierTask,
    HyperoptResult,
    TrainingOptions,
    as_id_class_dict,
    build_classifier_trainer,
    check_data_options,
    classifier_task,
    cross_validate_classifier,
    default_training_args,
    eval_fraction,
    evaluate_classifier,
    evaluate_saved_classifier,
    load_id_class_dict,
    load_predictions,
    prepare_classifier_data,
    save_trained,
    search_classifier,
    train_classifier,
    train_classifier_all_data,
)

logger = logging.getLogger(__name__)


class Classifier:
    """Fine-tune and evaluate cell (sequence) or gene (token) classifiers; see the module docstring.

    Reference arguments (SPEC 5.1) keep their meaning and defaults. Extra keyword arguments:
    ``lora`` (True / LoraConfig options: LoRA adapters on query/value, head trained),
    ``class_weights`` (None, "balanced" or per-class list: weighted cross-entropy),
    ``hyperopt_space`` (Optuna search space, see :mod:`geneformer.train._hyperopt`; ``ray_config``
    is accepted in the same format), ``seed`` (data shuffles and splits, default 42),
    ``resume_from_checkpoint`` (True or a checkpoint folder), ``report_to`` ("none", "tensorboard", ...)
    and ``progress`` (progress bars; None: ``settings.progress``).
    """

    valid_option_dict = {
        "classifier": {"cell", "gene"},
        "model_version": {"V1", "V2"},
    }

    def __init__(
        self,
        classifier: str | None = None,
        quantize: bool | int | Mapping = False,
        cell_state_dict: Mapping | None = None,
        gene_class_dict: Mapping | None = None,
        filter_data: Mapping | None = None,
        rare_threshold: float = 0,
        max_ncells: int | None = None,
        max_ncells_per_class: int | None = None,
        training_args: Mapping | None = None,
        ray_config: Mapping | None = None,
        freeze_layers: int = 0,
        num_crossval_splits: int = 1,
        split_sizes: Mapping[str, float] | None = None,
        stratify_splits_col: str | None = None,
        no_eval: bool = False,
        forward_batch_size: int = 100,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        nproc: int = 4,
        ngpu: int = 1,
        *,
        lora: bool | Mapping | Any = False,
        class_weights: str | Sequence[float] | Mapping | None = None,
        hyperopt_space: Mapping | None = None,
        seed: int = 42,
        resume_from_checkpoint: bool | str | os.PathLike | None = None,
        report_to: str | Sequence[str] = "none",
        progress: bool | None = None,
    ) -> None:
        self.classifier = classifier
        self.quantize = quantize
        self.cell_state_dict = dict(cell_state_dict) if cell_state_dict else None
        self.gene_class_dict = gene_class_dict
        self.filter_data = dict(filter_data) if filter_data else None
        self.rare_threshold = rare_threshold
        self.max_ncells = max_ncells
        self.max_ncells_per_class = max_ncells_per_class
        self.training_args = dict(training_args or {})
        self.ray_config = ray_config
        self.freeze_layers = freeze_layers
        self.num_crossval_splits = num_crossval_splits
        self.split_sizes = dict(split_sizes) if split_sizes is not None else {"train": 0.8, "valid": 0.1, "test": 0.1}
        self.stratify_splits_col = stratify_splits_col
        self.no_eval = no_eval
        self.forward_batch_size = forward_batch_size
        self.model_version = model_version
        self.token_dictionary_file = token_dictionary_file
        self.nproc = nproc
        self.ngpu = ngpu
        self.lora = lora
        self.class_weights = class_weights
        self.hyperopt_space = hyperopt_space if hyperopt_space is not None else ray_config
        self.seed = int(seed)
        self.resume_from_checkpoint = resume_from_checkpoint
        self.report_to = report_to
        self.progress = progress
        self.validate_options()
        task = classifier_task(self.classifier, state_key=self.state_key, gene_class_dict=self.gene_class_dict,
                               model_version=self.model_version, token_dictionary_file=self.token_dictionary_file)
        self.token_dictionary = task.token_dictionary
        self.vocab_size = task.vocab_size
        self.gene_class_tokens: dict[Any, list[int]] | None = task.gene_class_tokens
        self.unknown_genes: list[str] = list(task.unknown_genes)
        # the classes of the last prepared / validated data: the class names new models record
        self._id_class_dict: dict[int, Any] | None = None

    # ---- options -------------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self._task().model_type

    @property
    def label_column(self) -> str:
        return self._task().label_column

    @property
    def state_key(self) -> str | None:
        return self.cell_state_dict["state_key"] if self.cell_state_dict else None

    @property
    def eval_size(self) -> float:
        return eval_fraction(self.split_sizes)

    def _task(self) -> ClassifierTask:
        return ClassifierTask(self.classifier, self.token_dictionary, self.model_version, self.state_key,
                              self.gene_class_tokens, tuple(self.unknown_genes))

    def _options(self) -> TrainingOptions:
        return TrainingOptions(
            training_args=self.training_args, freeze_layers=self.freeze_layers, lora=self.lora,
            quantize=self.quantize, class_weights=self.class_weights, no_eval=self.no_eval, seed=self.seed,
            report_to=self.report_to, progress=self.progress, resume_from_checkpoint=self.resume_from_checkpoint,
            forward_batch_size=self.forward_batch_size, hyperopt_space=self.hyperopt_space)

    def validate_options(self) -> None:
        """Raise ValueError/TypeError naming the bad option and its valid values."""
        check_choice("classifier", self.classifier, sorted(self.valid_option_dict["classifier"]))
        self.model_version = check_model_version(self.model_version)
        if self.quantize:
            from ..models import check_quantization_available

            check_quantization_available()
        if self.classifier == "cell":
            if not self.cell_state_dict or set(self.cell_state_dict) != {"state_key", "states"}:
                raise ValueError(
                    "A cell classifier needs cell_state_dict={'state_key': <label column>, 'states': 'all' or "
                    f"[list of >= 2 states]}}; got {self.cell_state_dict!r}."
                )
            states = self.cell_state_dict["states"]
            if states != "all":
                if isinstance(states, str) or not isinstance(states, Sequence) or len(set(states)) < 2:
                    raise ValueError(
                        f"cell_state_dict['states'] must be 'all' or a list of >= 2 states, got {states!r}.")
                # a list of states is a filter on the label column (within any filter already there)
                self.filter_data = dict(self.filter_data or {})
                key = self.cell_state_dict["state_key"]
                if key in self.filter_data:
                    self.filter_data[key] = [s for s in states if s in set(self.filter_data[key])]
                else:
                    self.filter_data[key] = list(states)
            if self.gene_class_dict is not None:
                logger.warning("gene_class_dict is ignored by a cell classifier.")
        else:
            if self.gene_class_dict is None:
                raise ValueError("A gene classifier needs gene_class_dict={class label: [Ensembl IDs]}.")
            if self.cell_state_dict is not None:
                logger.warning("cell_state_dict is ignored by a gene classifier.")
        self.filter_data = check_data_options(self.filter_data, self.rare_threshold, self.max_ncells,
                                              self.max_ncells_per_class)
        check_positive_int("num_crossval_splits", self.num_crossval_splits, minimum=0)
        sizes = self.split_sizes
        if set(sizes) != {"train", "valid", "test"} or any(v < 0 for v in sizes.values()):
            raise ValueError(f"split_sizes needs non-negative 'train', 'valid' and 'test' fractions, got {sizes!r}.")
        if not math.isclose(sum(sizes.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"split_sizes must sum to 1, got {sum(sizes.values())} ({sizes}).")
        if sizes["train"] <= 0 or sizes["train"] + sizes["valid"] <= 0:
            raise ValueError("split_sizes['train'] must be > 0.")
        self._options()  # checks freeze_layers, forward_batch_size and class_weights

    # ---- data ----------------------------------------------------------------------------------
    def prepare_data(
        self,
        input_data_file: str | os.PathLike | Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
        split_id_dict: Mapping | None = None,
        test_size: float | None = None,
        attr_to_split: str | None = None,
        attr_to_balance: Sequence[str] | None = None,
        max_trials: int = 100,
        pval_threshold: float = 0.1,
        id_class_dict_path: str | os.PathLike | None = None,
    ) -> dict[str, Path]:
        """Filter, label and split a tokenized dataset; write the datasets and ``{prefix}_id_class_dict.pkl``.

        Returns the written paths: ``id_class_dict`` and ``train``/``test`` or ``labeled``.
        """
        prepared = prepare_classifier_data(
            input_data_file, output_directory, output_prefix, self._task(), filter_data=self.filter_data,
            rare_threshold=self.rare_threshold, max_ncells=self.max_ncells,
            max_ncells_per_class=self.max_ncells_per_class, seed=self.seed,
            test_size=self.split_sizes["test"] if test_size is None else test_size, split_id_dict=split_id_dict,
            attr_to_split=attr_to_split, attr_to_balance=attr_to_balance, max_trials=max_trials,
            pval_threshold=pval_threshold, id_class_dict=id_class_dict_path, stratify_column=self.stratify_splits_col)
        self._id_class_dict = prepared.id_class_dict
        return prepared.paths

    # ---- training ------------------------------------------------------------------------------
    def default_training_args(self, model: Any, n_train: int) -> dict[str, Any]:
        """The reference's defaults (SPEC 5.4), before ``training_args`` overrides."""
        return default_training_args(self.classifier, model)

    def build_trainer(self, model_directory: Any, num_classes: int, train_data: Any, eval_data: Any,
                      output_directory: str | os.PathLike, *, overrides: Mapping[str, Any] | None = None,
                      callbacks: Sequence[Any] | None = None) -> Any:
        """A ready ``Trainer`` (model loaded, layers frozen, arguments resolved); nothing trained yet."""
        return build_classifier_trainer(model_directory, num_classes, train_data, eval_data, output_directory,
                                        self._task(), self._options(), id_class_dict=self._id_class_dict,
                                        overrides=overrides, callbacks=callbacks)

    def train_classifier(
        self,
        model_directory: str | os.PathLike,
        num_classes: int,
        train_data: Any,
        eval_data: Any,
        output_directory: str | os.PathLike,
        predict: bool = False,
    ) -> Any:
        """Fine-tune on ``train_data`` (evaluating on ``eval_data`` each epoch for cell classifiers), save the
        final model (or LoRA adapter) in ``output_directory`` and return the trainer.

        Checkpoints go to ``output_directory/checkpoint-*``; with ``resume_from_checkpoint`` set on the
        Classifier the run continues from the last (or the given) checkpoint.
        """
        return train_classifier(model_directory, num_classes, train_data, eval_data, output_directory, self._task(),
                                self._options(), id_class_dict=self._id_class_dict, predict=predict)

    def save_trained(self, trainer: Any, out: Path, model_directory: Any, num_classes: int) -> None:
        """Write the final weights atomically into ``out`` plus ``geneformer_finetune.json`` and the state."""
        save_trained(trainer, out, model_directory, num_classes, self._task(), self._options(), self._id_class_dict)

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate_model(
        self,
        model: Any,
        num_classes: int,
        id_class_dict: Mapping[int, Any],
        eval_data: Any,
        predict: bool = False,
        output_directory: str | os.PathLike | None = None,
        output_prefix: str | None = None,
        predict_metadata: Sequence[str] | None = None,
    ) -> dict:
        """Score ``eval_data``: ``{"conf_mat", "macro_f1", "acc", "roc_metrics", "roc_auc", "class_report"}``.

        With ``predict``: writes ``{prefix}_pred_dict.pkl`` (pred_ids, label_ids, predictions, cell_ids,
        prediction_metadata) and ``{prefix}_predictions.csv`` in ``output_directory``.
        """
        return evaluate_classifier(model, eval_data, id_class_dict, self._task(), num_classes=num_classes,
                                   batch_size=self.forward_batch_size, progress=self.progress, predict=predict,
                                   output_directory=output_directory, output_prefix=output_prefix,
                                   predict_metadata=predict_metadata)

    def evaluate_saved_model(
        self,
        model_directory: str | os.PathLike,
        id_class_dict_file: str | os.PathLike,
        test_data_file: str | os.PathLike | Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
        predict: bool = True,
        predict_metadata: Sequence[str] | None = None,
    ) -> dict:
        """Evaluate a fine-tuned folder on held-out data; writes ``{prefix}_test_metrics_dict.pkl``."""
        return evaluate_saved_classifier(model_directory, id_class_dict_file, test_data_file, output_directory,
                                         output_prefix, self._task(), batch_size=self.forward_batch_size,
                                         progress=self.progress, predict=predict, predict_metadata=predict_metadata)

    # ---- validation / cross-validation ---------------------------------------------------------
    def validate(
        self,
        model_directory: str | os.PathLike,
        prepared_input_data_file: str | os.PathLike | Any,
        id_class_dict_file: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        split_id_dict: Mapping | None = None,
        attr_to_split: str | None = None,
        attr_to_balance: Sequence[str] | None = None,
        gene_balance: bool = False,
        max_trials: int = 100,
        pval_threshold: float = 0.1,
        save_eval_output: bool = True,
        predict_eval: bool = True,
        predict_trainer: bool = False,
        n_hyperopt_trials: int = 0,
        save_gene_split_datasets: bool = True,
        debug_gene_split_datasets: bool = False,
    ) -> dict:
        """Train and evaluate on one split or k cross-validation folds; returns (and pickles as
        ``{prefix}_eval_metrics_dict.pkl``) the summed confusion matrix and per-fold macro-F1/accuracy.

        Output goes to ``{output_directory}/{YYMMDD}_geneformer_{cell|gene}Classifier_{prefix}/ksplit{i}/``.
        With ``n_hyperopt_trials > 0`` each split runs an Optuna search; the best trial's model is evaluated.
        """
        self._id_class_dict = load_id_class_dict(id_class_dict_file)
        return cross_validate_classifier(
            model_directory, prepared_input_data_file, self._id_class_dict, output_directory, output_prefix,
            self._task(), self._options(), num_splits=int(self.num_crossval_splits), split_sizes=self.split_sizes,
            split_id_dict=split_id_dict, attr_to_split=attr_to_split, attr_to_balance=attr_to_balance,
            gene_balance=gene_balance, max_trials=max_trials, pval_threshold=pval_threshold,
            save_eval_output=save_eval_output, predict_eval=predict_eval, predict_trainer=predict_trainer,
            n_hyperopt_trials=n_hyperopt_trials, save_gene_split_datasets=save_gene_split_datasets,
            debug_gene_split_datasets=debug_gene_split_datasets, max_ncells=self.max_ncells)

    def train_all_data(
        self,
        model_directory: str | os.PathLike,
        prepared_input_data_file: str | os.PathLike | Any,
        id_class_dict_file: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        save_eval_output: bool = True,
        gene_balance: bool = False,
    ) -> Any:
        """Train on every prepared cell (no evaluation split); returns the trainer."""
        self._id_class_dict = load_id_class_dict(id_class_dict_file)
        return train_classifier_all_data(model_directory, prepared_input_data_file, self._id_class_dict,
                                         output_directory, output_prefix, self._task(), self._options(),
                                         gene_balance=gene_balance, max_ncells=self.max_ncells)

    # ---- hyperparameter search -----------------------------------------------------------------
    def hyperopt_classifier(
        self,
        model_directory: str | os.PathLike,
        num_classes: int,
        train_data: Any,
        eval_data: Any,
        output_directory: str | os.PathLike,
        n_trials: int = 100,
        *,
        direction: Literal["maximize", "minimize"] = "maximize",
        metric: str = "eval_macro_f1",
        pruner: Any = "median",
    ) -> HyperoptResult:
        """Optuna search maximising eval macro-F1 (Median pruning at each epoch's evaluation).

        The best trial's model is saved in ``output_directory/best_trial`` (reload it with
        :func:`geneformer.models.load_finetuned`) and described in ``best_trial.json``; all
        trials are in ``trials.csv`` and the study in ``optuna.db``. Returns a HyperoptResult.
        """
        return search_classifier(model_directory, num_classes, train_data, eval_data, output_directory, self._task(),
                                 self._options(), id_class_dict=self._id_class_dict, n_trials=n_trials,
                                 direction=direction, metric=metric, pruner=pruner)

    # ---- plots ---------------------------------------------------------------------------------
    def plot_conf_mat(self, conf_mat_dict: Mapping[str, pd.DataFrame] | pd.DataFrame, output_directory,
                      output_prefix: str, custom_class_order: Sequence[Any] | None = None,
                      fmt: str = "pdf") -> list[Path]:
        """Row-normalised confusion matrices: ``{prefix}_conf_mat.{fmt}`` (``{prefix}_{name}_conf_mat`` when
        several models are given)."""
        return plotting.plot_confusion_matrices(conf_mat_dict, output_directory, output_prefix, custom_class_order,
                                                fmt)

    def plot_roc(self, roc_metric_dict: Mapping[str, dict], model_style_dict: Mapping[str, dict] | None,
                 title: str, output_directory, output_prefix: str, fmt: str = "pdf") -> Path:
        """Mean ROC curves of binary classifiers: ``{prefix}_roc.{fmt}``."""
        fmt = plotting.check_plot_format(fmt)
        return plotting.plot_roc(roc_metric_dict, model_style_dict, title,
                                 Path(output_directory) / f"{output_prefix}_roc.{fmt}")

    def plot_predictions(self, predictions_file, id_class_dict_file, title: str, output_directory,
                         output_prefix: str, custom_class_order: Sequence[Any] | None = None,
                         kwargs_dict: Mapping[str, Any] | None = None, fmt: str = "pdf") -> Path:
        """Heat map of the predicted logits per item, grouped by true class: ``{prefix}_pred.{fmt}``."""
        fmt = plotting.check_plot_format(fmt)
        logits, label_ids = load_predictions(predictions_file)
        return plotting.plot_predictions(logits, label_ids, as_id_class_dict(id_class_dict_file), title,
                                         Path(output_directory) / f"{output_prefix}_pred.{fmt}",
                                         custom_class_order, kwargs_dict)


__all__ = ["Classifier"]
