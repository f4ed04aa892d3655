"""UMAP and heatmap plots of cell embeddings (files written, non-empty, legends); classifier plots
(confusion matrices, ROC curves, prediction heat maps)."""

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


# ------------------------------------------------------------------------------------------------
# Classifier plots
# ------------------------------------------------------------------------------------------------
def _conf(values):
    names = ["B", "NK"]
    return pd.DataFrame(values, index=names, columns=names)


def test_confusion_matrices_named_by_model(tmp_path):
    from geneformer.plotting import plot_confusion_matrices

    cm = _conf([[5, 1], [2, 4]])
    (one,) = plot_confusion_matrices({"tiny": cm}, tmp_path, "pb", fmt="png")
    assert one == tmp_path / "pb_conf_mat.png" and one.stat().st_size > 2000
    # several models: one file each; metrics dicts are read for their confusion matrix
    two = plot_confusion_matrices({"a": cm, "b": {"conf_matrix": cm.T}}, tmp_path, "pb", fmt="svg")
    assert [p.name for p in two] == ["pb_a_conf_mat.svg", "pb_b_conf_mat.svg"]
    with pytest.raises(ValueError, match="custom_class_order"):
        plot_confusion_matrices(cm, tmp_path, "x", custom_class_order=["B", "T"])
    with pytest.raises(ValueError, match="plot format"):
        plot_confusion_matrices(cm, tmp_path, "x", fmt="jpg")


def test_roc_of_one_evaluation_and_of_folds(tmp_path):
    """A single evaluation records ``all_roc_auc`` as a number, pooled folds as a list."""
    from geneformer.plotting import plot_roc

    fpr = np.linspace(0, 1, 100)
    single = {"mean_fpr": fpr, "mean_tpr": np.sqrt(fpr), "all_roc_auc": 0.66, "roc_auc": 0.66, "roc_auc_sd": 0.0}
    folds = dict(single, all_roc_auc=[0.6, 0.7], roc_auc=0.65, roc_auc_sd=0.05)
    out = plot_roc({"one": single, "folds": folds, "multi-class": None}, {"one": {"color": "red"}}, "ROC",
                   tmp_path / "roc.png")
    assert out.stat().st_size > 2000
    with pytest.raises(ValueError, match="binary"):
        plot_roc({"multi-class": None}, None, "ROC", tmp_path / "none.png")


def test_prediction_heatmap_from_either_predictions_file(tmp_path):
    from transformers.trainer_utils import PredictionOutput

    from geneformer._utils import write_pickle
    from geneformer.plotting import plot_predictions
    from geneformer.train import load_predictions

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 2)).astype(np.float32)
    labels = np.repeat([0, 1], 6)
    write_pickle(tmp_path / "pred_dict.pkl", {"predictions": logits.tolist(), "label_ids": labels.tolist()})
    # a gene classifier's PredictionOutput: (cells, positions, classes), unlabelled positions -100
    token_labels = np.full((3, 5), -100)
    token_labels[:, :4] = labels.reshape(3, 4)
    token_logits = np.zeros((3, 5, 2), dtype=np.float32)
    token_logits[:, :4] = logits.reshape(3, 4, 2)
    write_pickle(tmp_path / "predictions.pkl", PredictionOutput(token_logits, token_labels, {}))
    for name in ("pred_dict.pkl", "predictions.pkl"):
        got_logits, got_labels = load_predictions(tmp_path / name)
        np.testing.assert_allclose(got_logits, logits, rtol=1e-6)
        np.testing.assert_array_equal(got_labels, labels)
    out = plot_predictions(logits, labels, {0: "B", 1: "NK"}, "test", tmp_path / "pred.png")
    assert out.stat().st_size > 2000
