"""The commands agree: -q everywhere, CPU defaults, model spellings, flag names in messages, tables."""

from __future__ import annotations

import re

import pandas as pd
from typer.main import get_command
from typer.testing import CliRunner

from geneformer.cli._flags import CLI_SPELLINGS, cli_spelling
from geneformer.cli.main import app

runner = CliRunner()


def _options(command: str) -> set[str]:
    return {o for p in get_command(app).commands[command].params for o in getattr(p, "opts", [])}


def test_tokenize_has_quiet_and_uses_the_usable_cpus(monkeypatch, tmp_path):
    import geneformer.tokenization as tok
    from geneformer._utils import usable_cpus

    seen = {}

    def fake(inputs, out, vocab, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(tok, "tokenize_files", fake)
    res = runner.invoke(app, ["tokenize", str(tmp_path / "x.h5ad"), "--output", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    assert seen["nproc"] == usable_cpus() and seen["progress"] is False
    res = runner.invoke(app, ["tokenize", str(tmp_path / "x.h5ad"), "--output", str(tmp_path), "--nproc", "1"])
    assert seen["nproc"] == 1 and seen["progress"] is None


def test_every_command_that_shows_progress_has_quiet():
    for name in ("tokenize", "embed", "finetune", "predict", "perturb"):
        assert {"-q", "--quiet"} <= _options(name), name


def test_predict_takes_the_model_spellings_of_the_other_commands(golden_dir, monkeypatch, tmp_path):
    ds = str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V2.dataset")
    res = runner.invoke(app, ["predict", ds, "--model", "Geneformer-V2-104M", "--output", str(tmp_path / "p.csv")])
    assert res.exit_code == 2
    assert "pretrained zoo model" in res.output and "geneformer finetune --model Geneformer-V2-104M" in res.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = runner.invoke(app, ["predict", ds, "--model", "someone/fine-tuned", "--output", str(tmp_path / "p.csv")])
    assert res.exit_code == 2 and "someone/fine-tuned" in res.output and "--model FOLDER" in res.output


def test_core_parameter_names_become_flags_in_cli_messages(golden_dir, tmp_path):
    ds = str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V2.dataset")
    res = runner.invoke(app, ["embed", ds, "--model", str(golden_dir / "models" / "mini-V2"),
                              "--output", str(tmp_path / "e.csv"), "--label", "donor", "-q"])
    assert res.exit_code == 2
    assert "custom_attr_name_dict" not in res.output and "geneformer tokenize --attr" in res.output
    assert cli_spelling("gene_names='x' is not a column") == "--gene-names 'x' is not a column"
    assert cli_spelling("my_emb_layer stays") == "my_emb_layer stays"


def test_every_flag_a_message_may_name_exists():
    flags = set().union(*(_options(name) for name in get_command(app).commands))
    for spelled in CLI_SPELLINGS.values():
        for flag in re.findall(r"--[a-z-]+", spelled):
            assert flag in flags, flag


def test_models_table_is_aligned():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    header, rule, *rows = res.output.rstrip("\n").split("\n")
    assert set(rule) == {"-"}
    for col in ("vocab", "hub"):
        start = header.index(col)
        for row in rows:
            assert row[start - 2:start] == "  " and row[start] != " ", (col, row)


def test_top_level_help_has_examples():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "Examples:" in res.output and "geneformer embed" in res.output and "GENEFORMER_DICTS_DIR" in res.output


def test_embedding_tables_have_named_columns_and_gene_symbols(golden_dir, tmp_path):
    ds = str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V2.dataset")
    model = str(golden_dir / "models" / "mini-V2")
    res = runner.invoke(app, ["embed", ds, "--model", model, "--output", str(tmp_path / "c.csv"), "--max-ncells", "4",
                              "--label", "cell_type", "-q"])
    assert res.exit_code == 0, res.output
    cells = pd.read_csv(tmp_path / "c.csv")
    assert list(cells.columns[:2]) == ["0", "1"] and cells.columns[-1] == "cell_type" and len(cells) == 4
    res = runner.invoke(app, ["embed", ds, "--model", model, "--output", str(tmp_path / "g.csv"), "--max-ncells", "2",
                              "--mode", "gene", "-q"])
    assert res.exit_code == 0, res.output
    genes = pd.read_csv(tmp_path / "g.csv", keep_default_na=False)
    assert list(genes.columns[:3]) == ["ensembl_id", "symbol", "0"]
    assert genes["ensembl_id"].str.startswith("ENSG").all()
    assert (genes["symbol"] != "").mean() > 0.9
    from geneformer.vocab import GeneVocab

    to_symbol = GeneVocab.load("V2").ensembl_to_symbol
    row = genes.iloc[0]
    assert row["symbol"] == to_symbol[row["ensembl_id"]]

