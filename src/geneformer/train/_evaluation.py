"""Evaluating fine-tuned classifiers: batched prediction, metrics, ROC curves, prediction files.

Prediction uses the shared length-sorted forward pass (:func:`geneformer.inference.run_model`), so
every example is scored (the reference drops the last one when ``N % batch == 1``), batches are
padded only to their own longest cell, and the predicted class is the arg-max with ties going to
the lowest class id (never the string ``"tie"``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import CELL_ID_COLUMNS, IGNORE_INDEX, ClassifierKind
from .._utils import doc_params, write_csv, write_pickle
from ..data import as_sequences, check_columns
from ..inference import run_model
from ._classification_data import as_id_class_dict, column, load_labelled, load_pickle
from ._classification_task import DOCS, ClassifierTask

logger = logging.getLogger(__name__)

N_ROC_POINTS = 100


@dataclass
class Predictions:
    """Scored items (cells, or labelled gene positions) in input order."""

    logits: np.ndarray  # (n, C) float32
    label_ids: np.ndarray  # (n,) int, -100 when unknown
    cell_rows: np.ndarray  # (n,) row of the dataset each item comes from
    token_ids: np.ndarray | None = None  # (n,) gene token of each item (gene classifiers)
    extra: dict = field(default_factory=dict)

    @property
    def pred_ids(self) -> np.ndarray:
        # np.argmax returns the first maximum: ties go to the lowest class id
        return np.argmax(self.logits, axis=1) if len(self.logits) else np.zeros(0, dtype=np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def cell_id_column(ds: Any) -> str | None:
    return next((c for c in CELL_ID_COLUMNS if c in ds.column_names), None)


@doc_params(**DOCS)
def predict_classes(model: Any, data: Any, *, batch_size: int | None = 100, kind: ClassifierKind = "cell",
                    device: Any = None, progress: bool | None = None) -> Predictions:
    """Run a cell or gene classifier over a tokenized dataset.

    Cell classifiers give one row per cell; gene classifiers one row per position whose ``labels``
    is not -100 (every position when the dataset has no ``labels`` column).

    Args:
        model: a loaded classifier.
        data: tokenized cells (a Dataset, or anything ``as_sequences`` takes).
        batch_size: cells per forward pass (None: a token budget).
        kind: "cell" or "gene".
        device: where the model runs (None: ``settings.device``).
        {progress}
    """
    seqs = as_sequences(data)
    n = len(seqs)
    has_labels = hasattr(data, "column_names") and ("label" in data.column_names or "labels" in data.column_names)
    if kind == "cell":
        labels = np.asarray(column(data, "label"), dtype=np.int64) if has_labels and "label" in data.column_names \
            else np.full(n, IGNORE_INDEX, dtype=np.int64)
        logits = None
        for rows, out in run_model(model, seqs, batch_size=batch_size, device=device, progress=progress):
            lg = out.logits.float().cpu().numpy()
            if logits is None:
                logits = np.zeros((n, lg.shape[1]), dtype=np.float32)
            logits[rows] = lg
        return Predictions(logits, labels, np.arange(n))
    token_labels = None
    if has_labels and "labels" in data.column_names:
        token_labels = as_sequences(data, "labels")
    parts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for rows, out in run_model(model, seqs, batch_size=batch_size, device=device, progress=progress):
        lg = out.logits.float().cpu().numpy()
        for j, r in enumerate(rows):
            r = int(r)
            length = int(seqs.lengths[r])
            toks = seqs.row(r)
            if token_labels is not None:
                lab = token_labels.row(r)[:length]
                keep = lab != IGNORE_INDEX
            else:
                lab = np.full(length, IGNORE_INDEX, dtype=np.int64)
                keep = np.ones(length, dtype=bool)
            parts[r] = (lg[j, :length][keep], lab[keep], toks[keep])
    order = sorted(parts)
    c = model.config.num_labels
    logits = np.concatenate([parts[r][0] for r in order]) if order else np.zeros((0, c), dtype=np.float32)
    labels = np.concatenate([parts[r][1] for r in order]) if order else np.zeros(0, dtype=np.int64)
    toks = np.concatenate([parts[r][2] for r in order]) if order else np.zeros(0, dtype=np.int64)
    rows = np.concatenate([np.full(len(parts[r][1]), r) for r in order]) if order else np.zeros(0, dtype=np.int64)
    return Predictions(logits.astype(np.float32), labels.astype(np.int64), rows.astype(np.int64), toks)


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def roc_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict | None:
    """Binary ROC on p(class 1): ``fpr, tpr, interp_tpr`` (100 points), ``auc`` and ``tpr_wt``."""
    from sklearn.metrics import auc, roc_curve

    if probs.shape[1] != 2 or len(set(y_true.tolist())) < 2:
        return None
    fpr, tpr, _ = roc_curve(y_true, probs[:, 1])
    mean_fpr = np.linspace(0, 1, N_ROC_POINTS)
    interp_tpr = np.interp(mean_fpr, fpr, tpr)
    interp_tpr[0] = 0.0
    return {"fpr": fpr, "tpr": tpr, "interp_tpr": interp_tpr, "auc": float(auc(fpr, tpr)), "tpr_wt": len(tpr)}


def compute_metrics(pred: Predictions, id_class_dict: Mapping[int, Any]) -> dict:
    """Confusion matrix (DataFrame, rows = true, columns = predicted, in class-id order), macro-F1,
    accuracy, per-class report, ROC (binary) and one-vs-rest ROC-AUC (multi-class)."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, roc_auc_score

    keep = pred.label_ids != IGNORE_INDEX
    y_true = pred.label_ids[keep]
    y_pred = pred.pred_ids[keep]
    probs = pred.probabilities[keep]
    ids = list(range(len(id_class_dict)))
    names = [id_class_dict[i] for i in ids]
    if len(y_true) == 0:
        raise ValueError("No labelled examples to evaluate (every label is -100).")
    conf = pd.DataFrame(confusion_matrix(y_true, y_pred, labels=ids), index=names, columns=names)
    report = classification_report(y_true, y_pred, labels=ids, target_names=[str(n) for n in names],
                                   output_dict=True, zero_division=0)
    auc_ovr = None
    present = sorted(set(y_true.tolist()))
    if len(ids) > 2 and len(present) == len(ids):
        auc_ovr = float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=ids))
    roc = roc_metrics(y_true, probs) if len(ids) == 2 else None
    return {
        "conf_mat": conf,
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "acc": float(accuracy_score(y_true, y_pred)),
        "roc_metrics": roc,
        "roc_auc": roc["auc"] if roc else auc_ovr,
        "class_report": report,
    }


