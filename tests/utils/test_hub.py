"""Offline detection: a first call without a reachable hub fails within seconds, saying where it looked."""

from __future__ import annotations

import time

import pytest

import geneformer as gf
from geneformer._utils import ModelLoadError, VocabularyError, forget_hub_probe, hub_offline, hub_offline_reason


@pytest.fixture
def dead_hub(monkeypatch, tmp_path):
    """No offline variable, no dictionaries folder, an empty cache, and a hub endpoint on a closed port."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "GENEFORMER_DICTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("GENEFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    forget_hub_probe()
    yield
    forget_hub_probe()


def test_offline_variables_are_honoured(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert gf.settings.hub_offline is True
    assert hub_offline() is True
    assert "offline mode" in hub_offline_reason()


def test_unreachable_hub_is_detected_once(dead_hub):
    start = time.perf_counter()
    assert hub_offline() is True
    assert hub_offline() is True  # remembered: no second probe
    assert time.perf_counter() - start < 5
    assert hub_offline_reason() == "unreachable at 127.0.0.1:9"


def test_dictionary_lookup_fails_fast_and_says_where(dead_hub):
    start = time.perf_counter()
    with pytest.raises(VocabularyError) as err:
        gf.GeneVocab.load("V1")
    assert time.perf_counter() - start < 5  # not half a minute of hub retries
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("GENEFORMER_DICTS_DIR (unset)", "the cache", "ctheodoris/Geneformer", "unreachable at 127.0.0.1:9",
                 "--vocab FOLDER", "settings.dicts_dir"):
        assert part in msg, part
    assert "pass the file path" not in msg


def test_cli_flags_named_by_the_dictionary_message_exist():
    # the message promises --vocab for these commands
    from typer.main import get_command

    from geneformer.cli.main import app

    group = get_command(app)
    for name in ("tokenize", "embed", "pretrain"):
        opts = {o for p in group.commands[name].params for o in getattr(p, "opts", [])}
        assert "--vocab" in opts, name


def test_zoo_model_fails_fast_and_says_how_to_point_at_a_folder(dead_hub):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        gf.Geneformer(gf.GeneformerConfig(model_name="gf-12L-95M-i4096"))
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "\n" not in msg
    assert "unreachable at 127.0.0.1:9" in msg and "--model FOLDER" in msg and "subfolder /" in msg
