"""Cell/cls/gene embeddings: parity with the reference's golden outputs, output forms, attention, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from geneformer._utils import InputError
from geneformer.compat import EmbExtractor, get_embs
from geneformer.data import downsample_and_sort
from geneformer.embeddings import attention_network, cell_embeddings, gene_embeddings, get_attentions, load_state_embs
from geneformer.models import load_model

TOL = 1e-5


@pytest.fixture(scope="module")
def models(golden_dir):
    return {v: load_model(golden_dir / "models" / f"mini-{v}", device="cpu") for v in ("V1", "V2")}


@pytest.fixture(scope="module")
def pbmc(golden_dir):
    import datasets

    return {v: datasets.load_from_disk(str(golden_dir / "tokenized" / f"pbmc3k_raw_seurat_labels_{v}.dataset"))
            for v in ("V1", "V2")}


def _golden(golden_dir, name):
    return pd.read_csv(golden_dir / "embeddings" / f"{name}.csv", index_col=0)


def _emb_cols(df):
    return [c for c in df.columns if str(c).isdigit()]


def _subset_by_ids(ds, cell_ids):
    pos = {c: i for i, c in enumerate(ds["cell_id"])}
    return ds.select([pos[c] for c in cell_ids])


def _short_and_long(golden, ds, n_short=24, n_long=2):
    """Golden cell ids: the shortest (fast) and the longest (padding-heavy) of the reference's cells."""
    sub = _subset_by_ids(ds, list(golden["cell_id"]))
    order = np.argsort(np.asarray(sub["length"]), kind="stable")
    picks = np.concatenate([order[:n_short], order[-n_long:]])
    return [golden["cell_id"].iloc[i] for i in picks]


# ---- parity with the golden reference outputs -----------------------------------------------------
@pytest.mark.parametrize("version,mode,layer,name", [
    ("V1", "cell", -1, "pbmc3k_V1_cell_L-1"),
    ("V1", "cell", 0, "pbmc3k_V1_cell_L0"),
    ("V2", "cls", -1, "pbmc3k_V2_cls_L-1"),
    ("V2", "cell", -1, "pbmc3k_V2_cell_L-1"),
])
def test_cell_parity(golden_dir, models, pbmc, version, mode, layer, name):
    golden = _golden(golden_dir, name)
    ids = _short_and_long(golden, pbmc[version])
    data = _subset_by_ids(pbmc[version], ids)
    ours = cell_embeddings(models[version], data, mode=mode, emb_layer=layer, batch_size=8, progress=False)
    ref = golden.set_index("cell_id").loc[ids, _emb_cols(golden)].to_numpy(np.float64)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL


def test_reference_row_selection(golden_dir, pbmc):
    """shuffle(42) + cap 200 + stable length sort gives the reference's rows in the reference's order."""
    for version in ("V1", "V2"):
        golden = _golden(golden_dir, f"pbmc3k_{version}_cell_L-1")
        ours = downsample_and_sort(pbmc[version], 200)
        assert list(ours["cell_id"]) == list(golden["cell_id"])
        assert list(ours["cell_type"]) == list(golden["cell_type"])


def test_extract_embs_end_to_end(golden_dir, models, pbmc, tmp_path):
    """The reference-compatible path on a V2 cls run: CSV layout, row order, labels and values.

    With max_ncells=40 the rows are the first 40 of the same shuffle, so they must appear in the
    reference's 200-cell output in the same relative (length-descending) order.
    """
    golden = _golden(golden_dir, "pbmc3k_V2_cls_L-1")
    ex = EmbExtractor(emb_mode="cls", emb_layer=-1, max_ncells=40, emb_label=["cell_type", "cell_id"],
                      forward_batch_size=16, model_version="V2")
    df = ex.extract_embs(models["V2"], pbmc["V2"], tmp_path, "pbmc_cls")
    written = pd.read_csv(tmp_path / "pbmc_cls.csv", index_col=0)
    assert list(written.columns) == list(golden.columns)
    assert list(written.index) == list(range(40))
    ref = golden[golden["cell_id"].isin(set(written["cell_id"]))]
    assert len(ref) == 40 and list(written["cell_id"]) == list(ref["cell_id"])
    assert list(written["cell_type"]) == list(ref["cell_type"])
    cols = _emb_cols(golden)
    assert np.abs(written[cols].to_numpy() - ref[cols].to_numpy()).max() <= TOL
    assert list(df.columns[:64]) == list(range(64))


