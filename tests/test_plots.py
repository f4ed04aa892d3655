"""UMAP and heatmap plots of cell embeddings (files written, non-empty, legends)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geneformer.plotting import _embeddings as plotting


@pytest.fixture(scope="module")
def embs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 4
    labels = np.repeat(["B cell", "T cell", "NK"], 20)
    x = np.concatenate([c + rng.normal(size=(20, 16)) for c in centres]).astype(np.float32)
    return x, labels


def test_umap_plots(embs, tmp_path):
    """One test for every UMAP path, so that numba compiles UMAP once per test process."""
    import matplotlib.image as mpimg

    from geneformer.compat import EmbExtractor

    x, labels = embs
    a = plotting.umap_coordinates(x)
    assert a.shape == (60, 2) and np.allclose(a, plotting.umap_coordinates(x))  # seeded
    for suffix in (".png", ".pdf"):
        out = plotting.plot_umap(x, labels, tmp_path / f"umap{suffix}", label="cell_type", coords=a)
        assert out.exists() and out.stat().st_size > 2000
    img = mpimg.imread(tmp_path / "umap.png")
    assert img.shape[0] > 200 and img.std() > 0.01  # not blank
    assert plotting.plot_umap(x, labels, tmp_path / "fresh.png").stat().st_size > 2000
    df = _frame(x, labels)
    ex = EmbExtractor(emb_mode="cell", emb_label=["cell_type", "cell_id"], labels_to_plot=["cell_type"],
                      max_ncells=1000)
    files = ex.plot_embs(df, "umap", tmp_path, "pbmc", max_ncells_to_plot=40)
    assert [p.name for p in files] == ["pbmc_umap_cell_type.pdf"] and files[0].stat().st_size > 2000


def _frame(x, labels):
    df = pd.DataFrame(x, columns=range(x.shape[1]))
    df["cell_type"] = labels
    df["cell_id"] = [f"c{i}" for i in range(len(df))]
    return df


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_heatmap_written(embs, tmp_path, suffix):
    x, labels = embs
    out = plotting.plot_heatmap(x, labels, tmp_path / f"heat{suffix}", label="cell_type")
    assert out.exists() and out.stat().st_size > 2000


def test_plot_errors(embs, tmp_path):
    x, labels = embs
    with pytest.raises(ValueError, match="labels"):
        plotting.plot_heatmap(x, labels[:5], tmp_path / "h.png")
    with pytest.raises(ValueError, match=".png"):
        plotting.plot_heatmap(x, labels, tmp_path / "h.txt")


def test_emb_extractor_heatmap(embs, tmp_path):
    from geneformer.compat import EmbExtractor

    x, labels = embs
    df = _frame(x, labels)
    ex = EmbExtractor(emb_mode="cell", emb_label=["cell_type", "cell_id"], labels_to_plot=["cell_type"],
                      max_ncells=1000)
    files = ex.plot_embs(df, "heatmap", tmp_path, "pbmc")
    assert [p.name for p in files] == ["pbmc_heatmap_cell_type.pdf"] and files[0].stat().st_size > 2000
    with pytest.raises(ValueError, match="labels_to_plot"):
        EmbExtractor(emb_mode="cell", emb_label=["cell_type"]).plot_embs(df, "umap", tmp_path, "x")
