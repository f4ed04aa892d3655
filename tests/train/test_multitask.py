"""MTLClassifier: pretrained encoder, padding-aware attention pooling, Optuna study, save/reload, outputs;
the modelling heads (multi-task and model-card fine-tuning models): save_pretrained/from_pretrained,
folders written before, the one model loader (zoo names, vocabulary check), deterministic training."""

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

    from geneformer.models import GeneformerMultiTask
    from geneformer.train._multitask import MODEL_DIR, load_split

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
    from geneformer.inference import collate

    input_ids, attention_mask, _ = collate(val.seqs, np.arange(len(val)))
    with torch.no_grad():
        _, logits, _ = model(input_ids, attention_mask)
    probs = torch.softmax(logits[0], dim=1).numpy()
    np.testing.assert_allclose(probs[:, 2], val_preds["cell_type_prob_NK"].to_numpy(), atol=1e-5)

    # test predictions
    metrics = mtl.load_and_evaluate_test_model()
    test_preds = pd.read_csv(tmp_path / "results" / "test_preds.csv")
    assert list(test_preds.columns) == ["Cell ID", "cell_type Prediction", "cell_type Probabilities",
                                        "batch Prediction", "batch Probabilities"]
    assert len(test_preds) == 18 and set(test_preds["cell_type Prediction"]) <= set(CLASSES)
    assert set(metrics) == {"cell_type", "batch"}
    from sklearn.metrics import accuracy_score, f1_score

    truth = datasets.load_from_disk(str(splits["test"]))["cell_type"]
    pred = test_preds["cell_type Prediction"].tolist()
    assert metrics["cell_type"]["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))
    assert metrics["cell_type"]["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    best = json.loads((tmp_path / "results" / "best_hyperparameters.json").read_text())
    assert best == {"params": study.best_params, "val_loss": pytest.approx(study.best_value)}
    trials = pd.read_csv(tmp_path / "results" / "optuna_trials.csv")
    assert len(trials) == 2 and trials["value"].min() == pytest.approx(study.best_value)

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
               gradient_accumulation_steps=2, tensorboard_log_dir=tmp_path / "tb")
    res = mtl.run_manual_tuning()
    assert set(res["metrics"]) == {"cell_type", "batch"}
    # TensorBoard: the running training loss after each of the 2 optimizer steps (54 cells, 16 per batch, 2 batches
    # per step)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("Training Loss")] == [1, 2]
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


# ------------------------------------------------------------------------------------------------
# Modelling heads: save_pretrained / from_pretrained, older folders, the one model loader
# ------------------------------------------------------------------------------------------------
def _ids(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 500, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return ids * mask, mask


def test_multitask_save_pretrained_round_trip(tiny, tmp_path):
    from geneformer.models import GeneformerMultiTask, MultiTaskConfig

    torch.manual_seed(1)
    model = GeneformerMultiTask(tiny, [3, 2], dropout_rate=0.3, use_task_weights=True, task_weights=[0.25, 0.75],
                                use_attention_pooling=True).eval()
    ids, mask = _ids()
    with torch.no_grad():
        _, logits, _ = model(ids, mask)
    model.save_pretrained(str(tmp_path / "mt"))
    again = GeneformerMultiTask.from_pretrained(str(tmp_path / "mt")).eval()
    assert isinstance(again.config, MultiTaskConfig)
    assert (again.num_labels_list, again.config.task_weights, again.dropout.p) == ([3, 2], [0.25, 0.75], 0.3)
    assert again.attention_pool is not None
    with torch.no_grad():
        _, logits2, _ = again(ids, mask)
    for a, b in zip(logits, logits2):
        torch.testing.assert_close(a, b)
    # with labels: the task-weighted sum of the cross-entropies
    y = torch.tensor([[0, 1], [2, 0], [1, 1]])
    with torch.no_grad():
        total, _, _ = again(ids, mask, y)
    expect = sum(w * torch.nn.functional.cross_entropy(lg, y[:, t]) for t, (w, lg) in enumerate(zip([0.25, 0.75],
                                                                                                    logits)))
    torch.testing.assert_close(total, expect)


def _legacy_multitask_folder(model, folder: Path, *, reference: bool) -> Path:
    """A folder as written before the head lived in config.json (or, ``reference``, by the reference:
    pytorch_model.bin with a pooler and hyperparameters.json without the head fields)."""
    from safetensors.torch import save_file
    from transformers import BertConfig

    folder.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = BertConfig(**{k: v for k, v in model.bert.config.to_dict().items()
                           if k not in ("num_labels_list", "use_attention_pooling", "dropout_rate", "task_weights",
                                        "use_task_weights")})
    config.architectures = ["BertForMaskedLM"]
    config.to_json_file(str(folder / "config.json"))
    hp = {"learning_rate": 1e-3, "dropout_rate": float(model.dropout.p)}
    if reference:
        h = model.config.hidden_size
        state.update({"bert.pooler.dense.weight": torch.zeros(h, h), "bert.pooler.dense.bias": torch.zeros(h)})
        torch.save(state, folder / "pytorch_model.bin")
        hp["task_weights"] = list(model.config.task_weights)
    else:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        hp.update(num_labels_list=model.num_labels_list, use_attention_pooling=model.use_attention_pooling,
                  task_weights=list(model.config.task_weights))
    (folder / "hyperparameters.json").write_text(json.dumps(hp))
    return folder


@pytest.mark.parametrize("reference", [False, True])
def test_legacy_multitask_folders_load(tiny, tmp_path, reference):
    from transformers import BertForMaskedLM

    from geneformer.models import GeneformerMultiTask

    torch.manual_seed(2)
    model = GeneformerMultiTask(tiny, [3, 2], use_task_weights=True, task_weights=[0.4, 0.6],
                                use_attention_pooling=True).eval()
    folder = _legacy_multitask_folder(model, tmp_path / "GeneformerMultiTask", reference=reference)
    again = GeneformerMultiTask.load(folder)
    assert again.num_labels_list == [3, 2] and again.attention_pool is not None
    assert again.config.task_weights == pytest.approx([0.4, 0.6])
    assert again.hyperparameters["learning_rate"] == 1e-3
    ids, mask = _ids(1)
    with torch.no_grad():
        for a, b in zip(model(ids, mask)[1], again(ids, mask)[1]):
            torch.testing.assert_close(a, b)
    enc = BertForMaskedLM.from_pretrained(str(folder))
    torch.testing.assert_close(enc.bert.encoder.layer[1].output.dense.weight,
                               model.bert.encoder.layer[1].output.dense.weight)


def test_multitask_encoder_through_the_model_loader(tiny, tmp_path, monkeypatch, splits):
    """pretrained_path resolves zoo names (here one pointing at a local folder) and refuses a
    vocabulary mismatch with the loader's message."""
    import dataclasses

    from geneformer.models import MODEL_ZOO, GeneformerMultiTask, ModelLoadError, get_spec

    spec = dataclasses.replace(get_spec("Geneformer-V1-10M"), name="tiny-zoo-V1", repo=str(tiny.parent),
                               subfolder=tiny.name, aliases=())
    monkeypatch.setitem(MODEL_ZOO, "tiny-zoo-V1", spec)
    model = GeneformerMultiTask("tiny-zoo-V1", [3, 2])
    ref = GeneformerMultiTask(tiny, [3, 2])
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, ref.bert.embeddings.word_embeddings.weight)
    with pytest.raises(ModelLoadError, match="subfolder Geneformer-V1-10M"):
        GeneformerMultiTask("Geneformer-V1-10M", [3, 2])  # a real zoo name: offline here, but resolved
    with pytest.raises(ModelLoadError, match=r"vocab_size 25,426 \(the V1 vocabulary\).*V2 vocabulary"):
        GeneformerMultiTask(tiny, [3, 2], vocab="V2")

    manual = {"learning_rate": 1e-3, "warmup_ratio": 0.0, "weight_decay": 0.0, "dropout_rate": 0.0,
              "lr_scheduler_type": "linear", "task_weights": [1, 1], "max_layers_to_freeze": 0}
    res = _mtl(splits, "tiny-zoo-V1", tmp_path, use_manual_hyperparameters=True, manual_hyperparameters=manual,
               model_version="V1").run_manual_tuning()
    assert res["val_loss"] > 0 and set(res["metrics"]) == {"cell_type", "batch"}
    with pytest.raises(ModelLoadError, match="V2 vocabulary"):
        _mtl(splits, tiny, tmp_path, use_manual_hyperparameters=True, manual_hyperparameters=manual,
             model_version="V2").run_manual_tuning()


def test_manual_run_is_deterministic(splits, tiny, tmp_path):
    manual = {"learning_rate": 3e-3, "warmup_ratio": 0.2, "weight_decay": 0.1, "dropout_rate": 0.2,
              "lr_scheduler_type": "cosine", "use_attention_pooling": True, "task_weights": [1, 2],
              "max_layers_to_freeze": 0}
    runs = [_mtl(splits, tiny, tmp_path / str(k), use_manual_hyperparameters=True, manual_hyperparameters=manual,
                 gradient_accumulation_steps=2, gradient_clipping=True, max_grad_norm=0.5).run_manual_tuning()
            for k in range(2)]
    assert runs[0] == runs[1]
    # the loss is the task-weighted sum (the default [1, 1] scaled to the given weights)
    m = runs[0]["metrics"]
    assert runs[0]["val_loss"] == pytest.approx(m["cell_type"]["loss"] + 2 * m["batch"]["loss"])


# ---- the model-card fine-tuning model ------------------------------------------------------------
def _cell_data(splits, n: int = 24):
    ds = datasets.load_from_disk(str(splits["train"])).select(range(n))
    return ds.map(lambda x: {"y": CLASSES.index(x["cell_type"]), "t": float(len(x["input_ids"]))})


@pytest.mark.parametrize("head", ["classification", "regression"])
def test_cell_model_save_pretrained_round_trip(tiny, splits, tmp_path, head):
    from transformers import BertForMaskedLM

    from geneformer.models import CellModelConfig, GeneformerCellModel
    from geneformer.train import cell_outputs

    data = _cell_data(splits)
    encoder = BertForMaskedLM.from_pretrained(str(tiny))
    model = GeneformerCellModel.for_encoder(encoder, head, 3 if head == "classification" else 1, emb_layer=-1)
    assert model.bert is encoder.bert and model.layer == 1
    out = cell_outputs(model, data, batch_size=8, progress=False)
    model.save_pretrained(str(tmp_path / "cell"))
    cfg = json.loads((tmp_path / "cell" / "config.json").read_text())
    assert (cfg["head_kind"], cfg["emb_layer"], cfg["emb_mode"]) == (head, -1, "cell")
    again = GeneformerCellModel.load(tmp_path / "cell")
    assert isinstance(again.config, CellModelConfig)
    np.testing.assert_allclose(cell_outputs(again, data, batch_size=8, progress=False), out, atol=1e-6)
    # the module forward (training) pools as the prediction loop does
    from geneformer.data import as_sequences
    from geneformer.inference import collate

    ids, mask, _ = collate(as_sequences(data), np.arange(8))
    with torch.no_grad():
        logits = again(ids, mask).logits.numpy()
    np.testing.assert_allclose(logits, out[:8], atol=1e-5)
    # the folder also opens as the encoder
    enc = BertForMaskedLM.from_pretrained(str(tmp_path / "cell"))
    torch.testing.assert_close(enc.bert.embeddings.word_embeddings.weight,
                               encoder.bert.embeddings.word_embeddings.weight)


def test_cell_model_custom_head_needs_the_module(tiny, tmp_path):
    from transformers import BertForMaskedLM

    from geneformer.models import GeneformerCellModel

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    weights = {k: v.clone() for k, v in head.state_dict().items()}
    model = GeneformerCellModel.for_encoder(BertForMaskedLM.from_pretrained(str(tiny)), head)
    for k, v in model.head.state_dict().items():
        torch.testing.assert_close(v, weights[k], msg="a custom head keeps its own weights")
    model.save_pretrained(str(tmp_path / "custom"))
    with pytest.raises(ValueError, match="custom head"):
        GeneformerCellModel.load(tmp_path / "custom")
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    again = GeneformerCellModel.load(tmp_path / "custom", head=fresh)
    assert again.head is fresh
    torch.testing.assert_close(fresh[2].weight, weights["2.weight"])


def test_fine_tuning_training_is_deterministic_and_records_history(tiny, splits):
    from geneformer.api import GeneformerConfig, GeneformerFineTuningModel

    data = _cell_data(splits)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)  # the new head is initialised when the model is built, from torch's RNG
        ft = GeneformerFineTuningModel(GeneformerConfig(model_name=str(tiny), batch_size=8, emb_layer=0),
                                       "classification", 3)
        ft.train(data, "y", validation_dataset=data, epochs=2, freeze_layers=1, optimizer_params={"lr": 1e-3},
                 lr_scheduler_params={"name": "cosine", "num_warmup_steps": 1}, silent=True, seed=5)
        outs.append(ft.get_outputs(data, silent=True))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert [r["epoch"] for r in ft.history] == [1, 2]
    y = np.asarray(data["y"])
    assert ft.history[-1]["val_accuracy"] == pytest.approx(np.mean(outs[1].argmax(1) == y))
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(outs[1]), torch.from_numpy(y))
    assert ft.history[-1]["val_loss"] == pytest.approx(float(ce), rel=1e-5)
    # freeze_layers=1 kept the first layer, trained the second (pooled after it: emb_layer=0)
    from transformers import BertForMaskedLM

    ref = BertForMaskedLM.from_pretrained(str(tiny)).bert
    torch.testing.assert_close(ft.model.bert.encoder.layer[0].output.dense.weight,
                               ref.encoder.layer[0].output.dense.weight)
    assert not torch.allclose(ft.model.bert.encoder.layer[1].output.dense.weight.cpu(),
                              ref.encoder.layer[1].output.dense.weight)


