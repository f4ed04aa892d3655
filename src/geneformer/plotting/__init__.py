"""Plots, each written atomically to PNG, PDF or SVG: UMAPs and heatmaps of cell embeddings;
confusion matrices, ROC curves and prediction heatmaps of classifiers."""

from ._base import PLOT_FORMATS, check_plot_format
from ._classification import plot_confusion_matrices, plot_confusion_matrix, plot_predictions, plot_roc
from ._embeddings import plot_embeddings, plot_heatmap, plot_umap, umap_coordinates

__all__ = [
    "PLOT_FORMATS", "check_plot_format", "plot_confusion_matrices", "plot_confusion_matrix", "plot_embeddings",
    "plot_heatmap", "plot_predictions", "plot_roc", "plot_umap", "umap_coordinates",
]