def test_gene_parity(golden_dir, models, pbmc, tmp_path):
    golden = _golden(golden_dir, "pbmc3k_V1_gene_L-1")
    ex = EmbExtractor(emb_mode="gene", emb_layer=-1, max_ncells=20, emb_label=["cell_type", "cell_id"],
                      forward_batch_size=16, model_version="V1")
    df = ex.extract_embs(models["V1"], pbmc["V1"], tmp_path, "genes")
    assert set(df.index) == set(golden.index)
    cols = _emb_cols(golden)
    diff = np.abs(df.loc[golden.index, [int(c) for c in cols]].to_numpy() - golden[cols].to_numpy())
    assert diff.max() <= TOL
    assert (tmp_path / "genes.csv").stat().st_size > 0


def test_state_embs_parity(golden_dir, models, tmp_path):
    gold = load_state_embs(golden_dir / "embeddings" / "kang_V2_state_embs.pkl")
    ex = EmbExtractor(emb_mode="cls", max_ncells=400, summary_stat="exact_mean", forward_batch_size=32,
                      model_version="V2")
    states = {"state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": []}
    ours = ex.get_state_embs(states, models["V2"], golden_dir / "tokenized" / "kang2018_ifnb_harmony_2k_V2.dataset",
                             tmp_path, "kang")
    assert set(ours) == {"ctrl", "stim"}
    for state, ref in gold.items():
        assert torch.is_tensor(ours[state]) and ours[state].shape == (64,)
        assert (ours[state] - ref.cpu()).abs().max().item() <= TOL
    again = load_state_embs(tmp_path / "kang.pkl")
    assert torch.equal(again["ctrl"], ours["ctrl"])


# ---- reference bugs fixed ----------------------------------------------------------------------------
def test_state_matching_is_equality(models, pbmc, tmp_path):
    """'cm' must not pick up 'dcm' cells (the reference's substring test did)."""
    data = pbmc["V2"].select(range(12))
    cond = ["cm"] * 4 + ["dcm"] * 8
    data = data.remove_columns("cell_type").add_column("disease", cond)
    ex = EmbExtractor(emb_mode="cls", max_ncells=None, summary_stat="exact_mean", forward_batch_size=6,
                      model_version="V2")
    st = ex.get_state_embs({"state_key": "disease", "start_state": "cm", "goal_state": "dcm"}, models["V2"],
                           data, tmp_path, "states")
    per_cell = cell_embeddings(models["V2"], data, mode="cls", progress=False)
    assert np.allclose(st["cm"].numpy(), per_cell[:4].mean(0), atol=1e-6)
    assert np.allclose(st["dcm"].numpy(), per_cell[4:].mean(0), atol=1e-6)


def test_special_tokens_detected_from_data(models, pbmc):
    """V2 data without <cls>/<eos>: 'cell' mode averages every gene (the reference dropped two)."""
    model = models["V2"]
    with_special = pbmc["V2"].select(range(3))
    stripped = [ids[1:-1] for ids in with_special["input_ids"]]
    a = cell_embeddings(model, stripped, mode="cell", progress=False)
    from geneformer.data import as_sequences
    from geneformer.inference import collate, forward_hidden

    seqs = as_sequences(stripped)
    for i in range(3):
        ids, mask, _ = collate(seqs, np.array([i]))
        with torch.inference_mode():
            h, _ = forward_hidden(model, ids, mask, 2)
        assert np.allclose(a[i], h[0].mean(0).numpy(), atol=1e-5)
    # with specials: <cls> and <eos> are excluded
    b = cell_embeddings(model, with_special, mode="cell", progress=False)
    seqs = as_sequences(with_special)
    ids, mask, _ = collate(seqs, np.array([0]))
    with torch.inference_mode():
        h, _ = forward_hidden(model, ids, mask, 2)
    assert np.allclose(b[0], h[0, 1:-1].mean(0).numpy(), atol=1e-5)