def aggregate_roc(roc_list: Sequence[dict | None]) -> dict | None:
    """Folds' ROC curves → weighted mean tpr (weights = number of thresholds), AUC mean and sd."""
    rocs = [r for r in roc_list if r is not None]
    if not rocs:
        return None
    wts = np.asarray([r["tpr_wt"] for r in rocs], dtype=float)
    tprs = np.vstack([r["interp_tpr"] for r in rocs])
    aucs = np.asarray([r["auc"] for r in rocs])
    mean_tpr = np.average(tprs, axis=0, weights=wts)
    mean_tpr[-1] = 1.0
    roc_auc = float(np.average(aucs, weights=wts))
    sd = float(np.sqrt(np.average((aucs - roc_auc) ** 2, weights=wts)))
    return {"mean_tpr": mean_tpr, "mean_fpr": np.linspace(0, 1, N_ROC_POINTS), "all_roc_auc": aucs.tolist(),
            "roc_auc": roc_auc, "roc_auc_sd": sd}


def aggregate_folds(results: Sequence[dict]) -> dict:
    """Sum confusion matrices over folds; list per-fold macro-F1 / accuracy / ROC-AUC; pool binary ROC."""
    conf = results[0]["conf_mat"].copy()
    for r in results[1:]:
        conf = conf + r["conf_mat"]
    return {
        "conf_matrix": conf,
        "macro_f1": [r["macro_f1"] for r in results],
        "acc": [r["acc"] for r in results],
        "roc_auc": [r.get("roc_auc") for r in results],
        "all_roc_metrics": aggregate_roc([r.get("roc_metrics") for r in results]),
        "class_report": [r.get("class_report") for r in results],
    }


