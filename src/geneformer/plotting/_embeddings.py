"""Plots of cell embeddings: UMAP scatter and clustered heatmap coloured by a label.

Files are PNG or PDF by extension, written under a temporary name and renamed. Legends sit outside
the axes with one to three columns depending on the number of categories, as in the reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .._utils import check_choice
from ._base import pyplot, save

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def _legend_columns(n_categories: int) -> int:
    return 1 if n_categories <= 14 else 2 if n_categories <= 30 else 3


def _categories(labels: Sequence) -> tuple[np.ndarray, list]:
    values = np.asarray([("NA" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)) for v in labels])
    cats = sorted(set(values.tolist()))
    return values, cats


def _palette(n: int) -> list:
    plt = pyplot()
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def umap_coordinates(embs: np.ndarray, *, n_neighbors: int = 15, random_state: int = 0) -> np.ndarray:
    """2-D UMAP of cell embeddings: PCA, neighbour graph and UMAP as scanpy does them (seeded)."""
    import anndata as ad
    import scanpy as sc

    embs = np.asarray(embs, dtype=np.float32)
    n, h = embs.shape
    if n < 4:
        raise ValueError(f"UMAP needs at least 4 cells, got {n}.")
    adata = ad.AnnData(embs)
    n_comps = max(2, min(50, n - 1, h - 1))
    sc.tl.pca(adata, n_comps=n_comps, svd_solver="arpack" if n_comps < min(n, h) else "full")
    sc.pp.neighbors(adata, n_neighbors=min(n_neighbors, n - 1), random_state=random_state)
    sc.tl.umap(adata, random_state=random_state)
    return np.asarray(adata.obsm["X_umap"])


def plot_umap(
    embs: np.ndarray,
    labels: Sequence,
    path: str | os.PathLike,
    *,
    label: str = "label",
    title: str | None = None,
    point_size: float | None = None,
    coords: np.ndarray | None = None,
) -> Path:
    """UMAP scatter of cell embeddings coloured by ``labels``; written to ``path`` (.png/.pdf)."""
    plt = pyplot()
    values, cats = _categories(labels)
    if len(values) != len(embs):
        raise ValueError(f"{len(values)} labels for {len(embs)} cells.")
    xy = umap_coordinates(embs) if coords is None else np.asarray(coords)
    size = point_size if point_size is not None else max(4.0, min(60.0, 12000.0 / max(len(xy), 1)))
    fig, ax = plt.subplots(figsize=(7, 6))
    for cat, colour in zip(cats, _palette(len(cats))):
        sel = values == cat
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colour, label=f"{cat} ({int(sel.sum())})",
                   linewidths=0, alpha=0.85)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"Geneformer cell embeddings by {label} ({len(xy)} cells)")
    ax.legend(title=label, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              ncol=_legend_columns(len(cats)), markerscale=max(1.0, 30.0 / size), fontsize="small")
    try:
        return save(fig, path)
    finally:
        plt.close(fig)


def plot_heatmap(
    embs: np.ndarray,
    labels: Sequence,
    path: str | os.PathLike,
    *,
    label: str = "label",
    title: str | None = None,
    cmap: str = "magma",
) -> Path:
    """Clustered heatmap (cells × embedding dims, each dim scaled to 0..1) with a label colour bar."""
    import pandas as pd
    import seaborn as sns
    from matplotlib.patches import Patch

    plt = pyplot()
    values, cats = _categories(labels)
    embs = np.asarray(embs, dtype=np.float32)
    if len(values) != len(embs):
        raise ValueError(f"{len(values)} labels for {len(embs)} cells.")
    colours = dict(zip(cats, sns.cubehelix_palette(len(cats), start=0.5, rot=-0.75, light=0.85, dark=0.15)))
    row_colours = pd.Series(values).map(colours).to_list()
    df = pd.DataFrame(embs)
    cluster = len(df) > 1
    grid = sns.clustermap(df, row_cluster=cluster, col_cluster=embs.shape[1] > 1, standard_scale=1, cmap=cmap,
                          row_colors=row_colours, xticklabels=False, yticklabels=False, figsize=(9, 8),
                          dendrogram_ratio=(0.12, 0.08), cbar_pos=(0.02, 0.84, 0.03, 0.12))
    grid.ax_heatmap.set_xlabel("embedding dimension")
    grid.ax_heatmap.set_ylabel(f"cells ({len(df)})")
    handles = [Patch(facecolor=colours[c], label=f"{c} ({int((values == c).sum())})") for c in cats]
    grid.ax_heatmap.legend(handles=handles, title=label, loc="center left", bbox_to_anchor=(1.02, 0.5),
                           frameon=False, ncol=_legend_columns(len(cats)), fontsize="small")
    grid.figure.suptitle(title or f"Geneformer cell embeddings by {label}", y=1.02)
    try:
        return save(grid.figure, path)
    finally:
        plt.close(grid.figure)


def plot_embeddings(
    embs: "pd.DataFrame",
    labels: Sequence[str],
    plot_style: str,
    output_directory: str | os.PathLike,
    output_prefix: str,
    *,
    labels_to_plot: Sequence[str] | None = None,
    max_ncells_to_plot: int | None = 1000,
    max_ncells: int | None = None,
    kwargs_dict: dict | None = None,
) -> list[Path]:
    """UMAP or heatmap of a cell-embedding table (columns 0..H-1 then ``labels``), one PDF per label.

    Files are ``{output_prefix}_{plot_style}_{label}.pdf``; at most ``max_ncells_to_plot`` cells
    (and at most ``max_ncells``) are drawn, sampled with a fixed seed. Returns the files written.
    """
    check_choice("plot_style", plot_style, ("heatmap", "umap"))
    labels = list(labels or [])
    if plot_style == "umap" and not labels_to_plot:
        raise ValueError("plot_style='umap' needs labels_to_plot (label columns from emb_label).")
    n = len(embs)
    if max_ncells_to_plot is None:
        max_ncells_to_plot = n
    if max_ncells is not None:
        max_ncells_to_plot = min(max_ncells_to_plot, int(max_ncells))
    if n > max_ncells_to_plot:
        embs = embs.sample(max_ncells_to_plot, random_state=0)
    emb_cols = list(embs.columns[: embs.shape[1] - len(labels)])
    to_plot = [lab for lab in (labels_to_plot or labels) if lab in labels]
    if not to_plot:
        raise ValueError(f"None of labels_to_plot={labels_to_plot} is in emb_label={labels}.")
    draw = plot_umap if plot_style == "umap" else plot_heatmap
    values = embs[emb_cols].to_numpy(np.float32)
    return [draw(values, embs[label].to_numpy(), Path(output_directory) / f"{output_prefix}_{plot_style}_{label}.pdf",
                 label=label, **(kwargs_dict or {}))
            for label in to_plot]
