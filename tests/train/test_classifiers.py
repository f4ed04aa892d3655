"""Fine-tuning: Classifier (cell and gene), cross-validation, Optuna search, LoRA, quantization,
GeneformerFineTuningModel, the finetune/predict CLI and bad input.

Everything runs a tiny random BERT (2 layers, hidden 32) saved as the "pretrained" checkpoint, on
~120 real pbmc3k cells (golden V1 tokens, cropped to 64 genes), with one torch thread.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")
pytest.importorskip("optuna")
pytest.importorskip("peft")

CLASSES = ["B", "CD14+ Mono", "NK"]
N_PER_CLASS = 40
CROP = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_tiny(folder: Path, vocab_size: int, seed: int = 0) -> Path:
    from transformers import BertForMaskedLM

    from geneformer.train import architecture_config

    cfg = architecture_config("tiny", vocab_size, max_position_embeddings=256)
    torch.manual_seed(seed)
    BertForMaskedLM(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_v1(tmp_path_factory, vocab_v1) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("models") / "tiny-V1", vocab_v1.size)


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory, vocab_v2) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("models") / "tiny-V2", vocab_v2.size)


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory, golden_dir) -> Path:
    """120 pbmc3k cells of three types, 64 tokens each, with a synthetic patient table."""
    ds = datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))
    labels = np.asarray(ds["cell_type"])
    rows = np.concatenate([np.flatnonzero(labels == c)[:N_PER_CLASS] for c in CLASSES])
    sub = ds.select(rows, keep_in_memory=True)
    sub = sub.map(lambda b: {"input_ids": [x[:CROP] for x in b["input_ids"]],
                             "length": [min(n, CROP) for n in b["length"]]}, batched=True, keep_in_memory=True)
    patients = [f"p{i % 8}" for i in range(len(sub))]
    sub = sub.add_column("patient", patients)
    sub = sub.add_column("age", [20 + 5 * int(p[1]) for p in patients])
    sub = sub.add_column("sex", ["F" if int(p[1]) % 2 else "M" for p in patients])
    path = tmp_path_factory.mktemp("data") / "pbmc_small.dataset"
    sub.save_to_disk(str(path))
    return path


def _cell_classifier(**kw):
    from geneformer.compat import Classifier

    args = dict(classifier="cell", cell_state_dict={"state_key": "cell_type", "states": "all"}, model_version="V1",
                training_args={"num_train_epochs": 1, "per_device_train_batch_size": 16, "learning_rate": 1e-3},
                forward_batch_size=16, progress=False)
    args.update(kw)
    return Classifier(**args)


def _gene_class_dict(pbmc: Path, vocab, n: int = 12) -> dict:
    ds = datasets.load_from_disk(str(pbmc))
    top = [t for t, _ in Counter(t for x in ds["input_ids"] for t in x).most_common(2 * n)]
    inv = vocab.id_to_token
    return {"dosage_sensitive": [inv[t] for t in top[0::2]], "dosage_insensitive": [inv[t] for t in top[1::2]]}


# ------------------------------------------------------------------------------------------------
# Data preparation
# ------------------------------------------------------------------------------------------------
def test_prepare_data_sorted_ids_and_stratified_split(pbmc, tmp_path):
    cc = _cell_classifier()
    paths = cc.prepare_data(pbmc, tmp_path, "pb", test_size=0.25)
    id_class = pickle.loads(paths["id_class_dict"].read_bytes())
    assert id_class == {0: "B", 1: "CD14+ Mono", 2: "NK"}
    train = datasets.load_from_disk(str(paths["train"]))
    test = datasets.load_from_disk(str(paths["test"]))
    assert len(train) + len(test) == 3 * N_PER_CLASS
    assert "cell_type" not in train.column_names and "label" in train.column_names
    assert Counter(test["label"]) == {0: 10, 1: 10, 2: 10}  # stratified
    assert not set(train["cell_id"]) & set(test["cell_id"])


def test_rare_threshold_and_per_class_cap(pbmc, tmp_path):
    ds = datasets.load_from_disk(str(pbmc))
    # make NK rare: keep 5 of its cells
    labels = np.asarray(ds["cell_type"])
    keep = np.concatenate([np.flatnonzero(labels != "NK"), np.flatnonzero(labels == "NK")[:5]])
    rare = tmp_path / "rare.dataset"
    ds.select(keep).save_to_disk(str(rare))
    cc = _cell_classifier(rare_threshold=0.1, max_ncells_per_class=30)
    paths = cc.prepare_data(rare, tmp_path / "out", "r", test_size=0.2)
    id_class = pickle.loads(paths["id_class_dict"].read_bytes())
    assert list(id_class.values()) == ["B", "CD14+ Mono"]  # NK (5/85 cells) removed
    n = len(datasets.load_from_disk(str(paths["train"]))) + len(datasets.load_from_disk(str(paths["test"])))
    assert n == 60  # 30 per class


def test_class_ids_reproducible_across_hash_seeds(pbmc, tmp_path):
    """String labels get the same ids in every process (the reference enumerates a set)."""
    src = Path(__import__("geneformer").__file__).resolve().parents[1]
    script = (
        "import sys, pickle\n"
        "from geneformer import Classifier\n"
        "cc = Classifier(classifier='cell', cell_state_dict={'state_key': 'cell_type', 'states': 'all'},"
        " model_version='V1', progress=False)\n"
        "p = cc.prepare_data(sys.argv[1], sys.argv[2], 'x')\n"
        "print(pickle.loads(open(p['id_class_dict'], 'rb').read()))\n"
    )
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run([sys.executable, "-c", script, str(pbmc), str(tmp_path / seed)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(res.stdout.strip().splitlines()[-1])
        first = (tmp_path / "1" / "x_id_class_dict.pkl").read_bytes()
        assert (tmp_path / seed / "x_id_class_dict.pkl").read_bytes() == first
    assert outs[0] == outs[1] == str({0: "B", 1: "CD14+ Mono", 2: "NK"})


def test_attr_to_split_picks_balanced_patients(pbmc, tmp_path):
    cc = _cell_classifier()
    paths = cc.prepare_data(pbmc, tmp_path, "pt", test_size=0.25, attr_to_split="patient",
                            attr_to_balance=["age", "sex"], max_trials=20, pval_threshold=0.1)
    train = datasets.load_from_disk(str(paths["train"]))
    test = datasets.load_from_disk(str(paths["test"]))
    assert not set(train["patient"]) & set(test["patient"])
    assert len(set(test["patient"])) == 2  # round(8 * 0.25)
    import pandas as pd

    bdf = pd.read_csv(tmp_path / "pt_train_test_balance_df.csv")
    assert {"trial_num", "age_pval", "sex_pval", "mean_pval", "chosen"} <= set(bdf.columns)
    assert bdf["chosen"].sum() == 1
    assert set(test["label"]) == {0, 1, 2} and set(train["label"]) == {0, 1, 2}


def test_balance_attr_splits_uses_best_trial():
    """When no trial passes the threshold the best one (not the last) is used."""
    import pandas as pd

    from geneformer.train._classification_splits import balance_attr_splits

    table = pd.DataFrame({"pid": [f"p{i}" for i in range(6)], "score": [1, 2, 3, 100, 200, 300],
                          "label": ["a", "b", "a", "b", "a", "b"]})
    tr, ev, df = balance_attr_splits(table, "pid", ["score"], 0.5, max_trials=6, pval_threshold=1.1)
    best = df.sort_values(["classes_covered", "mean_pval"], ascending=False).iloc[0]
    assert df.loc[df["chosen"], "trial_num"].item() == best["trial_num"]
    assert sorted(ev) == sorted(best["eval_ids"])


# ------------------------------------------------------------------------------------------------
# Cell classifier
# ------------------------------------------------------------------------------------------------
def test_cell_classifier_end_to_end(pbmc, tiny_v1, tmp_path):
    cc = _cell_classifier(class_weights="balanced", training_args={
        "num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 1e-3})
    paths = cc.prepare_data(pbmc, tmp_path, "pb", test_size=0.2)
    metrics = cc.validate(tiny_v1, paths["train"], paths["id_class_dict"], tmp_path, "pb")
    out = next(tmp_path.glob("*_geneformer_cellClassifier_pb"))
    assert (out / "pb_eval_metrics_dict.pkl").is_file()
    ksplit = out / "ksplit1"
    assert (ksplit / "model.safetensors").is_file() and (ksplit / "config.json").is_file()
    assert list(ksplit.glob("checkpoint-*")), "Trainer checkpoints are kept"
    conf = metrics["conf_matrix"]
    assert list(conf.index) == CLASSES and list(conf.columns) == CLASSES
    n_train = len(datasets.load_from_disk(str(paths["train"])))
    n_eval = int(conf.to_numpy().sum())
    assert n_eval == round(n_train * cc.eval_size)  # every evaluation cell scored
    pred = pickle.loads((ksplit / "pb_pred_dict.pkl").read_bytes())
    assert len(pred["cell_ids"]) == n_eval and all(isinstance(c, str) for c in pred["cell_ids"])
    assert all(isinstance(p, int) for p in pred["pred_ids"])
    # the metrics are those of the saved predictions (recomputed with scikit-learn)
    y, p = np.asarray(pred["label_ids"]), np.asarray(pred["pred_ids"])
    assert p.tolist() == np.asarray(pred["predictions"]).argmax(1).tolist()
    assert metrics["macro_f1"][0] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert metrics["acc"][0] == pytest.approx(accuracy_score(y, p))
    np.testing.assert_array_equal(conf.to_numpy(), confusion_matrix(y, p, labels=[0, 1, 2]))
    # the saved model is the evaluated one: scoring it again on the evaluation cells gives the same metrics
    from geneformer.models import load_finetuned
    from geneformer.train._classification_data import select_rows

    train = datasets.load_from_disk(str(paths["train"]))
    eval_ids = set(pred["cell_ids"])
    eval_ds = select_rows(train, [i for i, c in enumerate(train["cell_id"]) if c in eval_ids])
    again = cc.evaluate_model(load_finetuned(ksplit, "cell_classifier"), 3, dict(enumerate(CLASSES)), eval_ds)
    assert again["conf_mat"].equals(conf) and again["macro_f1"] == pytest.approx(metrics["macro_f1"][0])

    # evaluation of the saved model on the held-out test split
    test_metrics = cc.evaluate_saved_model(ksplit, paths["id_class_dict"], paths["test"], tmp_path, "pb_test")
    assert (tmp_path / "pb_test_test_metrics_dict.pkl").is_file()
    assert int(test_metrics["conf_matrix"].to_numpy().sum()) == len(datasets.load_from_disk(str(paths["test"])))
    tp = pickle.loads((tmp_path / "pb_test_pred_dict.pkl").read_bytes())
    probs = torch.softmax(torch.tensor(tp["predictions"]), 1).numpy()
    assert test_metrics["roc_auc"] == pytest.approx(roc_auc_score(tp["label_ids"], probs, multi_class="ovr"))
    assert test_metrics["macro_f1"] == pytest.approx(
        f1_score(tp["label_ids"], tp["pred_ids"], average="macro", zero_division=0))
    assert set(test_metrics["class_report"]) >= set(CLASSES)

    # plots: PDF and PNG, non-empty
    for p in cc.plot_conf_mat({"tiny": metrics["conf_matrix"]}, tmp_path, "pb"):
        assert p.name == "pb_conf_mat.pdf" and p.stat().st_size > 0
    png = cc.plot_predictions(tmp_path / "pb_test_pred_dict.pkl", paths["id_class_dict"], "test", tmp_path, "pb",
                              fmt="png")
    assert png.name == "pb_pred.png" and png.stat().st_size > 0

    # a second training into the same folder is refused (would overwrite the model)
    with pytest.raises(ValueError, match="already holds a trained model"):
        cc.train_classifier(tiny_v1, 3, select_rows(train, range(20)), None, ksplit)


def test_resume_from_checkpoint(pbmc, tiny_v1, tmp_path):
    from geneformer.train._classification_data import select_rows

    paths = _cell_classifier().prepare_data(pbmc, tmp_path, "r", test_size=0.2)
    ds = select_rows(datasets.load_from_disk(str(paths["train"])), range(48))
    first = _cell_classifier().train_classifier(tiny_v1, 3, ds, None, tmp_path / "m")
    steps = first.state.global_step
    more = _cell_classifier(resume_from_checkpoint=True, training_args={
        "num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 1e-3})
    second = more.train_classifier(tiny_v1, 3, ds, None, tmp_path / "m")
    assert second.state.global_step == 2 * steps
    with pytest.raises(ValueError, match="No checkpoint"):
        more.train_classifier(tiny_v1, 3, ds, None, tmp_path / "empty")


def test_cross_validation_five_folds(pbmc, tiny_v1, tmp_path):
    cc = _cell_classifier(num_crossval_splits=5)
    paths = cc.prepare_data(pbmc, tmp_path, "cv", test_size=0.2)
    metrics = cc.validate(tiny_v1, paths["train"], paths["id_class_dict"], tmp_path, "cv", predict_eval=False)
    out = next(tmp_path.glob("*_geneformer_cellClassifier_cv"))
    assert sorted(p.name for p in out.glob("ksplit*")) == [f"ksplit{i}" for i in range(1, 6)]
    assert len(metrics["macro_f1"]) == len(metrics["acc"]) == 5
    # stratified k-fold: every training cell is evaluated exactly once
    assert int(metrics["conf_matrix"].to_numpy().sum()) == len(datasets.load_from_disk(str(paths["train"])))


def test_evaluation_scores_every_example_and_breaks_ties_low():
    from geneformer.train._evaluation import Predictions, compute_metrics

    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    pred = Predictions(logits, np.array([0, 1, 2]), np.arange(3))
    assert pred.pred_ids.tolist() == [0, 1, 0]
    m = compute_metrics(pred, {0: "a", 1: "b", 2: "c"})
    assert int(m["conf_mat"].to_numpy().sum()) == 3


def test_predict_keeps_last_example(pbmc, tiny_v1):
    """N % batch == 1 used to drop the last cell in the reference."""
    from geneformer.models import load_model
    from geneformer.train._evaluation import predict_classes as predict

    ds = datasets.load_from_disk(str(pbmc)).select(range(17))
    model = load_model(tiny_v1, kind="cell_classifier", num_labels=3)
    pred = predict(model, ds, batch_size=8, progress=False)
    assert pred.logits.shape == (17, 3)


# ------------------------------------------------------------------------------------------------
# Gene classifier
# ------------------------------------------------------------------------------------------------
def test_gene_classifier_end_to_end(pbmc, tiny_v1, vocab_v1, tmp_path, caplog):
    from geneformer.compat import Classifier

    gcd = _gene_class_dict(pbmc, vocab_v1)
    gcd["dosage_insensitive"] = gcd["dosage_insensitive"] + ["ENSG99999999999"]
    with caplog.at_level("WARNING"):
        gc = Classifier(classifier="gene", gene_class_dict=gcd, model_version="V1", max_ncells=80,
                        training_args={"num_train_epochs": 1, "per_device_train_batch_size": 16, "learning_rate": 1e-3},
                        forward_batch_size=16, progress=False)
    assert gc.unknown_genes == ["ENSG99999999999"] and "ENSG99999999999" in caplog.text
    assert all(t is not None for toks in gc.gene_class_tokens.values() for t in toks)
    paths = gc.prepare_data(pbmc, tmp_path, "g")
    assert pickle.loads(paths["id_class_dict"].read_bytes()) == {0: "dosage_sensitive", 1: "dosage_insensitive"}
    ds = datasets.load_from_disk(str(paths["labeled"]))
    lab = np.concatenate([np.asarray(x) for x in ds["labels"]])
    assert set(np.unique(lab)) <= {-100, 0, 1} and (lab >= 0).any()

    metrics = gc.validate(tiny_v1, paths["labeled"], paths["id_class_dict"], tmp_path, "g")
    out = next(tmp_path.glob("*_geneformer_geneClassifier_g"))
    ksplit = out / "ksplit1"
    for name in ("train", "valid", "test"):
        assert (ksplit / f"g_{name}_gene_labeled_ksplit1.dataset").is_dir()
    # held-out genes never appear labelled in the training split
    train = datasets.load_from_disk(str(ksplit / "g_train_gene_labeled_ksplit1.dataset"))
    valid = datasets.load_from_disk(str(ksplit / "g_valid_gene_labeled_ksplit1.dataset"))

    def labelled_tokens(d):
        return {t for ids, labs in zip(d["input_ids"], d["labels"]) for t, y in zip(ids, labs) if y != -100}

    assert not labelled_tokens(train) & labelled_tokens(valid)
    roc = metrics["all_roc_metrics"]
    assert len(roc["mean_tpr"]) == 100
    # one fold: its ROC-AUC and macro-F1 are those of the saved gene predictions
    gp = pickle.loads((ksplit / "g_pred_dict.pkl").read_bytes())
    p1 = torch.softmax(torch.tensor(gp["predictions"]), 1)[:, 1].numpy()
    assert roc["roc_auc"] == pytest.approx(roc_auc_score(gp["label_ids"], p1))
    assert metrics["macro_f1"][0] == pytest.approx(
        f1_score(gp["label_ids"], gp["pred_ids"], average="macro", zero_division=0))
    assert set(gp["token_ids"]) <= labelled_tokens(valid)
    assert (out / "g_test_metrics_dict.pkl").is_file()
    path = gc.plot_roc({"tiny": roc}, {"tiny": {"color": "red"}}, "ROC", tmp_path, "g")
    assert path.name == "g_roc.pdf" and path.stat().st_size > 0


def test_gene_train_all_data_and_predict(pbmc, tiny_v1, vocab_v1, tmp_path):
    from geneformer.compat import Classifier
    from geneformer.train import predict

    gc = Classifier(classifier="gene", gene_class_dict=_gene_class_dict(pbmc, vocab_v1, n=6), model_version="V1",
                    training_args={"num_train_epochs": 1, "per_device_train_batch_size": 16}, progress=False)
    paths = gc.prepare_data(pbmc, tmp_path, "all")
    trainer = gc.train_all_data(tiny_v1, paths["labeled"], paths["id_class_dict"], tmp_path, "all")
    folder = Path(trainer.args.output_dir)
    assert (folder / "model.safetensors").is_file()
    table = predict(pbmc, folder, tmp_path / "genes.csv", progress=False)
    assert {"gene", "token_id", "n_positions", "pred_label", "prob_dosage_sensitive"} <= set(table.columns)
    assert table["gene"].str.startswith("ENSG").all()
    assert set(table["pred_label"]) <= {"dosage_sensitive", "dosage_insensitive"}
    np.testing.assert_allclose(table[["prob_dosage_sensitive", "prob_dosage_insensitive"]].sum(1), 1, atol=1e-5)


def test_gene_cross_validation_partitions_genes():
    from geneformer.train._classification_genes import gene_folds

    token_class = {t: t % 2 for t in range(100, 130)}
    folds = gene_folds(token_class, 5, 0.1, 0.1)
    held = [set(v) | set(te) for _, v, te in folds]
    assert set().union(*held) == set(token_class)
    assert all(not a & b for i, a in enumerate(held) for b in held[i + 1:])
    for tr, va, te in folds:
        assert not set(tr) & (set(va) | set(te))


# ------------------------------------------------------------------------------------------------
# Hyperparameter search, LoRA, quantization
# ------------------------------------------------------------------------------------------------
def test_optuna_search_two_trials(pbmc, tiny_v1, tmp_path):
    from geneformer.models import load_finetuned
    from geneformer.train._hyperopt import read_best

    space = {"learning_rate": ("loguniform", 1e-4, 1e-2), "lr_scheduler_type": ["linear", "cosine"],
             "warmup_steps": ("uniform", 0.0, 0.1), "weight_decay": ("uniform", 0.0, 0.1),
             "freeze_layers": ("int", 0, 1), "num_train_epochs": [1], "seed": ("int", 0, 10)}
    cc = _cell_classifier(hyperopt_space=space)
    paths = cc.prepare_data(pbmc, tmp_path, "h", test_size=0.2)
    full = datasets.load_from_disk(str(paths["train"]))
    sp = full.train_test_split(test_size=0.25, seed=0)
    res = cc.hyperopt_classifier(tiny_v1, 3, sp["train"], sp["test"], tmp_path / "search", n_trials=2)
    assert len(res.study.trials) == 2
    assert set(res.best_params) == set(space)
    best = read_best(tmp_path / "search")
    assert best["value"] == pytest.approx(res.best_value)
    assert (tmp_path / "search" / "trials.csv").is_file() and (tmp_path / "search" / "optuna.db").is_file()
    model = load_finetuned(res.best_model_dir, "cell_classifier")
    m = cc.evaluate_model(model, 3, {0: "B", 1: "CD14+ Mono", 2: "NK"}, sp["test"])
    assert m["macro_f1"] == pytest.approx(res.best_value)  # the saved model is the trial's model


def test_pruning_callback_prunes():
    import optuna

    from geneformer.train._hyperopt import OptunaPruningCallback

    class Trial:
        def __init__(self):
            self.reports = []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return True

    trial = Trial()
    cb = OptunaPruningCallback(trial)
    state = type("S", (), {"epoch": 1.0, "global_step": 3})()
    cb.on_evaluate(None, state, None, metrics={"eval_loss": 1.0})  # no metric: nothing reported
    assert trial.reports == []
    with pytest.raises(optuna.TrialPruned):
        cb.on_evaluate(None, state, None, metrics={"eval_macro_f1": 0.1})
    assert trial.reports == [(1, 0.1)]


def test_lora_train_save_reload(pbmc, tiny_v1, tmp_path):
    from geneformer.models import is_adapter_folder, load_finetuned
    from geneformer.train._classification_data import select_rows

    cc = _cell_classifier(lora={"r": 4, "lora_alpha": 8})
    paths = cc.prepare_data(pbmc, tmp_path, "l", test_size=0.2)
    ds = datasets.load_from_disk(str(paths["train"]))
    trainer = cc.train_classifier(tiny_v1, 3, select_rows(ds, range(60)), select_rows(ds, range(60, 80)),
                                  tmp_path / "lora")
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert any("classifier" in n for n in trainable), "the head must train with LoRA"
    assert not any("word_embeddings" in n for n in trainable)
    assert is_adapter_folder(tmp_path / "lora")
    reloaded = load_finetuned(tmp_path / "lora", "cell_classifier")
    test = datasets.load_from_disk(str(paths["test"]))
    a = cc.evaluate_model(model, 3, {0: "B", 1: "CD14+ Mono", 2: "NK"}, test)
    b = cc.evaluate_model(reloaded, 3, {0: "B", 1: "CD14+ Mono", 2: "NK"}, test)
    assert a["conf_mat"].equals(b["conf_mat"]) and a["macro_f1"] == pytest.approx(b["macro_f1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_quantized_loading_needs_cuda():
    from geneformer._utils import QuantizationError

    with pytest.raises(QuantizationError, match="needs a CUDA GPU and bitsandbytes; on CPU use int8 dynamic"):
        _cell_classifier(quantize=True)


def test_int8_dynamic_quantization(pbmc, tiny_v1):
    from geneformer.models import load_model, model_size_mb, quantize_dynamic_int8
    from geneformer.train._evaluation import predict_classes as predict

    model = load_model(tiny_v1, kind="cell_classifier", num_labels=3)
    q = quantize_dynamic_int8(model)
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert any(type(m) is torch.nn.Linear for m in model.modules()), "the input model is left unchanged"
    ds = datasets.load_from_disk(str(pbmc)).select(range(20))
    a = predict(model, ds, batch_size=10, progress=False).logits
    b = predict(q, ds, batch_size=10, progress=False).logits
    assert np.abs(a - b).max() < 0.1
    assert model_size_mb(q) < model_size_mb(model)


# ------------------------------------------------------------------------------------------------
# High-level API and CLI
# ------------------------------------------------------------------------------------------------
def test_fine_tuning_model_api(tiny_v1, data_dir, tmp_path):
    import anndata as ad

    from geneformer.api import GeneformerConfig, GeneformerFineTuningModel

    adata = ad.read_h5ad(data_dir / "pbmc3k_raw_seurat_labels.h5ad")
    adata = adata[adata.obs["cell_type"].isin(CLASSES)][:24].copy()
    config = GeneformerConfig(model_name=str(tiny_v1), batch_size=8, model_input_size=64)
    ft = GeneformerFineTuningModel(geneformer_config=config, fine_tuning_head="classification", output_size=3)
    dataset = ft.process_data(adata[:12])
    labels = list(adata.obs["cell_type"][:12])
    dataset = dataset.add_column("cell_types", labels)
    dataset = dataset.map(lambda x: {"cell_types": CLASSES.index(x["cell_types"])}, num_proc=1)
    ft.train(train_dataset=dataset, label="cell_types", validation_dataset=dataset, epochs=2,
             optimizer_params={"lr": 1e-3}, lr_scheduler_params={"name": "linear", "num_warmup_steps": 0},
             silent=True)
    assert len(ft.history) == 2 and "val_accuracy" in ft.history[-1]
    outputs = ft.get_outputs(dataset, silent=True)
    assert outputs.shape == (12, 3)
    # the last epoch's validation record describes the final model
    y = np.asarray(dataset["cell_types"])
    assert ft.history[-1]["val_accuracy"] == pytest.approx(np.mean(outputs.argmax(1) == y))
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(outputs), torch.from_numpy(y))
    assert ft.history[-1]["val_loss"] == pytest.approx(float(ce), rel=1e-5)
    embeddings = ft.get_embeddings(dataset)
    assert embeddings.shape == (12, 32)
    ft.save(tmp_path / "ft")
    again = GeneformerFineTuningModel.load(tmp_path / "ft")
    np.testing.assert_allclose(again.get_outputs(dataset, silent=True), outputs, atol=1e-5)
    with pytest.raises(ValueError, match="text labels"):
        ft.train(train_dataset=dataset.add_column("txt", labels), label="txt", silent=True)
    reg = GeneformerFineTuningModel(geneformer_config=config, fine_tuning_head="regression", output_size=1)
    reg.train(train_dataset=dataset.add_column("y", [float(i) for i in range(12)]), label="y", silent=True)
    assert reg.get_outputs(dataset, silent=True).shape == (12, 1)


def test_finetune_gene_classifier(pbmc, tiny_v1, vocab_v1, tmp_path):
    from geneformer.train import finetune

    res = finetune(pbmc, tiny_v1, tmp_path / "g", classifier="gene", gene_class_dict=_gene_class_dict(pbmc, vocab_v1),
                   epochs=1, learning_rate=1e-3, batch_size=16, progress=False)
    m = res.metrics
    assert m["classes"] == ["dosage_sensitive", "dosage_insensitive"] and m["classifier"] == "gene"
    assert (tmp_path / "g" / "finetune_roc.png").stat().st_size > 0  # a binary task's ROC, from one evaluation
    test = datasets.load_from_disk(str(tmp_path / "g" / "data" / "finetune_labeled_test.dataset"))
    assert m["n_test"] == len(test)
    pred = pickle.loads((tmp_path / "g" / "finetune_pred_dict.pkl").read_bytes())
    assert m["macro_f1"] == pytest.approx(f1_score(pred["label_ids"], pred["pred_ids"], average="macro",
                                                   zero_division=0))
    assert json.loads((tmp_path / "g" / "metrics.json").read_text()) == m


def test_cli_finetune_and_predict(pbmc, tiny_v1, tmp_path):
    from typer.testing import CliRunner

    from geneformer.cli.main import app

    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["finetune", str(pbmc), "--model", str(tiny_v1), "--label", "cell_type", "--output",
                              str(out), "--epochs", "1", "--lr", "1e-3", "--batch-size", "16", "--freeze-layers", "1",
                              "--test-size", "0.2", "--seed", "0", "-q"])
    assert res.exit_code == 0, res.output
    assert "Test macro-F1" in res.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["classes"] == CLASSES and summary["n_test"] == 24
    assert (out / "finetune_conf_mat.png").stat().st_size > 0
    res = runner.invoke(app, ["predict", str(pbmc), "--model", str(out / "model"), "--output",
                              str(tmp_path / "p.csv"), "-q"])
    assert res.exit_code == 0, res.output
    import pandas as pd

    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 3 * N_PER_CLASS and {"cell_id", "pred_label", "prob_NK"} <= set(table.columns)
    assert set(table["pred_label"]) <= set(CLASSES)
    before = (tmp_path / "p.csv").read_bytes()
    again = ["predict", str(pbmc), "--model", str(out / "model"), "--output", str(tmp_path / "p.csv"), "-q"]
    res = runner.invoke(app, again)
    assert res.exit_code == 2 and "--overwrite" in res.output and (tmp_path / "p.csv").read_bytes() == before
    assert runner.invoke(app, again + ["--overwrite"]).exit_code == 0
    res = runner.invoke(app, ["finetune", str(pbmc), "--model", str(tiny_v1), "--label", "nope", "--output",
                              str(tmp_path / "bad")])
    assert res.exit_code == 2 and "'nope'" in res.output


# ------------------------------------------------------------------------------------------------
# Practical fine-tuning: the head, early stopping, class weights, the epoch summary
# ------------------------------------------------------------------------------------------------
def test_cli_head_early_stopping_and_epoch_summary(pbmc, tiny_v1, tmp_path):
    from typer.testing import CliRunner

    from geneformer.cli.main import app
    from geneformer.models import PooledSequenceClassifier, load_model

    out = tmp_path / "mean"
    # a zero learning rate never improves the validation macro-F1: patience 1 stops after epoch 2 of 4
    res = CliRunner().invoke(app, ["finetune", str(pbmc), "--model", str(tiny_v1), "--label", "cell_type",
                                   "--output", str(out), "--head", "mean", "--epochs", "4", "--early-stopping", "1",
                                   "--lr", "0", "--batch-size", "16", "--seed", "0"])
    assert res.exit_code == 0, res.output
    # each summary line follows the bars' cursor codes on the same terminal line
    lines = [x[x.index("epoch "):] for x in res.output.splitlines() if re.search(r"epoch \d", x)]
    assert len(lines) == 2 and "train loss" in lines[0] and "macro-F1" in lines[0] and "validation loss" in lines[0]
    state = json.loads((out / "model" / "trainer_state.json").read_text())
    assert max(h["epoch"] for h in state["log_history"]) == pytest.approx(2.0)
    model = load_model(out / "model", kind="cell_classifier", device="cpu")
    assert isinstance(model, PooledSequenceClassifier) and model.config.cell_pooling == "mean"
    assert json.loads((out / "metrics.json").read_text())["head"] == "mean"
    # -q: no summary lines; cls pooling needs <cls>, which V1 cells lack
    res = CliRunner().invoke(app, ["finetune", str(pbmc), "--model", str(tiny_v1), "--label", "cell_type",
                                   "--output", str(tmp_path / "cls"), "--head", "cls", "-q"])
    assert res.exit_code == 2 and "V2" in res.output and "epoch " not in res.output


def test_mean_and_cls_heads_pool_differently_from_the_reference_head(tiny_v2):
    from geneformer.models import load_classifier

    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (3, 20))
    ids[:, 0] = 2  # <cls>
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 12:] = 0
    models = {h: load_classifier(tiny_v2, "cell_classifier", 3, head=h).eval() for h in ("first", "mean", "cls")}
    hidden = models["mean"].bert(input_ids=ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        mean = models["mean"](input_ids=ids, attention_mask=mask).logits
        cls = models["cls"](input_ids=ids, attention_mask=mask).logits
        m = mask[..., None].float()
        torch.testing.assert_close(mean, models["mean"].classifier((hidden * m).sum(1) / m.sum(1)))
        torch.testing.assert_close(cls, models["cls"].classifier(hidden[:, 0]))
    assert models["first"].bert.pooler is not None and models["mean"].bert.pooler is None


def test_class_weights_change_the_loss(tiny_v1, tmp_path):
    from geneformer.models import load_classifier
    from geneformer.train._classification_training import class_weights_for
    from geneformer.train._trainer import ClassifierTrainer, training_arguments

    labels = np.array([0] * 8 + [1] * 2 + [2] * 2)  # imbalanced: class 0 is two thirds
    weights = class_weights_for(labels, 3, "balanced")
    assert weights == pytest.approx([0.5, 2.0, 2.0])
    model = load_classifier(tiny_v1, "cell_classifier", 3).eval()
    args = training_arguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(10, 1000, (12, 16)), "attention_mask": torch.ones(12, 16, dtype=torch.long),
             "labels": torch.as_tensor(labels)}
    with torch.no_grad():
        plain = ClassifierTrainer(model=model, args=args).compute_loss(model, dict(batch))
        weighted = ClassifierTrainer(model=model, args=args, class_weights=weights).compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=torch.tensor(weights))
    assert float(weighted) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(weighted) - float(plain)) > 1e-4


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
def test_bad_label_column(pbmc, tmp_path):
    cc = _cell_classifier(cell_state_dict={"state_key": "celltype", "states": "all"})
    with pytest.raises(KeyError, match="'celltype' is not in the dataset.*cell_type"):
        cc.prepare_data(pbmc, tmp_path, "x")


def test_single_class_label(pbmc, tmp_path):
    from geneformer._utils import ClassifierDataError

    cc = _cell_classifier(filter_data={"cell_type": ["NK"]})
    with pytest.raises(ClassifierDataError, match="single class"):
        cc.prepare_data(pbmc, tmp_path, "x")


def test_too_few_cells_per_class(pbmc, tmp_path):
    from geneformer._utils import ClassifierDataError

    ds = datasets.load_from_disk(str(pbmc))
    labels = np.asarray(ds["cell_type"])
    rows = np.concatenate([np.flatnonzero(labels == "B")[:20], np.flatnonzero(labels == "NK")[:1]])
    path = tmp_path / "few.dataset"
    ds.select(rows).save_to_disk(str(path))
    with pytest.raises(ClassifierDataError, match="Too few cells per class.*NK"):
        _cell_classifier().prepare_data(path, tmp_path / "o", "x")


def test_unknown_genes_in_gene_class_dict(pbmc, vocab_v1):
    from geneformer._utils import ClassifierDataError
    from geneformer.compat import Classifier

    gcd = _gene_class_dict(pbmc, vocab_v1)
    gcd["made_up"] = ["ENSG_NOT_A_GENE_1", "ENSG_NOT_A_GENE_2"]
    with pytest.raises(ClassifierDataError, match=r"\['made_up'\].*ENSG_NOT_A_GENE_1"):
        Classifier(classifier="gene", gene_class_dict=gcd, model_version="V1")
    with pytest.raises(ClassifierDataError, match="two classes"):
        g = gcd["dosage_sensitive"]
        Classifier(classifier="gene", gene_class_dict={"a": g[:3], "b": g[2:5]}, model_version="V1")


def test_model_vocabulary_mismatch(pbmc, tiny_v2, tmp_path):
    from geneformer._utils import InputError

    cc = _cell_classifier()
    paths = cc.prepare_data(pbmc, tmp_path, "v", test_size=0.2)
    with pytest.raises(InputError, match="vocabulary"):
        cc.train_classifier(tiny_v2, 3, paths["train"], paths["test"], tmp_path / "m")


def test_bad_options():
    from geneformer.compat import Classifier

    with pytest.raises(ValueError, match="classifier must be"):
        Classifier(classifier="cells")
    with pytest.raises(ValueError, match="sum to 1"):
        _cell_classifier(split_sizes={"train": 0.8, "valid": 0.1, "test": 0.2})
    with pytest.raises(ValueError, match="cell_state_dict"):
        Classifier(classifier="cell", model_version="V1")
    with pytest.raises(ValueError, match="label"):
        from geneformer.train import finetune

        finetune("x", "y", "z", classifier="cell")


def test_classifier_pickles_go_through_the_restricted_loader(tmp_path):
    """id-class dictionaries and prediction pickles a user hands us are never unpickled freely."""
    import os
    import pickle

    from geneformer._utils import ClassifierDataError
    from geneformer.train import load_id_class_dict, load_predictions

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    evil = tmp_path / "x_id_class_dict.pkl"
    evil.write_bytes(pickle.dumps({0: "B", 1: RunsCode()}))
    with pytest.raises(ValueError, match="x_id_class_dict.pkl.*refusing to load posix.system"):
        load_id_class_dict(evil)
    with pytest.raises(ClassifierDataError, match="refusing"):
        load_predictions(evil)
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "ok.json").write_text('{"0": "B", "1": "NK"}')  # the JSON form (convert-dict) reads the same
    assert load_id_class_dict(tmp_path / "ok.json") == {0: "B", 1: "NK"}