def test_cls_mode_needs_cls(models, pbmc):
    stripped = [ids[1:-1] for ids in pbmc["V2"].select(range(2))["input_ids"]]
    with pytest.raises(InputError, match="<cls>"):
        cell_embeddings(models["V2"], stripped, mode="cls", progress=False)
    with pytest.raises(InputError, match="V1"):
        cell_embeddings(models["V1"], pbmc["V1"].select(range(2)), mode="cls", progress=False)


def test_v1_extractor_turns_cls_into_cell():
    assert EmbExtractor(emb_mode="cls", model_version="V1").emb_mode == "cell"


# ---- output forms -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(pbmc):
    """20 short V1 cells."""
    ds = pbmc["V1"]
    order = np.argsort(np.asarray(ds["length"]), kind="stable")[:20]
    return ds.select(np.sort(order))


def test_input_order_kept(models, small):
    a = cell_embeddings(models["V1"], small, batch_size=3, progress=False)
    rev = small.select(list(range(len(small)))[::-1])
    b = cell_embeddings(models["V1"], rev, batch_size=7, progress=False)
    assert np.allclose(a, b[::-1], atol=1e-5)
    c = cell_embeddings(models["V1"], small, batch_size=None, progress=False)  # automatic batches
    assert np.allclose(a, c, atol=1e-5)


def test_layer_choice_differs(models, small):
    last = cell_embeddings(models["V1"], small, emb_layer=0, progress=False)
    second = cell_embeddings(models["V1"], small, emb_layer=-1, progress=False)
    emb = cell_embeddings(models["V1"], small, emb_layer=-3, progress=False)
    assert not np.allclose(last, second) and not np.allclose(second, emb)


def test_anndata_write_back(models, small):
    import anndata as ad

    adata = ad.AnnData(np.zeros((len(small), 3), dtype=np.float32))
    adata.var_names = ["ENSG00000198851", "ENSG00000090382", "ENSG_NOT_THERE"]
    embs = cell_embeddings(models["V1"], small, progress=False)
    from geneformer.embeddings import add_cell_embeddings, add_gene_embeddings

    add_cell_embeddings(adata, embs)
    assert adata.obsm["X_geneformer"].shape == (len(small), 64)
    genes = gene_embeddings(models["V1"], small, progress=False).to_frame("V1")
    add_gene_embeddings(adata, genes)
    assert adata.varm["X_geneformer"].shape == (3, 64)
    assert np.isnan(adata.varm["X_geneformer"][2]).all()
    assert adata.uns["geneformer_gene_embeddings"].shape == genes.shape
    with pytest.raises(ValueError, match="rows="):
        add_cell_embeddings(adata, embs[:5])
    add_cell_embeddings(adata, embs[:5], rows=np.arange(5))
    assert np.isnan(adata.obsm["X_geneformer"][5:]).all()


def test_parquet_csv_tensor_outputs(models, small, tmp_path):
    from geneformer.embeddings import embedding_frame, write_csv, write_parquet, write_tensor

    embs = cell_embeddings(models["V1"], small, progress=False)
    df = embedding_frame(embs, {"cell_type": small["cell_type"], "cell_id": small["cell_id"]})
    write_parquet(df, tmp_path / "e.parquet")
    back = pd.read_parquet(tmp_path / "e.parquet")
    assert list(back.columns[:2]) == ["0", "1"] and back["cell_id"].tolist() == small["cell_id"]
    assert np.allclose(back[[str(i) for i in range(64)]].to_numpy(), embs)
    write_csv(df, tmp_path / "e.csv")
    csv = pd.read_csv(tmp_path / "e.csv", index_col=0)
    assert list(csv.columns) == [str(i) for i in range(64)] + ["cell_type", "cell_id"]
    write_tensor(embs, tmp_path / "e.pt")
    assert torch.load(tmp_path / "e.pt").shape == (len(small), 64)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_gene_embeddings_exclude_special(models, pbmc):
    data = pbmc["V2"].select(range(3))
    plain = gene_embeddings(models["V2"], data, progress=False).to_frame("V2")
    ref_style = gene_embeddings(models["V2"], data, include_special=True, progress=False).to_frame("V2")
    assert "<cls>" not in plain.index and "<eos>" not in plain.index
    assert "<cls>" in ref_style.index and "<eos>" in ref_style.index
    assert len(ref_style) == len(plain) + 2


