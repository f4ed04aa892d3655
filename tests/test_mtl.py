"""MTLClassifier: pretrained encoder, padding-aware attention pooling, Optuna study, save/reload, outputs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")
pytest.importorskip("optuna")
pytest.importorskip("accelerate")

CLASSES = ["B", "CD14+ Mono", "NK"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, vocab_v1) -> Path:
    from transformers import BertForMaskedLM

    from geneformer.train import architecture_config

    cfg = architecture_config("tiny", vocab_v1.size, max_position_embeddings=256)
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("models") / "tiny-V1"
    BertForMaskedLM(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def splits(tmp_path_factory, golden_dir) -> dict[str, Path]:
    """Train/validation/test splits of 90 pbmc3k cells with two tasks: cell type and a batch label."""
    ds = datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))
    labels = np.asarray(ds["cell_type"])
    rows = np.concatenate([np.flatnonzero(labels == c)[:30] for c in CLASSES])
    sub = ds.select(rows, keep_in_memory=True).map(
        lambda b: {"input_ids": [x[:48] for x in b["input_ids"]], "length": [min(n, 48) for n in b["length"]]},
        batched=True, keep_in_memory=True)
    sub = sub.add_column("batch", ["b1" if i % 3 else "b2" for i in range(len(sub))])
    order = np.random.default_rng(0).permutation(len(sub))
    folder = tmp_path_factory.mktemp("mtl_data")
    out = {}
    for name, idx in (("train", order[:54]), ("val", order[54:72]), ("test", order[72:])):
        path = folder / f"{name}.dataset"
        sub.select(np.sort(idx)).save_to_disk(str(path))
        out[name] = path
    return out


def _mtl(splits, tiny, tmp_path, **kw):
    from geneformer.compat import MTLClassifier

    args = dict(task_columns=["cell_type", "batch"], train_path=splits["train"], val_path=splits["val"],
                test_path=splits["test"], pretrained_path=tiny, model_save_path=tmp_path / "model",
                results_dir=tmp_path / "results", batch_size=16, epochs=1, n_trials=2, progress=False,
                hyperparameters={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                 "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
                                 "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                                 "dropout_rate": {"type": "float", "low": 0.0, "high": 0.3},
                                 "lr_scheduler_type": {"type": "categorical", "choices": ["linear", "cosine"]},
                                 "task_weights": {"type": "float", "low": 0.1, "high": 2.0}},
                max_layers_to_freeze={"min": 0, "max": 1})
    args.update(kw)
    return MTLClassifier(**args)


def test_encoder_starts_from_pretrained_weights(tiny):
    from transformers import BertForMaskedLM

    from geneformer.models import GeneformerMultiTask

    ref = BertForMaskedLM.from_pretrained(str(tiny)).bert.state_dict()
    model = GeneformerMultiTask(tiny, [3, 2], use_attention_pooling=True)
    mine = model.bert.state_dict()
    assert set(mine) <= set(ref)
    for k, v in mine.items():
        torch.testing.assert_close(v, ref[k], msg=f"encoder weight {k} is not the pretrained one")


def test_attention_pooling_ignores_padding():
    from geneformer.models import AttentionPool

    torch.manual_seed(0)
    pool = AttentionPool(8)
    h = torch.randn(1, 5, 8)
    padded = torch.cat([h, 100 * torch.randn(1, 3, 8)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    torch.testing.assert_close(pool(padded, mask), pool(h, torch.ones(1, 5, dtype=torch.long)))


def test_optuna_study_saves_whole_model(splits, tiny, tmp_path):
    import pandas as pd

    from geneformer.train._multitask import MODEL_DIR, load_split
    from geneformer.models import GeneformerMultiTask

    mtl = _mtl(splits, tiny, tmp_path)
    study = mtl.run_optuna_study()
    assert len(study.trials) == 2
    assert {"learning_rate", "dropout_rate", "weight_decay", "warmup_ratio", "max_layers_to_freeze",
            "task_weight_0", "task_weight_1"} <= set(study.best_params)
    mappings = pickle.loads((tmp_path / "results" / "task_label_mappings.pkl").read_bytes())
    assert mappings == {"cell_type": {c: i for i, c in enumerate(CLASSES)}, "batch": {"b1": 0, "b2": 1}}

    folder = tmp_path / "model" / MODEL_DIR
    assert {"model.safetensors", "config.json", "hyperparameters.json"} <= {p.name for p in folder.iterdir()}
    hp = json.loads((folder / "hyperparameters.json").read_text())
    assert hp["use_attention_pooling"] is True and len(hp["task_weights"]) == 2
    assert hp["val_loss"] == pytest.approx(study.best_value)
    model = GeneformerMultiTask.load(folder)
    assert model.attention_pool is not None, "the saved model keeps its attention pooling"

    # the reloaded model reproduces the best trial's validation predictions
    best = study.best_trial.number
    val_preds = pd.read_csv(tmp_path / "results" / f"trial_{best}" / "val_preds.csv")
    for col in ("Cell ID", "cell_type_true_idx", "cell_type_pred_idx", "cell_type_true_label", "cell_type_pred_label",
                "cell_type_all_probs", "cell_type_prob_NK", "batch_prob_b2"):
        assert col in val_preds.columns
    val = load_split(splits["val"], ["cell_type", "batch"], mappings, "validation")
    from geneformer.train._multitask import collate

    batch = collate([(val.seqs.row(i), val.labels[i], i) for i in range(len(val))])
    with torch.no_grad():
        _, logits, _ = model(batch["input_ids"], batch["attention_mask"])
    probs = torch.softmax(logits[0], dim=1).numpy()
    np.testing.assert_allclose(probs[:, 2], val_preds["cell_type_prob_NK"].to_numpy(), atol=1e-5)

    # test predictions
    metrics = mtl.load_and_evaluate_test_model()
    test_preds = pd.read_csv(tmp_path / "results" / "test_preds.csv")
    assert list(test_preds.columns) == ["Cell ID", "cell_type Prediction", "cell_type Probabilities",
                                        "batch Prediction", "batch Probabilities"]
    assert len(test_preds) == 18 and set(test_preds["cell_type Prediction"]) <= set(CLASSES)
    assert set(metrics) == {"cell_type", "batch"} and 0 <= metrics["cell_type"]["macro_f1"] <= 1

    # the folder also opens as the encoder (for embeddings / perturbation)
    from transformers import BertForMaskedLM

    enc = BertForMaskedLM.from_pretrained(str(folder))
    torch.testing.assert_close(enc.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


def test_manual_tuning(splits, tiny, tmp_path):
    mtl = _mtl(splits, tiny, tmp_path, use_manual_hyperparameters=True,
               manual_hyperparameters={"learning_rate": 1e-3, "warmup_ratio": 0.01, "weight_decay": 0.1,
                                       "dropout_rate": 0.1, "lr_scheduler_type": "cosine",
                                       "use_attention_pooling": False, "task_weights": [1, 1],
                                       "max_layers_to_freeze": 1}, gradient_clipping=True, max_grad_norm=1.0,
               gradient_accumulation_steps=2)
    res = mtl.run_manual_tuning()
    assert set(res["metrics"]) == {"cell_type", "batch"}
    assert (tmp_path / "results" / "manual_run_val_preds.csv").is_file()
    from geneformer.models import GeneformerMultiTask

    model = GeneformerMultiTask.load(tmp_path / "model" / "GeneformerMultiTask")
    assert model.attention_pool is None


def test_frozen_layers_do_not_change(splits, tiny, tmp_path):
    """max_layers_to_freeze=1 keeps encoder layer 0 at its pretrained values."""
    from transformers import BertForMaskedLM

    from geneformer.models import GeneformerMultiTask

    mtl = _mtl(splits, tiny, tmp_path, use_manual_hyperparameters=True,
               manual_hyperparameters={"learning_rate": 1e-2, "warmup_ratio": 0.0, "weight_decay": 0.0,
                                       "dropout_rate": 0.0, "lr_scheduler_type": "linear", "task_weights": [1, 1],
                                       "max_layers_to_freeze": 1})
    mtl.run_manual_tuning()
    ref = BertForMaskedLM.from_pretrained(str(tiny)).bert
    model = GeneformerMultiTask.load(tmp_path / "model" / "GeneformerMultiTask")
    torch.testing.assert_close(model.bert.encoder.layer[0].attention.self.query.weight,
                               ref.encoder.layer[0].attention.self.query.weight)
    assert not torch.allclose(model.bert.encoder.layer[1].attention.self.query.weight,
                              ref.encoder.layer[1].attention.self.query.weight)


def test_bad_input(splits, tiny, tmp_path):
    from geneformer.compat import MTLClassifier

    with pytest.raises(KeyError, match="'donor'"):
        _mtl(splits, tiny, tmp_path, task_columns=["cell_type", "donor"]).run_optuna_study()
    with pytest.raises(ValueError, match="use_manual_hyperparameters"):
        _mtl(splits, tiny, tmp_path).run_manual_tuning()
    with pytest.raises(ValueError, match="pretrained_path"):
        MTLClassifier(task_columns=["cell_type"], train_path=splits["train"], val_path=splits["val"],
                      model_save_path=tmp_path / "m", results_dir=tmp_path / "r").run_optuna_study()
    with pytest.raises(ValueError, match="max_grad_norm"):
        MTLClassifier(gradient_clipping=True)
    # a validation label the training split lacks
    ds = datasets.load_from_disk(str(splits["val"]))
    odd = tmp_path / "odd.dataset"
    ds.map(lambda x: {"batch": "b9"}).save_to_disk(str(odd))
    with pytest.raises(ValueError, match=r"\['b9'\].*training"):
        _mtl(splits, tiny, tmp_path, val_path=odd).run_optuna_study()
