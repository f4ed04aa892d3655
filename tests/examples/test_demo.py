"""The offline demo runs end to end from the data bundled with scanpy."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

# the demo is an example script (examples/demo.py), not part of the package
_SPEC = importlib.util.spec_from_file_location("geneformer_demo", Path(__file__).resolve().parents[2] / "examples" / "demo.py")
demo = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(demo)
load_pbmc68k_counts, run = demo.load_pbmc68k_counts, demo.run


def _stats_table(fdrs, detections):
    import pandas as pd

    n = len(fdrs)
    return pd.DataFrame({"Gene_name": [f"G{i}" for i in range(n)], "Shift_to_goal_end": np.linspace(0.5, 0.1, n),
                         "Goal_end_FDR": fdrs, "N_Detections": detections})


def test_report_gives_each_genes_fdr_and_says_when_nothing_is_significant():
    text, info = demo.summarize_goal_shifts(_stats_table([0.77, 0.8, 0.9], [1, 3, 2]), goal="NK")
    assert "No deletion shifts the cells significantly toward NK" in text and "0.77" in text
    assert info["significant_goal_shift_genes"] == 0
    # genes seen in one cell go last; every listed gene carries its FDR and detections
    assert info["top_goal_shift_genes"].split("; ")[0] == "G1 (shift +3.00e-01, FDR 0.8, 3 cells)"
    assert info["top_goal_shift_genes"].endswith("G0 (shift +5.00e-01, FDR 0.77, 1 cell)")
    text, info = demo.summarize_goal_shifts(_stats_table([0.01, 0.2], [4, 4]), goal="NK")
    assert info["significant_goal_shift_genes"] == 1 and text.startswith("1 of 2 genes shift significantly")


def test_the_goal_state_pair_is_supported_by_the_labels():
    # the sample's "Dendritic" label covers a third of the cells (mostly monocytes); the demo's pair
    # must be two labels that exist with enough cells to average a state over
    counts = load_pbmc68k_counts().obs["cell_type"].value_counts()
    assert "Dendritic" not in (demo.START_STATE, demo.GOAL_STATE)
    assert counts[demo.START_STATE] >= 30 and counts[demo.GOAL_STATE] >= 30


def test_counts_recovered_as_integers():
    a = load_pbmc68k_counts()
    assert a.n_obs == 700 and a.n_vars == 765
    assert np.all(a.X.data == np.rint(a.X.data)) and a.X.data.min() >= 1


def test_demo_runs(tmp_path):
    report = run(tmp_path / "demo", pretrain_steps=5, finetune_epochs=0.2)
    assert report["tokenized"] == 700 and report["vocab_size"] == 769
    # zero-shot kNN on the embeddings beats always answering the commonest cell type (34%)
    majority = load_pbmc68k_counts().obs["cell_type"].value_counts(normalize=True).max()
    assert report["knn_accuracy_pretrained"] > majority + 0.1 and report["knn_accuracy_random_init"] > majority + 0.1
    assert (tmp_path / "demo" / "umap_cell_type.png").stat().st_size > 10_000
    # the reported macro-F1 is the one of the held-out predictions the run wrote
    import pandas as pd
    from sklearn.metrics import f1_score

    preds = pd.read_csv(tmp_path / "demo" / "finetune" / "finetune_predictions.csv")
    assert len(preds) == 140
    assert report["finetune_macro_f1"] == pytest.approx(f1_score(preds.true_label, preds.pred_label, average="macro"))
    assert report["perturbations"] > 0
    assert (tmp_path / "demo" / "goal_state_shift.csv").stat().st_size > 0
    text = (tmp_path / "demo" / "report.txt").read_text()
    assert text.startswith("Geneformer demo") and "FDR" in text and report["goal_state_pair"] in text
    assert (tmp_path / "demo" / "pbmc68k.dataset").is_dir()


def test_demo_with_a_model_folder(golden_dir, tmp_path, monkeypatch):
    # GENEFORMER_MODEL replaces the demo's own vocabulary and pretraining with a (published) model
    monkeypatch.setenv("GENEFORMER_MODEL", str(golden_dir / "models" / "mini-V1"))
    report = run(tmp_path / "demo", finetune_epochs=0.2)
    assert report["vocab_size"] == 25426 and report["tokenized"] == 700
    assert report["perturbations"] > 0 and (tmp_path / "demo" / "goal_state_shift.csv").exists()


def test_a_new_run_replaces_the_previous_runs_outputs(tmp_path):
    _clear_previous_run = demo._clear_previous_run
    (tmp_path / "finetune" / "model").mkdir(parents=True)
    (tmp_path / "finetune" / "model" / "config.json").write_text("{}")
    (tmp_path / "pretrain" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "report.txt").write_text("old")
    (tmp_path / "notes.txt").write_text("the user's own file")
    _clear_previous_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
