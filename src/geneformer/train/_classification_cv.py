"""Validation and cross-validation of cell and gene classifiers, and training on all data.

Each split trains (or runs a hyperparameter search) and is evaluated on its held-out part; the
results are pooled over folds. Output layout (the reference's)::

    {output_directory}/{YYMMDD}_geneformer_{cell|gene}Classifier_{prefix}/
        {prefix}_eval_metrics_dict.pkl          pooled validation metrics
        {prefix}_test_metrics_dict.pkl          gene classifiers with held-out test genes
        ksplit{i}/                              each split's model, checkpoints and predictions
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._utils import doc_params, save_dataset, write_pickle
from ._classification_data import as_id_class_dict, load_labelled, select_rows, shuffled
from ._classification_genes import fold_datasets, gene_folds, prepare_gene_split
from ._classification_search import search_classifier
from ._classification_splits import cell_folds, two_way_split
from ._classification_task import DOCS, ClassifierTask, TrainingOptions
from ._classification_training import train_classifier
from ._evaluation import aggregate_folds, evaluate_classifier

logger = logging.getLogger(__name__)

DEFAULT_SPLIT_SIZES = {"train": 0.8, "valid": 0.1, "test": 0.1}

DOCS_CV = dict(
    DOCS,
    data="""data: the prepared labelled cells (a folder or Dataset), shuffled here with the seed.""",
    output_prefix="""output_prefix: prefix of the run's folder and files.""",
    max_ncells="""max_ncells: gene classifiers: at most this many cells per split (after shuffling).""",
    gene_balance="""gene_balance: binary gene classifiers: drop majority-class genes of the training split
            until both classes occur about equally often.""",
)


def eval_fraction(split_sizes: Mapping[str, float]) -> float:
    """The validation share of the cells that are not held out for testing."""
    return split_sizes["valid"] / (split_sizes["train"] + split_sizes["valid"])


def classifier_output_dir(output_directory: str | os.PathLike, output_prefix: str, kind: str) -> Path:
    """``{output_directory}/{YYMMDD}_geneformer_{kind}Classifier_{prefix}`` (created)."""
    stamp = datetime.datetime.now().strftime("%y%m%d")
    out = Path(output_directory) / f"{stamp}_geneformer_{kind}Classifier_{output_prefix}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def train_or_search(model_directory: Any, num_classes: int, train_data: Any, eval_data: Any,
                    output_directory: Path, task: ClassifierTask, options: TrainingOptions, *,
                    id_class_dict: Mapping[int, Any] | None = None, n_trials: int = 0,
                    predict_trainer: bool = False) -> Any:
    """Train one split (or search ``n_trials`` hyperparameter draws); the trained model in eval mode."""
    if n_trials > 0:
        from ..models import load_finetuned

        result = search_classifier(model_directory, num_classes, train_data, eval_data, output_directory, task,
                                   options, id_class_dict=id_class_dict, n_trials=n_trials)
        return load_finetuned(result.best_model_dir, task.model_type, num_labels=num_classes)
    trainer = train_classifier(model_directory, num_classes, train_data, eval_data, output_directory, task, options,
                               id_class_dict=id_class_dict, predict=predict_trainer and task.kind == "cell")
    return trainer.model.eval()


def _cell_splits(ds: Any, out: Path, prefix: str, options: TrainingOptions, num_splits: int, eval_size: float,
                 id_class_dict: Mapping[int, Any], **split_kw: Any) -> list:
    if num_splits == 1:
        return [two_way_split(ds, eval_size, sides=("train", "eval"), seed=options.seed,
                              balance_csv=out / f"{prefix}_train_valid_balance_df.csv", id_class_dict=id_class_dict,
                              what="train/validation split", **split_kw)]
    return cell_folds(ds, num_splits, seed=options.seed, attr_to_split=split_kw["attr_to_split"],
                      id_class_dict=id_class_dict)


