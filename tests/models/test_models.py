"""Model zoo and model loading (and the `geneformer models` command)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from geneformer.models import (
    MODEL_ZOO,
    ModelLoadError,
    get_spec,
    init_model,
    layer_index,
    list_models,
    load_model,
    n_layers,
)

# ---- zoo ----------------------------------------------------------------------------------------
SEED_AND_CURRENT = [
    "gf-6L-30M-i2048", "Geneformer-V1-10M", "gf-12L-30M-i2048", "gf-12L-95M-i4096", "gf-20L-95M-i4096",
    "gf-12L-95M-i4096-CLcancer", "gf-12L-95M-i4096_CLcancer", "Geneformer-V2-104M", "Geneformer-V2-316M",
    "Geneformer-V2-104M_CLcancer",
]


@pytest.mark.parametrize("name", SEED_AND_CURRENT)
def test_zoo_has_every_published_name(name):
    spec = MODEL_ZOO[name]
    assert spec.repo == "ctheodoris/Geneformer"
    assert spec.vocab_version in ("V1", "V2")
    assert spec.vocab_size == {"V1": 25426, "V2": 20275}[spec.vocab_version]
    assert spec.input_size == {"V1": 2048, "V2": 4096}[spec.vocab_version]
    assert spec.special_tokens == (spec.vocab_version == "V2")
    assert spec.hidden_size % spec.num_heads == 0


def test_zoo_alias_is_same_model():
    assert MODEL_ZOO["gf-6L-30M-i2048"] is MODEL_ZOO["Geneformer-V1-10M"]
    assert get_spec("geneformer-v2-104m").name == "Geneformer-V2-104M"
    assert len(list_models()) == 8
    with pytest.raises(KeyError, match="Known models"):
        get_spec("gf-99L")


def test_zoo_matches_published_configs(shared_dir):
    files = {
        "Geneformer-V1-10M": "gf-6L-30M-i2048.Geneformer-V1-10M.config.json",
        "gf-12L-30M-i2048": "gf-12L-30M-i2048.config.json",
        "gf-12L-95M-i4096": "gf-12L-95M-i4096.config.json",
        "Geneformer-V2-104M": "Geneformer-V2-104M.config.json",
        "Geneformer-V2-316M": "Geneformer-V2-316M.config.json",
        "Geneformer-V2-104M_CLcancer": "Geneformer-V2-104M_CLcancer.config.json",
    }
    for name, fname in files.items():
        cfg = json.loads((shared_dir / "models" / "configs" / fname).read_text())
        spec = MODEL_ZOO[name]
        got = spec.bert_config_kwargs()
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id", "type_vocab_size",
                    "hidden_dropout_prob", "attention_probs_dropout_prob"):
            assert got[key] == cfg[key], (name, key)


def test_zoo_parameter_counts():
    assert abs(MODEL_ZOO["Geneformer-V1-10M"].n_params / 1e6 - 10.3) < 0.5
    assert abs(MODEL_ZOO["Geneformer-V2-104M"].n_params / 1e6 - 104) < 2
    assert abs(MODEL_ZOO["Geneformer-V2-316M"].n_params / 1e6 - 316) < 3


def test_init_model_uses_zoo_architecture():
    with torch.device("meta"):  # shapes only; no time spent on random initialisation
        m = init_model("gf-6L-30M-i2048", seed=1)
    assert (m.config.num_hidden_layers, m.config.hidden_size, m.config.num_attention_heads) == (6, 256, 4)
    assert (m.config.intermediate_size, m.config.max_position_embeddings, m.config.vocab_size) == (512, 2048, 25426)
    assert m.config.hidden_act == "relu"
    n = sum(p.numel() for p in m.parameters())
    assert abs(n / 1e6 - MODEL_ZOO["Geneformer-V1-10M"].n_params / 1e6) < 0.1


# ---- loading ------------------------------------------------------------------------------------
def test_load_local_folder(mini_v1, golden_dir):
    assert type(mini_v1).__name__ == "BertForMaskedLM"
    assert mini_v1.config._attn_implementation == "sdpa"
    assert not mini_v1.training
    assert n_layers(mini_v1) == 3
    load_model(golden_dir / "models" / "mini-V1", vocab="V1")  # matching vocabulary: no error


def test_vocab_mixup_names_both_versions(golden_dir, vocab_v2):
    with pytest.raises(ModelLoadError) as err:
        load_model(golden_dir / "models" / "mini-V1", vocab=vocab_v2)
    msg = str(err.value)
    assert "V1" in msg and "V2" in msg and "25,426" in msg and "20,275" in msg


@pytest.mark.parametrize("kind,cls_name", [
    ("cell_classifier", "BertForSequenceClassification"),
    ("CellClassifier", "BertForSequenceClassification"),
    ("gene_classifier", "BertForTokenClassification"),
    ("Pretrained", "BertForMaskedLM"),
])
def test_load_kinds(golden_dir, kind, cls_name):
    m = load_model(golden_dir / "models" / "mini-V2", kind=kind, num_labels=3)
    assert type(m).__name__ == cls_name
    if kind.lower() != "pretrained":
        assert m.config.num_labels == 3


def test_folder_without_weights(tmp_path, golden_dir):
    shutil.copy(golden_dir / "models" / "mini-V1" / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="no model weights"):
        load_model(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(empty)


def test_unknown_name_lists_zoo():
    with pytest.raises(ModelLoadError, match="Geneformer-V2-104M"):
        load_model("no-such-model-anywhere")


def test_zoo_name_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="subfolder Geneformer-V1-10M"):
        load_model("Geneformer-V1-10M")


def test_legacy_zoo_name_offline_says_how_to_reach_it(monkeypatch):
    # the 2024 models are not pinned to a revision; the error tells how to pass one
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert all(spec.revision is None for spec in MODEL_ZOO.values())
    with pytest.raises(ModelLoadError, match="revision=") as err:
        load_model("gf-20L-95M-i4096")
    assert "subfolder gf-20L-95M-i4096" in str(err.value)
    with pytest.raises(ModelLoadError, match="revision abc1234"):
        load_model("gf-20L-95M-i4096", revision="abc1234")


def test_layer_index(mini_v1):
    assert layer_index(mini_v1, 0) == 3
    assert layer_index(mini_v1, -1) == 2
    assert layer_index(mini_v1, -3) == 0
    with pytest.raises(ValueError, match="out of range"):
        layer_index(mini_v1, 1)
    with pytest.raises(ValueError, match="out of range"):
        layer_index(mini_v1, -4)


def test_models_cli_lists_zoo():
    import typer
    from typer.testing import CliRunner

    from geneformer.cli import models as models_cli

    app = typer.Typer()
    models_cli.register(app)

    @app.command("noop")
    def _noop():  # a second command keeps typer in multi-command mode
        pass

    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    for name in ("Geneformer-V1-10M", "gf-6L-30M-i2048", "Geneformer-V2-316M", "gf-20L-95M-i4096"):
        assert name in res.output
    res = CliRunner().invoke(app, ["models", "--json"])
    assert res.exit_code == 0
    assert len(json.loads(res.output)) == 8


