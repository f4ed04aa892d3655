"""Plots of classifiers: confusion matrices, ROC curves and heat maps of predictions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import IGNORE_INDEX
from ..train._classification_data import load_id_class_dict, load_pickle
from ._base import pyplot, save


def plot_confusion_matrix(conf_mat: pd.DataFrame, title: str, output_path: Path,
                          custom_class_order: Sequence[Any] | None = None) -> Path:
    """Row-normalised confusion matrix heat map; labels show each true class's count."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    cm = conf_mat
    if custom_class_order is not None:
        missing = [c for c in custom_class_order if c not in cm.index]
        if missing:
            raise ValueError(f"custom_class_order names classes {missing} that are not in the confusion matrix.")
        cm = cm.loc[list(custom_class_order), list(custom_class_order)]
    totals = cm.sum(axis=1).to_numpy()
    norm = cm.to_numpy() / np.maximum(totals[:, None], 1)
    labels = [f"{c}\nn={int(t)}" for c, t in zip(cm.index, totals)]
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(norm, display_labels=labels).plot(ax=ax, cmap="Blues", values_format=".2g",
                                                             xticks_rotation="vertical", colorbar=True)
    ax.set_title(title)
    try:
        return save(fig, output_path)
    finally:
        plt.close(fig)


def plot_roc(roc_metric_dict: Mapping[str, dict], model_style_dict: Mapping[str, dict] | None, title: str,
             output_path: Path) -> Path:
    """Mean ROC curve per model (label with AUC, ± sd over folds) plus the diagonal."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, m in roc_metric_dict.items():
        if m is None:
            continue
        style = dict((model_style_dict or {}).get(name, {}))
        auc_txt = f"AUC {m['roc_auc']:.2f}"
        if len(m.get("all_roc_auc", [])) > 1:
            auc_txt += f" ± {m.get('roc_auc_sd', 0):.2f}"
        ax.plot(m["mean_fpr"], m["mean_tpr"], label=f"{name} ({auc_txt})", lw=2, **style)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, linestyle="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    try:
        return save(fig, output_path)
    finally:
        plt.close(fig)


def plot_predictions(predictions_file: str | os.PathLike, id_class_dict: Mapping[int, Any] | str | os.PathLike,
                     title: str, output_path: Path, custom_class_order: Sequence[Any] | None = None,
                     kwargs_dict: Mapping[str, Any] | None = None) -> Path:
    """Clustered heat map of the raw logits: rows = items sorted by true class, columns = classes."""
    import seaborn as sns

    plt = pyplot()
    if not isinstance(id_class_dict, Mapping):
        id_class_dict = load_id_class_dict(id_class_dict)
    obj = load_pickle(predictions_file)
    if isinstance(obj, Mapping):
        logits = np.asarray(obj["predictions"], dtype=float)
        labels = np.asarray(obj["label_ids"])
    else:  # a transformers PredictionOutput
        logits = np.asarray(obj.predictions, dtype=float)
        labels = np.asarray(obj.label_ids)
        if logits.ndim == 3:
            keep = labels != IGNORE_INDEX
            logits, labels = logits[keep], labels[keep]
    names = [id_class_dict[i] for i in range(len(id_class_dict))]
    df = pd.DataFrame(logits, columns=names)
    df["true"] = [id_class_dict.get(int(i), i) for i in labels]
    order = list(custom_class_order) if custom_class_order is not None else names
    df["true"] = pd.Categorical(df["true"], categories=order, ordered=True)
    df = df.sort_values("true", kind="stable")
    palette = dict(zip(order, sns.color_palette("husl", len(order))))
    row_colors = [palette.get(c, (0.8, 0.8, 0.8)) for c in df["true"].astype(object)]
    mat = df[order]
    kwargs = dict(row_cluster=False, col_cluster=False, center=0, cmap="vlag", row_colors=row_colors,
                  col_colors=[palette[c] for c in order], yticklabels=False, figsize=(6, 6))
    kwargs.update(kwargs_dict or {})
    grid = sns.clustermap(mat.reset_index(drop=True), **kwargs)
    grid.figure.suptitle(title)
    try:
        return save(grid.figure, output_path)
    finally:
        plt.close(grid.figure)