def test_summaries(models, small, tmp_path):
    per_cell = cell_embeddings(models["V1"], small, progress=False)
    kw = dict(emb_mode="cell", max_ncells=None, forward_batch_size=8, model_version="V1")
    exact = EmbExtractor(summary_stat="exact_mean", **kw).extract_embs(models["V1"], small, tmp_path, "xm")
    assert exact.index.tolist() == ["exact_mean"]
    assert np.allclose(exact.to_numpy()[0], per_cell.mean(0), atol=1e-6)
    # the CSV holds the per-cell embeddings (as the reference writes it before summarising)
    assert len(pd.read_csv(tmp_path / "xm.csv", index_col=0)) == len(small)
    med = EmbExtractor(summary_stat="exact_median", **kw).extract_embs(models["V1"], small, tmp_path, "xmed")
    assert np.allclose(med.to_numpy()[0], np.median(per_cell, 0), atol=1e-6)
    approx = EmbExtractor(summary_stat="mean", **kw).extract_embs(models["V1"], small, tmp_path, "am")
    assert np.allclose(approx.to_numpy()[0], per_cell.mean(0), atol=1e-5)
    amed = EmbExtractor(summary_stat="median", save_tdigest=True, **kw).extract_embs(
        models["V1"], small, tmp_path, "amed")
    spread = per_cell.max(0) - per_cell.min(0)
    assert (np.abs(amed.to_numpy()[0] - np.median(per_cell, 0)) <= 0.1 * spread + 1e-6).all()
    assert (tmp_path / "amed_tdigest.pkl").exists()


def test_gene_all_style(models, small, tmp_path):
    ex = EmbExtractor(emb_mode="gene", gene_emb_style="all", max_ncells=None, forward_batch_size=8,
                      model_version="V1")
    df = ex.extract_embs(models["V1"], small.select(range(3)), tmp_path, "all")
    assert df.index.name == "Gene"
    assert len(df) == sum(small.select(range(3))["length"])
    assert df.columns[0] == "Identifier" and list(df.columns[1:4]) == ["0", "1", "2"]


def test_get_embs_reference_function(models, small):
    from geneformer.vocab import GeneVocab

    model = models["V1"]
    inv = {v: k for k, v in GeneVocab.load("V1").token_dict.items()}
    cells = get_embs(model, small, "cell", 2, 0, 8, inv, silent=True)
    assert torch.is_tensor(cells) and cells.shape == (len(small), 64)
    assert np.allclose(cells.numpy(), cell_embeddings(model, small, progress=False), atol=1e-6)
    genes = get_embs(model, small.select(range(4)), "gene", 2, 0, 8, inv, silent=True)
    lens = small.select(range(4))["length"]
    assert genes.shape == (4, max(lens), 64)
    assert torch.all(genes[int(np.argmin(lens)), min(lens):] == 0)
    summary = get_embs(model, small, "cell", 2, 0, 8, inv, summary_stat="mean", silent=True)
    assert summary.shape == (64,)


# ---- attention --------------------------------------------------------------------------------------
def test_attention_shape_and_normalisation(models, small):
    model = models["V1"]
    out = get_attentions(model, small, cells=[3, 0], layers=[0, -1], progress=False)
    assert [a.row for a in out] == [3, 0]
    for a in out:
        n = len(a.token_ids)
        assert a.weights.shape == (2, 4, n, n)
        assert a.layers == (0, 2)
        assert np.allclose(a.weights.sum(-1), 1.0, atol=1e-4)
        assert (a.weights >= 0).all()


