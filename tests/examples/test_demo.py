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
    assert (tmp_path / "demo" / "report.txt").read_text().startswith("Geneformer demo")
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