def test_legacy_fine_tuning_folder_loads(tiny, splits, tmp_path):
    """encoder/ + head.safetensors + fine_tuning.json (the layout written before) still loads."""
    from dataclasses import asdict

    from safetensors.torch import save_file
    from transformers import BertForMaskedLM

    from geneformer.api import GeneformerConfig, GeneformerFineTuningModel
    from geneformer.embeddings import cell_embeddings

    data = _cell_data(splits)
    folder = tmp_path / "ft"
    encoder = BertForMaskedLM.from_pretrained(str(tiny))
    encoder.save_pretrained(str(folder / "encoder"))
    torch.manual_seed(4)
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(32, 3))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / "head.safetensors"))
    cfg = asdict(GeneformerConfig(model_name="encoder", batch_size=8, emb_layer=0))
    meta = {"fine_tuning_head": "classification", "output_size": 3, "config": cfg, "base_model": str(tiny),
            "history": [{"epoch": 1, "train_loss": 1.0}]}
    (folder / "fine_tuning.json").write_text(json.dumps(meta))

    ft = GeneformerFineTuningModel.load(folder)
    assert ft.history == meta["history"] and ft.head_kind == "classification" and ft.config.emb_layer == 0
    embs = cell_embeddings(encoder, data, mode="cell", emb_layer=0, batch_size=8, progress=False)
    with torch.no_grad():
        expect = head.eval()(torch.from_numpy(embs)).numpy()
    np.testing.assert_allclose(ft.get_outputs(data, silent=True), expect, atol=1e-5)
    # saved again, it is a save_pretrained folder that loads to the same outputs
    ft.save(tmp_path / "ft2")
    assert (tmp_path / "ft2" / "config.json").is_file() and not (tmp_path / "ft2" / "encoder").exists()
    again = GeneformerFineTuningModel.load(tmp_path / "ft2")
    np.testing.assert_allclose(again.get_outputs(data, silent=True), expect, atol=1e-5)
    assert again.history == meta["history"]
