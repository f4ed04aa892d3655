"""The perturbation table as users read it: one table (gene names included) from the CLI's parquet
and from ``perturb()``, value columns named for what they hold, raw pickle names without brackets
from our own front ends, older tables still read, and perturb-stats explaining a goal-state folder."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

LYZ = "ENSG00000090382"


@pytest.fixture(scope="module")
def few_v1(golden_dir, vocab_v1):
    """Four real PBMC cells of the reference's V1 tokenization (each holding LYZ), cut short."""
    import datasets

    ds = datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))
    lyz = vocab_v1.token_dict[LYZ]
    rows = [i for i, ids in enumerate(ds["input_ids"]) if lyz in ids[:12]][:4]
    ids = [[*ds[i]["input_ids"][:12]] for i in rows]
    return datasets.Dataset.from_dict({"input_ids": ids, "length": [len(s) for s in ids],
                                       "cell_id": [ds[i]["cell_id"] for i in rows]})


def test_cli_parquet_is_the_table_perturb_returns(golden_dir, few_v1, vocab_v1, tmp_path):
    from typer.testing import CliRunner

    from geneformer.cli.main import app
    from geneformer.perturb import perturb, read_results

    data = tmp_path / "cells.dataset"
    few_v1.save_to_disk(str(data))
    model = str(golden_dir / "models" / "mini-V1")
    res = CliRunner().invoke(app, ["perturb", str(data), "--model", model, "--output", str(tmp_path / "cli"),
                                   "--prefix", "lyz", "--genes", LYZ, "--emb-mode", "cell_and_gene", "-q"])
    assert res.exit_code == 0, res.output
    names = sorted(os.listdir(tmp_path / "cli"))
    assert not [n for n in names if "[" in n or " " in n], names
    assert "in_silico_delete_lyz_cell_embs_dict_" f"{vocab_v1.token_dict[LYZ]}_raw.pickle" in names
    cli = read_results(tmp_path / "cli" / "in_silico_delete_lyz.parquet")
    assert (cli["perturbed_gene"] == LYZ).all() and (cli["perturbed_symbol"] == "LYZ").all()
    gene_rows = cli[cli["affected"].notna()]
    assert len(gene_rows) and gene_rows["affected_symbol"].notna().all()
    assert cli.loc[cli["affected"].isna(), "affected_gene"].isna().all()
    assert "value" not in cli.columns and cli["cosine_similarity"].between(-1.0001, 1.0001).all()

    api = perturb(data, model, [LYZ], emb_mode="cell_and_gene", output_dir=tmp_path / "api", prefix="lyz",
                  progress=False)
    assert list(api.columns) == list(cli.columns)
    np.testing.assert_allclose(api["cosine_similarity"], cli["cosine_similarity"], atol=1e-6)
    assert (api["affected_symbol"].fillna("") == cli["affected_symbol"].fillna("")).all()


def test_goal_state_table_names_shift_and_cosine(mini_v2, golden_dir, tmp_path):
    import datasets
    import torch

    from geneformer.perturb import perturb

    ds = datasets.load_from_disk(str(golden_dir / "tokenized" / "kang2018_ifnb_harmony_2k_V2.dataset"))
    ds = ds.select(range(6)).map(lambda r: {"input_ids": r["input_ids"][:9] + [3], "length": 10})
    rng = np.random.default_rng(0)
    states = {s: torch.tensor(rng.normal(size=64), dtype=torch.float32) for s in ("ctrl", "stim")}
    df = perturb(ds, mini_v2, "all", emb_mode="cls_and_gene", state_key="condition", start_state="ctrl",
                 goal_state="stim", state_embs=states, max_ncells=2, output_dir=tmp_path, prefix="g",
                 progress=False)
    cell = df[df["affected"].isna()]
    gene = df[df["affected"].notna()]
    assert len(cell) and len(gene)
    assert cell["shift_toward_state"].notna().all() and cell["cosine_similarity"].isna().all()
    assert gene["cosine_similarity"].notna().all() and gene["shift_toward_state"].isna().all()
    assert set(cell["state"]) == {"ctrl", "stim"}


def test_tables_with_the_old_value_column_are_still_read(golden_dir, few_v1, vocab_v1, tmp_path):
    import pyarrow.parquet as pq

    from geneformer.perturb import _store as S
    from geneformer.perturb import perturb, read_results

    path = perturb(few_v1, golden_dir / "models" / "mini-V1", [LYZ], emb_mode="cell", output_dir=tmp_path,
                   prefix="old", return_frame=False, progress=False)
    table = pq.read_table(path)
    keep = [c for c in table.column_names if not c.endswith(("_gene", "_symbol"))]
    legacy = table.select(keep).rename_columns([("value" if c == S.COSINE_COLUMN else c) for c in keep])
    pq.write_table(legacy, tmp_path / "legacy.parquet")
    old = read_results(tmp_path / "legacy.parquet")
    assert "value" in old.columns
    np.testing.assert_allclose(S.value_array(legacy), table.column(S.COSINE_COLUMN).to_numpy(), atol=0)
    # the raw pickles are rebuilt from an old table too (a finished run from before the rename)
    store = S.RunStore(tmp_path, "legacy")
    names = S.raw_file_names(tmp_path, "legacy", [vocab_v1.token_dict[LYZ]], reference=False)
    (raw,) = store.write_raw(names, None)
    from geneformer.perturb import load_raw

    vals = next(iter(load_raw(raw).values()))
    np.testing.assert_allclose(sorted(vals), sorted(old["value"]), atol=1e-7)


def test_mixture_model_on_a_goal_state_folder_names_the_modes_that_fit(golden_dir, tmp_path):
    from typer.testing import CliRunner

    from geneformer.cli.main import app

    res = CliRunner().invoke(app, ["perturb-stats", str(golden_dir / "perturb" / "V2_kang_goal_delete_all"),
                                   "--output", str(tmp_path), "--prefix", "mix", "--mode", "mixture_model"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "goal-state run" in text and "goal_state_shift" in text and "--state-key" in text
    assert "ctrl" in text  # the run's states are named
    assert not pd.io.common.file_exists(str(tmp_path / "mix.csv"))