def load_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, label_ids)`` of a ``{prefix}_pred_dict.pkl`` or of a pickled ``PredictionOutput``
    (``predictions.pkl``; gene positions labelled -100 are left out)."""
    obj = load_pickle(path)
    if isinstance(obj, Mapping):
        return np.asarray(obj["predictions"], dtype=float), np.asarray(obj["label_ids"])
    logits, labels = np.asarray(obj.predictions, dtype=float), np.asarray(obj.label_ids)
    if logits.ndim == 3:
        keep = labels != IGNORE_INDEX
        logits, labels = logits[keep], labels[keep]
    return logits, labels


def save_predictions(pred: Predictions, data: Any, id_class_dict: Mapping[int, Any], output_directory: Path,
                     output_prefix: str, predict_metadata: Sequence[str] | None = None,
                     token_names: Mapping[int, str] | None = None) -> Path:
    """Write ``{prefix}_pred_dict.pkl`` (reference keys plus ``cell_ids``) and ``{prefix}_predictions.csv``."""
    labelled = pred.label_ids != IGNORE_INDEX
    keep = labelled if labelled.any() else np.ones(len(pred.label_ids), bool)  # unlabelled data: keep all
    rows = pred.cell_rows[keep]
    id_col = cell_id_column(data) if hasattr(data, "column_names") else None
    cell_ids = np.asarray(column(data, id_col), dtype=object)[rows].tolist() if id_col else rows.tolist()
    pred_dict: dict[str, Any] = {
        "pred_ids": pred.pred_ids[keep].tolist(),
        "label_ids": pred.label_ids[keep].tolist(),
        "predictions": pred.logits[keep].tolist(),
        "cell_ids": cell_ids,
    }
    if predict_metadata:
        meta = {}
        for col in predict_metadata:
            meta[col] = np.asarray(column(data, col), dtype=object)[rows].tolist()
        pred_dict["prediction_metadata"] = meta
    if pred.token_ids is not None:
        pred_dict["token_ids"] = pred.token_ids[keep].tolist()
    out = write_pickle(Path(output_directory) / f"{output_prefix}_pred_dict.pkl", pred_dict)
    probs = pred.probabilities[keep]
    table = pd.DataFrame({"cell_id": cell_ids})
    if pred.token_ids is not None:
        toks = pred.token_ids[keep]
        table["token_id"] = toks
        if token_names:
            table["gene"] = [token_names.get(int(t), int(t)) for t in toks]
    lab = pred.label_ids[keep]
    table["true_label"] = [id_class_dict.get(int(i)) if i != IGNORE_INDEX else None for i in lab]
    table["pred_label"] = [id_class_dict[int(i)] for i in pred.pred_ids[keep]]
    for i in range(probs.shape[1]):
        table[f"prob_{id_class_dict.get(i, i)}"] = probs[:, i]
    write_csv(Path(output_directory) / f"{output_prefix}_predictions.csv", table, index=False)
    return out


@doc_params(**DOCS)
def evaluate_classifier(
    model: Any,
    data: Any,
    id_class_dict: Mapping[int, Any] | str | os.PathLike,
    task: ClassifierTask,
    *,
    num_classes: int | None = None,
    batch_size: int | None = 100,
    progress: bool | None = None,
    predict: bool = False,
    output_directory: str | os.PathLike | None = None,
    output_prefix: str | None = None,
    predict_metadata: Sequence[str] | None = None,
) -> dict:
    """Score ``data``: ``{"conf_mat", "macro_f1", "acc", "roc_metrics", "roc_auc", "class_report"}``.

    Args:
        model: a loaded classifier.
        data: labelled cells (a folder or Dataset).
        {id_class_dict}
        {task}
        num_classes: checked against ``id_class_dict`` when given.
        batch_size: cells per forward pass.
        {progress}
        predict: write ``{prefix}_pred_dict.pkl`` (pred_ids, label_ids, predictions, cell_ids,
            prediction_metadata) and ``{prefix}_predictions.csv`` in ``output_directory``.
        output_directory, output_prefix: where the predictions go.
        predict_metadata: dataset columns carried into the predictions.
    """
    data = load_labelled(data)
    id_class_dict = as_id_class_dict(id_class_dict)
    if predict_metadata:
        check_columns(data, predict_metadata, what="predict_metadata")
    if num_classes is not None and len(id_class_dict) != num_classes:
        raise ValueError(f"id_class_dict has {len(id_class_dict)} classes but num_classes={num_classes}.")
    pred = predict_classes(model, data, batch_size=batch_size, kind=task.kind, progress=progress)
    result = compute_metrics(pred, id_class_dict)
    if predict:
        if output_directory is None or output_prefix is None:
            raise ValueError("predict=True needs output_directory and output_prefix.")
        save_predictions(pred, data, id_class_dict, Path(output_directory), output_prefix, predict_metadata,
                         task.token_names())
    return result


def single_run_metrics(result: Mapping[str, Any]) -> dict:
    """One evaluation in the format of :func:`aggregate_folds` (scalars; the ROC curve as a one-fold mean)."""
    roc = result["roc_metrics"]
    all_roc = None
    if roc is not None:
        all_roc = {"mean_tpr": roc["interp_tpr"], "mean_fpr": np.linspace(0, 1, N_ROC_POINTS),
                   "all_roc_auc": roc["auc"], "roc_auc": roc["auc"], "roc_auc_sd": 0.0}
    return {"conf_matrix": result["conf_mat"], "macro_f1": result["macro_f1"], "acc": result["acc"],
            "all_roc_metrics": all_roc, "roc_auc": result["roc_auc"], "class_report": result["class_report"]}


@doc_params(**DOCS)
def evaluate_saved_classifier(
    model_directory: str | os.PathLike,
    id_class_dict: Mapping[int, Any] | str | os.PathLike,
    data: Any,
    output_directory: str | os.PathLike,
    output_prefix: str,
    task: ClassifierTask,
    *,
    batch_size: int | None = 100,
    progress: bool | None = None,
    predict: bool = True,
    predict_metadata: Sequence[str] | None = None,
) -> dict:
    """Evaluate a fine-tuned folder on held-out data; writes ``{prefix}_test_metrics_dict.pkl`` (and,
    with ``predict``, the predictions) in ``output_directory``.

    Args:
        model_directory: the fine-tuned folder (full weights or LoRA adapter).
        {id_class_dict}
        data: labelled held-out cells (a folder or Dataset).
        {output_directory}
        output_prefix: prefix of the written files.
        {task}
        batch_size: cells per forward pass.
        {progress}
        predict: also write the predictions.
        predict_metadata: dataset columns carried into the predictions.
    """
    from ..models import load_finetuned

    id_class_dict = as_id_class_dict(id_class_dict)
    data = load_labelled(data)
    if predict_metadata:
        check_columns(data, predict_metadata, what="predict_metadata")
    model = load_finetuned(model_directory, task.model_type, num_labels=len(id_class_dict))
    out = Path(output_directory)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_classifier(model, data, id_class_dict, task, num_classes=len(id_class_dict),
                                 batch_size=batch_size, progress=progress, predict=predict, output_directory=out,
                                 output_prefix=output_prefix, predict_metadata=predict_metadata)
    metrics = single_run_metrics(result)
    write_pickle(out / f"{output_prefix}_test_metrics_dict.pkl", metrics)
    return metrics


