"""One-call fine-tuning and prediction (``geneformer finetune`` / ``geneformer predict``).

:func:`finetune` prepares the labels, holds out a stratified test split, splits the rest into
train / validation, trains (or runs an Optuna search), then scores the test split. Layout::

    OUTPUT/data/finetune_{id_class_dict.pkl, labeled_train.dataset, labeled_test.dataset}
    OUTPUT/model/            fine-tuned model (or LoRA adapter) + geneformer_finetune.json
    OUTPUT/metrics.json      test macro-F1, accuracy, ROC-AUC, sizes, classes
    OUTPUT/finetune_{test_metrics_dict.pkl, pred_dict.pkl, predictions.csv, conf_mat.png}

:func:`predict` scores a tokenized dataset with a fine-tuned folder: one row per cell (cell
classifiers) or per gene (gene classifiers: class probabilities averaged over the gene's positions).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import plotting
from .._constants import ClassifierHead, ClassifierKind
from .._utils import (
    InputFileError,
    ModelLoadError,
    check_choice,
    check_fraction,
    check_positive_int,
    doc_params,
    refuse_existing,
    save_dataset,
    write_csv,
    write_json,
)
from .._utils._docs import doc_filter_data, doc_progress
from ._classification_data import column, load_labelled, select_rows
from ._classification_genes import fold_datasets, gene_folds
from ._classification_prepare import prepare_classifier_data
from ._classification_search import search_classifier
from ._classification_splits import two_way_split
from ._classification_task import CLASSIFIER_KINDS, TrainingOptions, classifier_task
from ._classification_training import train_classifier
from ._evaluation import cell_id_column, evaluate_saved_classifier

logger = logging.getLogger(__name__)

PREFIX = "finetune"


@dataclass
class FinetuneResult:
    """Where the fine-tuned model went and how it scored on the held-out test split."""

    output_dir: Path
    model_dir: Path
    metrics: dict = field(default_factory=dict)
    id_class_dict: dict = field(default_factory=dict)


def model_vocab_version(model: str | os.PathLike) -> str:
    """"V1"/"V2" of a model folder (from ``vocab_size``) or zoo name."""
    from ..models import check_model_folder, get_spec, vocab_version_for_size

    path = Path(model)
    if path.is_dir():
        check_model_folder(path)  # before the data are prepared: a bad folder leaves nothing behind
    if (path / "config.json").is_file():
        meta = path / "geneformer_finetune.json"
        if meta.is_file() and json.loads(meta.read_text()).get("model_version"):
            return json.loads(meta.read_text())["model_version"]
        size = json.loads((path / "config.json").read_text()).get("vocab_size")
        version = vocab_version_for_size(size) if size else None
        if version is None:
            raise ValueError(f"Model {model} has a custom vocabulary (vocab_size {size}); only the published V1/V2 "
                             "vocabularies are supported by finetune.")
        return version
    try:
        return get_spec(str(model)).vocab_version
    except KeyError as exc:
        raise ValueError(f"{model!r} is neither a model folder (with config.json) nor a zoo model name.") from exc


@doc_params(filter_data=doc_filter_data, progress=doc_progress)
def finetune(
    dataset: Any,
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    label: str | None = None,
    classifier: ClassifierKind = "cell",
    gene_class_dict: Mapping[Any, list] | None = None,
    epochs: float | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    freeze_layers: int = 0,
    lora: Any = False,
    n_trials: int = 0,
    test_size: float = 0.1,
    eval_size: float = 0.1,
    seed: int = 42,
    max_ncells: int | None = None,
    filter_data: Mapping[str, Any] | None = None,
    rare_threshold: float = 0,
    class_weights: Any = None,
    training_args: Mapping[str, Any] | None = None,
    hyperopt_space: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    token_dictionary_file: str | os.PathLike | None = None,
    head: ClassifierHead = "first",
    early_stopping: int | None = None,
    epoch_summary: bool = False,
) -> FinetuneResult:
    """Fine-tune ``model`` on a tokenized ``dataset`` (folder or Dataset) and score a held-out test split.

    Cell classifiers predict ``label`` (a dataset column); gene classifiers predict the classes of
    ``gene_class_dict`` ({class: [Ensembl IDs]}), with genes (not cells) held out for validation/test.
    ``n_trials > 0`` runs an Optuna search (macro-F1 on the validation split) and keeps the best trial.

    Args:
        dataset: tokenized cells with the label column.
        model: the pretrained model: a zoo name or a model folder.
        output_dir: the run folder (its ``model/`` must be new).
        label: cell classifiers: the dataset column with the classes.
        classifier: "cell" or "gene".
        gene_class_dict: gene classifiers: ``{class: [Ensembl IDs]}``.
        epochs, learning_rate, batch_size: training (None: the reference's defaults).
        freeze_layers: freeze the first N encoder layers.
        lora: True or LoraConfig options: train LoRA adapters and the head only.
        n_trials: > 0: an Optuna search with this many trials.
        test_size, eval_size: the test and validation fractions.
        seed: splits, shuffles and training.
        max_ncells: use at most this many cells.
        {filter_data}
        rare_threshold: drop classes with at most this fraction of the cells.
        class_weights: None, "balanced" or per-class loss weights.
        training_args: more ``TrainingArguments`` fields.
        hyperopt_space: the search space (None: the default).
        {progress}
        token_dictionary_file: a custom vocabulary's token dictionary (instead of V1/V2).
        head: a cell classifier's pooling: "first" (the reference's pooler on the first position),
            "mean" (mean of the genes' states; far ahead in the README's fine-tuning benchmark) or
            "cls" (the ``<cls>`` state; V2 models, whose cells start with it).
        early_stopping: stop after this many epochs without a better validation macro-F1 (the best
            epoch's model is kept); None trains every epoch.
        epoch_summary: print one line per epoch (training and validation loss, macro-F1, accuracy)
            through the progress output (not when progress is off).
    """
    check_choice("classifier", classifier, CLASSIFIER_KINDS)
    check_positive_int("batch_size", batch_size, allow_none=True)
    if epochs is not None and not epochs > 0:
        raise ValueError(f"epochs must be a positive number; got {epochs!r}.")
    if classifier == "cell" and not label:
        raise ValueError("A cell classifier needs label=<dataset column with the classes>.")
    if classifier == "gene" and not gene_class_dict:
        raise ValueError("A gene classifier needs gene_class_dict={class: [Ensembl IDs]} (--gene-classes FILE).")
    check_fraction("test_size", test_size)
    check_fraction("eval_size", eval_size)
    if test_size + eval_size >= 1:
        raise ValueError(f"test_size ({test_size}) and eval_size ({eval_size}) must sum below 1.")
    out = Path(output_dir)
    model_dir = out / "model"
    if model_dir.exists() and any(model_dir.iterdir()):
        raise ValueError(f"{model_dir} already exists; choose another --output or delete it.")
    # a custom token dictionary (a vocabulary built with build-vocab) stands in for V1/V2
    version = "V2" if token_dictionary_file is not None else model_vocab_version(model)
    targs = dict(training_args or {})
    if epochs is not None:
        targs["num_train_epochs"] = epochs
    if learning_rate is not None:
        targs["learning_rate"] = learning_rate
    if batch_size is not None:
        targs["per_device_train_batch_size"] = batch_size
        targs["per_device_eval_batch_size"] = batch_size
    task = classifier_task(classifier, state_key=label, gene_class_dict=gene_class_dict, model_version=version,
                           token_dictionary_file=token_dictionary_file)
    if head == "cls" and classifier == "cell" and version == "V1":
        raise ValueError('head="cls" needs a V2 model (V1 cells have no <cls> token); use "mean" or "first".')
    options = TrainingOptions(training_args=targs, freeze_layers=freeze_layers, lora=lora,
                              class_weights=class_weights, seed=seed, progress=progress, hyperopt_space=hyperopt_space,
                              head=head, early_stopping=early_stopping, epoch_summary=epoch_summary)
    data_dir = out / "data"
    prepared = prepare_classifier_data(dataset, data_dir, PREFIX, task, filter_data=filter_data,
                                       rare_threshold=rare_threshold, max_ncells=max_ncells, seed=seed,
                                       test_size=test_size)
    paths, id_class_dict = prepared.paths, prepared.id_class_dict
    n_classes = len(id_class_dict)
    if classifier == "cell":
        full = load_labelled(paths["train"])
        tr, va = two_way_split(full, eval_size / (1 - test_size), sides=("train", "eval"), seed=seed,
                               id_class_dict=id_class_dict, what="train/validation split")
        train_ds, eval_ds = select_rows(full, tr), select_rows(full, va)
        test_ds = load_labelled(paths["test"])
    else:
        full = load_labelled(paths["labeled"])
        token_class = task.token_class(id_class_dict)
        n_splits = max(2, int(round(1 / (test_size + eval_size))))
        fold = gene_folds(token_class, n_splits, eval_size, test_size, seed=0)[0]
        train_ds, eval_ds, test_ds = fold_datasets(full, token_class, fold, task.vocab_size, max_ncells=max_ncells,
                                                   seed=seed)
        test_ds = eval_ds if test_ds is None else test_ds
        save_dataset(test_ds, data_dir / f"{PREFIX}_labeled_test.dataset")

    if n_trials and n_trials > 0:
        result = search_classifier(model, n_classes, train_ds, eval_ds, out / "hyperopt", task, options,
                                   id_class_dict=id_class_dict, n_trials=n_trials)
        shutil.copytree(result.best_model_dir, model_dir, dirs_exist_ok=True)
    else:
        train_classifier(model, n_classes, train_ds, eval_ds, model_dir, task, options, id_class_dict=id_class_dict)

    metrics = evaluate_saved_classifier(model_dir, id_class_dict, test_ds, out, PREFIX, task,
                                        batch_size=options.forward_batch_size, progress=progress)
    plotting.plot_confusion_matrices({"test": metrics["conf_matrix"]}, out, PREFIX, fmt="png")
    if metrics.get("all_roc_metrics"):
        plotting.plot_roc({"Geneformer": metrics["all_roc_metrics"]}, None, "Test ROC", out / f"{PREFIX}_roc.png")
    summary = {
        "macro_f1": metrics["macro_f1"], "accuracy": metrics["acc"], "roc_auc": metrics.get("roc_auc"),
        "n_train": len(train_ds), "n_validation": len(eval_ds), "n_test": len(test_ds),
        "classes": [str(id_class_dict[i]) for i in range(n_classes)], "classifier": classifier,
        "model": str(model), "vocab": version, "head": head if classifier == "cell" else None,
    }
    write_json(out / "metrics.json", summary, default=str)
    return FinetuneResult(out, model_dir, summary, id_class_dict)


def _id2label(model: Any, folder: Path) -> dict[int, str]:
    from ..models import read_finetune_meta

    meta = read_finetune_meta(folder)
    if meta.get("id2label"):
        return {int(k): v for k, v in meta["id2label"].items()}
    return {int(k): v for k, v in (model.config.id2label or {}).items()}


def _check_finetuned(folder: Path) -> None:
    """A folder without a trained classification head would give random predictions: refused."""
    from ..models import read_finetune_meta

    if read_finetune_meta(folder).get("kind") or (folder / "adapter_config.json").is_file():
        return
    try:
        arch = (json.loads((folder / "config.json").read_text()).get("architectures") or ["?"])[0]
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder} is not a model folder (config.json: {exc}).") from exc
    if "Classification" not in arch:
        raise ModelLoadError(f"{folder} is not a fine-tuned classifier (its model is {arch}): its classification "
                             "head would be random. Fine-tune it first (`geneformer finetune`) and predict with "
                             "OUTPUT/model.")


def predict(dataset: Any, model_dir: str | os.PathLike, output_csv: str | os.PathLike | None = None, *,
            batch_size: int | None = 100, device: Any = None, progress: bool | None = None,
            overwrite: bool = False) -> pd.DataFrame:
    """Predict with a fine-tuned model (a folder, or a hub repository id); writes ``output_csv`` when given
    and returns the table (an existing ``output_csv`` is refused unless ``overwrite``).

    Cell classifiers: ``cell_id`` (when the dataset has one), ``row``, ``pred_label``, ``prob_<class>``.
    Gene classifiers: one row per gene seen — ``gene``, ``token_id``, ``n_positions``, ``pred_label``
    and the class probabilities averaged over its positions.
    """
    import torch

    from ..data import as_sequences, load_tokenized
    from ..inference import run_model
    from ..models import finetuned_folder, finetuned_kind, load_finetuned, read_finetune_meta

    folder = finetuned_folder(model_dir)
    check_positive_int("batch_size", batch_size, allow_none=True)
    if output_csv is not None:
        if Path(output_csv).is_dir():
            raise InputFileError(f"--output {output_csv} is a folder; give a CSV file name.")
        refuse_existing(output_csv, overwrite)
    _check_finetuned(folder)
    ds = load_tokenized(dataset)
    kind = finetuned_kind(folder)
    model = load_finetuned(folder, kind, device=device)
    id2label = _id2label(model, folder)
    n_classes = int(model.config.num_labels)
    names = [id2label.get(i, str(i)) for i in range(n_classes)]
    seqs = as_sequences(ds)
    if kind == "cell_classifier":
        logits = np.zeros((len(seqs), n_classes), dtype=np.float32)
        for rows, out in run_model(model, seqs, batch_size=batch_size, progress=progress):
            logits[rows] = out.logits.float().cpu().numpy()
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        table = pd.DataFrame({"row": np.arange(len(seqs))})
        id_col = cell_id_column(ds)
        if id_col:
            table.insert(0, "cell_id", column(ds, id_col))
        table["pred_label"] = [names[i] for i in probs.argmax(1)]
    else:
        vocab_size = int(model.config.vocab_size)
        sums = np.zeros((vocab_size, n_classes), dtype=np.float64)
        counts = np.zeros(vocab_size, dtype=np.int64)
        for rows, out in run_model(model, seqs, batch_size=batch_size, progress=progress):
            p = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()
            for j, r in enumerate(rows):
                toks = seqs.row(int(r))
                np.add.at(sums, toks, p[j, : len(toks)])
                np.add.at(counts, toks, 1)
        seen = np.flatnonzero(counts)
        probs = sums[seen] / counts[seen, None]
        version = read_finetune_meta(folder).get("model_version") or model_vocab_version_of(model)
        gene_names: dict[int, str] = {}
        if version:
            from ..vocab import GeneVocab

            gene_names = GeneVocab.load(version).id_to_token
        table = pd.DataFrame({"gene": [gene_names.get(int(t), int(t)) for t in seen], "token_id": seen,
                              "n_positions": counts[seen]})
        table["pred_label"] = [names[i] for i in probs.argmax(1)]
    for i, name in enumerate(names):
        table[f"prob_{name}"] = probs[:, i]
    if output_csv is not None:
        write_csv(output_csv, table, index=False)
    return table


def model_vocab_version_of(model: Any) -> str | None:
    from ..models import vocab_version_for_size

    return vocab_version_for_size(int(model.config.vocab_size))
