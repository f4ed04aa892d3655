"""Plots of classifiers: confusion matrices, ROC curves and heat maps of predictions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ._base import check_plot_format, pyplot, save


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


def plot_confusion_matrices(conf_mats: Mapping[str, Any] | pd.DataFrame, output_directory: str | os.PathLike,
                            output_prefix: str, custom_class_order: Sequence[Any] | None = None,
                            fmt: str = "pdf") -> list[Path]:
    """One confusion matrix per model: ``{prefix}_conf_mat.{fmt}``, or ``{prefix}_{name}_conf_mat.{fmt}``
    when several are given. Values are DataFrames or metrics dicts (``conf_matrix`` / ``conf_mat``)."""
    fmt = check_plot_format(fmt)
    if isinstance(conf_mats, pd.DataFrame):
        conf_mats = {"Geneformer": conf_mats}
    paths = []
    for name, cm in conf_mats.items():
        if isinstance(cm, Mapping):
            cm = cm.get("conf_matrix", cm.get("conf_mat"))
        stem = f"{output_prefix}_conf_mat" if len(conf_mats) == 1 else f"{output_prefix}_{name}_conf_mat"
        paths.append(plot_confusion_matrix(cm, name, Path(output_directory) / f"{stem}.{fmt}", custom_class_order))
    return paths


def plot_roc(roc_metric_dict: Mapping[str, dict | None], model_style_dict: Mapping[str, dict] | None, title: str,
             output_path: Path) -> Path:
    """Mean ROC curve per model (label with AUC, ± sd over folds) plus the diagonal; models without
    ROC metrics (None: not binary) are left out."""
    usable = {k: v for k, v in roc_metric_dict.items() if v is not None}
    if not usable:
        raise ValueError("No ROC metrics to plot (ROC curves exist for binary classifiers only).")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, m in usable.items():
        style = dict((model_style_dict or {}).get(name, {}))
        auc_txt = f"AUC {m['roc_auc']:.2f}"
        # a single evaluation records its AUC as a number, pooled folds as a list
        if np.size(m.get("all_roc_auc", [])) > 1:
            auc_txt += f" ± {m.get('roc_auc_sd', 0):.2f}"
        ax.plot(m["mean_fpr"], m["mean_tpr"], label=f"{name} ({auc_txt})", lw=2, **style)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, linestyle="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    try:
        return save(fig, output_path)
    finally:
        plt.close(fig)


def plot_predictions(logits: np.ndarray, label_ids: np.ndarray, id_class_dict: Mapping[int, Any], title: str,
                     output_path: Path, custom_class_order: Sequence[Any] | None = None,
                     kwargs_dict: Mapping[str, Any] | None = None) -> Path:
    """Clustered heat map of the raw logits (items x classes): rows = items sorted by true class
    (``label_ids``), columns = classes."""
    import seaborn as sns

    plt = pyplot()
    logits, labels = np.asarray(logits, dtype=float), np.asarray(label_ids)
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