@doc_params(**DOCS_CV)
def cross_validate_classifier(
    model_directory: Any,
    data: Any,
    id_class_dict: Mapping[int, Any] | str | os.PathLike,
    output_directory: str | os.PathLike,
    output_prefix: str,
    task: ClassifierTask,
    options: TrainingOptions,
    *,
    num_splits: int = 1,
    split_sizes: Mapping[str, float] = DEFAULT_SPLIT_SIZES,
    split_id_dict: Mapping[str, Any] | None = None,
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
    max_ncells: int | None = None,
) -> dict:
    """Train and evaluate on one split or ``num_splits`` folds; returns (and with ``save_eval_output``
    pickles as ``{prefix}_eval_metrics_dict.pkl``) the summed confusion matrix and per-fold
    macro-F1 / accuracy / ROC.

    Cell classifiers: one split by ``split_id_dict`` ({attr_key, train, eval}), by ``attr_to_split``
    with balanced ``attr_to_balance``, or stratified with the validation share of ``split_sizes``; k
    stratified folds (grouped by ``attr_to_split``) otherwise. Gene classifiers hold out genes: k
    stratified gene folds (k from ``split_sizes`` for one split), each held-out part divided into
    validation and test genes.

    Args:
        {model_directory}
        {data}
        {id_class_dict}
        {output_directory}
        {output_prefix}
        {task}
        {options}
        num_splits: 1 (one split) or k >= 2 folds.
        split_sizes: ``{"train", "valid", "test"}`` fractions.
        split_id_dict, attr_to_split, attr_to_balance, max_trials, pval_threshold: the cell split (as
            :func:`two_way_split`).
        {gene_balance}
        save_eval_output: write the pooled metrics.
        predict_eval: write each split's predictions.
        predict_trainer: cell classifiers: also write the Trainer's predictions.
        n_hyperopt_trials: > 0: each split runs an Optuna search and its best model is evaluated.
        save_gene_split_datasets: write each gene split's datasets in its folder.
        debug_gene_split_datasets: log the sizes of the gene splits.
        {max_ncells}
    """
    if num_splits == 0:
        raise ValueError("num_crossval_splits=0 means training on all data: use train_all_data().")
    if gene_balance and task.kind == "gene" and len(task.gene_class_tokens or {}) != 2:
        raise ValueError("gene_balance is only for binary gene classifiers.")
    id_class_dict = as_id_class_dict(id_class_dict)
    num_classes = len(id_class_dict)
    ds = shuffled(load_labelled(data), options.seed)
    out = classifier_output_dir(output_directory, output_prefix, task.kind)
    run = dict(task=task, options=options, id_class_dict=id_class_dict, n_trials=n_hyperopt_trials)
    evaluate = dict(task=task, batch_size=options.forward_batch_size, progress=options.progress,
                    predict=predict_eval)
    results, test_results = [], []
    if task.kind == "cell":
        splits = _cell_splits(ds, out, output_prefix, options, num_splits, eval_fraction(split_sizes), id_class_dict,
                              split_id_dict=split_id_dict, attr_to_split=attr_to_split,
                              attr_to_balance=attr_to_balance, max_trials=max_trials, pval_threshold=pval_threshold)
        for i, (tr, te) in enumerate(splits, start=1):
            ksplit = out / f"ksplit{i}"
            train_ds, eval_ds = select_rows(ds, tr), select_rows(ds, te)
            model = train_or_search(model_directory, num_classes, train_ds, eval_ds, ksplit,
                                    predict_trainer=predict_trainer, **run)
            results.append(evaluate_classifier(model, eval_ds, id_class_dict, output_directory=ksplit,
                                               output_prefix=output_prefix, **evaluate))
    else:
        token_class = task.token_class(id_class_dict)
        s = split_sizes
        n_folds = num_splits if num_splits > 1 else max(2, int(round(1 / max(1 - s["train"], 1e-9))))
        folds = gene_folds(token_class, n_folds, s["valid"], s["test"], seed=0, id_class_dict=id_class_dict)
        for i, fold in enumerate(folds[: max(num_splits, 1)], start=1):
            ksplit = out / f"ksplit{i}"
            train_ds, eval_ds, test_ds = fold_datasets(ds, token_class, fold, task.vocab_size, balance=gene_balance,
                                                       max_ncells=max_ncells, seed=options.seed)
            if save_gene_split_datasets:
                for name, d in (("train", train_ds), ("valid", eval_ds), ("test", test_ds)):
                    if d is not None:
                        save_dataset(d, ksplit / f"{output_prefix}_{name}_gene_labeled_ksplit{i}.dataset")
            if debug_gene_split_datasets:
                logger.info("ksplit%d: %d train, %d valid, %d test cells", i, len(train_ds), len(eval_ds),
                            len(test_ds) if test_ds is not None else 0)
            model = train_or_search(model_directory, num_classes, train_ds, eval_ds, ksplit, **run)
            results.append(evaluate_classifier(model, eval_ds, id_class_dict, output_directory=ksplit,
                                               output_prefix=output_prefix, **evaluate))
            if test_ds is not None:
                test_results.append(evaluate_classifier(model, test_ds, id_class_dict, output_directory=ksplit,
                                                        output_prefix=f"{output_prefix}_test", **evaluate))
    if test_results and save_eval_output:
        write_pickle(out / f"{output_prefix}_test_metrics_dict.pkl", aggregate_folds(test_results))
    metrics = aggregate_folds(results)
    if save_eval_output:
        write_pickle(out / f"{output_prefix}_eval_metrics_dict.pkl", metrics)
    logger.info("validation macro-F1 per split: %s", [round(x, 4) for x in metrics["macro_f1"]])
    return metrics


@doc_params(**DOCS_CV)
def train_classifier_all_data(
    model_directory: Any,
    data: Any,
    id_class_dict: Mapping[int, Any] | str | os.PathLike,
    output_directory: str | os.PathLike,
    output_prefix: str,
    task: ClassifierTask,
    options: TrainingOptions,
    *,
    gene_balance: bool = False,
    max_ncells: int | None = None,
) -> Any:
    """Train on every prepared cell (no evaluation split) into the dated run folder; returns the trainer.

    Args:
        {model_directory}
        {data}
        {id_class_dict}
        {output_directory}
        {output_prefix}
        {task}
        {options}
        {gene_balance}
        {max_ncells}
    """
    from dataclasses import replace

    id_class_dict = as_id_class_dict(id_class_dict)
    ds = shuffled(load_labelled(data), options.seed)
    if task.kind == "gene":
        ds = prepare_gene_split(ds, task.token_class(id_class_dict), task.vocab_size, balance=gene_balance,
                                max_ncells=max_ncells, seed=options.seed, what="gene_class_dict")
    out = classifier_output_dir(output_directory, output_prefix, task.kind)
    return train_classifier(model_directory, len(id_class_dict), ds, None, out, task, replace(options, no_eval=True),
                            id_class_dict=id_class_dict)