def test_attention_network(models, pbmc):
    net = attention_network(models["V2"], pbmc["V2"].select(range(4)), layers=-1, top_k=5, vocab="V2",
                            progress=False)
    assert list(net.columns) == ["source", "target", "weight", "n_cells"]
    assert len(net) > 0
    assert net["weight"].between(0, 1).all()
    assert net["source"].str.startswith("ENSG").all() and net["target"].str.startswith("ENSG").all()
    assert net["weight"].is_monotonic_decreasing


# ---- bad input --------------------------------------------------------------------------------------
def test_unknown_label_column(models, small, tmp_path):
    ex = EmbExtractor(emb_mode="cell", emb_label=["no_such_column"], model_version="V1", max_ncells=None)
    with pytest.raises(KeyError, match="no_such_column"):
        ex.extract_embs(models["V1"], small, tmp_path, "x")


def test_empty_after_filter(models, small, tmp_path):
    ex = EmbExtractor(emb_mode="cell", filter_data={"cell_type": ["Martian"]}, model_version="V1")
    with pytest.raises(ValueError, match="No cells"):
        ex.extract_embs(models["V1"], small, tmp_path, "x")


def test_other_vocabulary_dataset(models, pbmc, tmp_path):
    ex = EmbExtractor(emb_mode="cell", model_version="V1", max_ncells=5)
    with pytest.raises(InputError, match="V2"):
        ex.extract_embs(models["V1"], pbmc["V2"], tmp_path, "x")
    # V1 tokens that do not exist in V2
    with pytest.raises(InputError, match="vocabulary"):
        cell_embeddings(models["V2"], [[2, 25000, 3]], progress=False)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="emb_mode"):
        EmbExtractor(emb_mode="banana")
    with pytest.raises(ValueError, match="summary_stat"):
        EmbExtractor(summary_stat="mode")
    with pytest.raises(ValueError, match="start_state"):
        EmbExtractor(summary_stat="exact_mean").get_state_embs({"state_key": "c", "goal_state": "x"}, None, None,
                                                               ".", "p")


def test_missing_dataset_folder(tmp_path):
    from geneformer.data import load_tokenized

    with pytest.raises(FileNotFoundError):
        load_tokenized(tmp_path / "nothing.dataset")


# ---- high-level API ----------------------------------------------------------------------------------
def test_geneformer_api_embed_dataset_and_adata(golden_dir, small):
    import anndata as ad

    from geneformer.api import Geneformer, GeneformerConfig

    gf = Geneformer(GeneformerConfig(model_name=str(golden_dir / "models" / "mini-V1"), batch_size=8))
    arr = gf.get_embeddings(small)
    assert arr.shape == (len(small), 64)
    adata = ad.AnnData(np.zeros((len(small), 2), dtype=np.float32))
    out = gf.embed(adata, dataset=small)
    assert np.allclose(adata.obsm["X_geneformer"], arr) and np.allclose(out, arr)
    adata.var_names = ["ENSG00000198851", "ENSG00000090382"]
    gf.embed(adata, dataset=small.select(range(len(small))), genes=True)
    assert adata.varm["X_geneformer"].shape == (2, 64)
    assert "geneformer_gene_embeddings" in adata.uns
    genes = gf.with_config(emb_mode="gene").get_embeddings(small.select(range(3)))
    assert genes.index[0].startswith("ENSG")


