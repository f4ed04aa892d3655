"""A quiet console by default: our own progress bars, no third-party bars, load reports or log dicts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def _run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    code = "from geneformer.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_default_embed_run_has_no_third_party_output(golden_dir, data_dir, tmp_path):
    import anndata as ad

    # an .h5ad input: tokenized on the fly, model loaded, embedded (every stage's console)
    a = ad.read_h5ad(data_dir / "kang2018_ifnb_harmony_2k.h5ad", backed="r")
    a[:12].to_memory().write_h5ad(tmp_path / "cells.h5ad")
    res = _run_cli("embed", str(tmp_path / "cells.h5ad"), "--model", str(golden_dir / "models" / "mini-V2"),
                   "--output", str(tmp_path / "embs.csv"), tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    err = res.stderr
    for noise in ("Loading weights", "LOAD REPORT", "UNEXPECTED", "MISSING", "{'loss'"):
        assert noise not in err, (noise, err)
    assert "cell embeddings" in err  # our own bar is still there
    assert "513 matched" in err  # and our own summary of the gene match


@pytest.fixture
def transformers_records():
    """What transformers logs (its logger does not propagate, and its own handler may hold an old stream)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf = logging.getLogger("transformers")
    hf.addHandler(handler)
    yield records
    hf.removeHandler(handler)


def test_classifier_load_prints_no_load_report(golden_dir, capfd, transformers_records):
    from geneformer.models import load_model

    load_model(golden_dir / "models" / "mini-V2", kind="cell_classifier", num_labels=3)
    out, err = capfd.readouterr()
    assert "Loading weights" not in err + out
    assert not [r for r in transformers_records if "LOAD REPORT" in r.getMessage()]


def test_debug_verbosity_lets_the_load_report_through(golden_dir, transformers_records):
    import geneformer as gf
    from geneformer.models import load_model

    with gf.settings.override(verbosity="debug"):
        load_model(golden_dir / "models" / "mini-V2", kind="cell_classifier", num_labels=3)
    assert [r for r in transformers_records if "LOAD REPORT" in r.getMessage()]


def test_trainer_log_dicts_are_not_printed(tmp_path, capfd):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, TrainerControl, TrainerState

    from geneformer.train._trainer import ClassifierTrainer, training_arguments

    model = BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=8, num_labels=2))
    for disable_tqdm in (False, True):
        args = training_arguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=disable_tqdm,
                                  use_cpu=True)
        trainer = ClassifierTrainer(model=model, args=args, train_dataset=[{"input_ids": torch.tensor([1])}])
        trainer.callback_handler.on_log(args, TrainerState(), TrainerControl(), logs={"loss": 0.123, "epoch": 1.0})
    out, err = capfd.readouterr()
    assert "0.123" not in out + err and "'loss'" not in out + err


def test_datasets_bars_are_off_unless_verbose(monkeypatch):
    from typer.testing import CliRunner

    from geneformer.cli.main import app

    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "")  # restored (or removed) after the test
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS")
    assert CliRunner().invoke(app, ["-v", "models"]).exit_code == 0  # the run without -v resets the verbosity
    assert "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ
    assert CliRunner().invoke(app, ["models"]).exit_code == 0
    assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