def test_process_data_glue(golden_dir, small, monkeypatch, data_dir):
    """process_data/embed pass the right gene column, add n_counts, and write results back by obs row."""
    import anndata as ad

    from geneformer.api import Geneformer, GeneformerConfig

    calls = {}

    def fake_tokenize(adata, vocab="V2", **kw):
        calls.update(kw, n_counts="n_counts" in adata.obs, vocab=vocab.version)
        keep = np.arange(0, adata.n_obs, 2)  # pretend every other cell had no vocabulary genes
        return small.select(range(len(keep))).add_column("_gf_row", keep.tolist())

    monkeypatch.setattr("geneformer.tokenization._anndata.tokenize_anndata", fake_tokenize)
    adata = ad.read_h5ad(data_dir / "pbmc3k_raw_seurat_labels.h5ad")[:20].copy()
    del adata.obs["n_counts"]
    gf = Geneformer(GeneformerConfig(model_name=str(golden_dir / "models" / "mini-V1"), batch_size=8))
    ds = gf.process_data(adata, gene_names="ensembl_id")
    assert calls["gene_id_column"] == "ensembl_id" and calls["n_counts"] and calls["vocab"] == "V1"
    # the model's input size; special tokens follow the (V1) vocabulary inside the tokenizer
    assert calls["model_input_size"] == 2048 and calls["special_token"] is None
    assert gf.gene_match[0] > 10000
    gf.process_data(adata)  # var_names are symbols here
    assert "gene_symbol_column" in calls
    embs = gf.embed(adata)
    assert embs.shape == (10, 64)
    assert np.isnan(adata.obsm["X_geneformer"][1::2]).all()
    assert np.allclose(adata.obsm["X_geneformer"][::2], embs)
    assert "n_counts" not in adata.obs  # the caller's AnnData is not modified besides obsm
    with pytest.raises(KeyError, match="var column"):
        gf.process_data(adata, gene_names="nope")


def test_process_data_real_tokenizer(golden_dir, data_dir):
    pytest.importorskip("geneformer.tokenization")
    import anndata as ad

    from geneformer.api import Geneformer, GeneformerConfig

    adata = ad.read_h5ad(data_dir / "pbmc3k_raw_seurat_labels.h5ad")[:8].copy()
    gf = Geneformer(GeneformerConfig(model_name=str(golden_dir / "models" / "mini-V2"), batch_size=4))
    ds = gf.process_data(adata, gene_names="ensembl_id")
    emb = gf.get_embeddings(ds)
    assert emb.shape == (len(ds), 64)


# ---- CLI ----------------------------------------------------------------------------------------
def test_embed_cli(golden_dir, small, tmp_path):
    import anndata as ad
    from typer.testing import CliRunner

    from geneformer.cli.main import app  # the real app: its commands carry the error guard

    folder = tmp_path / "small.dataset"
    small.select(range(6)).save_to_disk(str(folder))
    model = str(golden_dir / "models" / "mini-V1")
    runner = CliRunner()
    for name in ("e.parquet", "e.csv", "e.pt", "e.h5ad"):
        res = runner.invoke(app, ["embed", str(folder), "--model", model, "--output", str(tmp_path / name),
                                  "--label", "cell_type", "--batch-size", "4", "-q"])
        assert res.exit_code == 0, res.output
        assert (tmp_path / name).stat().st_size > 0
    assert ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_geneformer"].shape == (6, 64)
    res = runner.invoke(app, ["embed", str(folder), "--model", model, "--output", str(tmp_path / "g.csv"),
                              "--mode", "gene", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["embed", str(folder), "--model", model, "--output", str(tmp_path / "x.csv"),
                              "--label", "nope", "-q"])
    assert res.exit_code == 2 and "nope" in res.output
    res = runner.invoke(app, ["embed", str(folder), "--model", str(golden_dir / "models" / "mini-V2"),
                              "--output", str(tmp_path / "y.csv"), "-q"])
    assert res.exit_code == 2


def test_model_card_accelerator_places_the_model(golden_dir, small):
    """accelerator=True places the model with accelerate (the CPU here) and gives the same embeddings."""
    from geneformer.api import Geneformer, GeneformerConfig

    path = str(golden_dir / "models" / "mini-V1")
    plain = Geneformer(GeneformerConfig(model_name=path, batch_size=8, device="cpu"))
    accel = Geneformer(GeneformerConfig(model_name=path, batch_size=8, accelerator=True))
    assert accel.device.type == "cpu" and next(accel.model.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(accel.get_embeddings(small), plain.get_embeddings(small))
    with pytest.raises(ValueError, match="emb_layer"):
        GeneformerConfig(model_name=path, emb_layer=1)
