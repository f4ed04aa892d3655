"""Embedding into files at scale: chunked outputs equal the in-memory embeddings, shards + merge equal
the single run, a missing shard is named, an interrupted shard resumes, a finished one is skipped."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from geneformer._utils import Shard, ShardError, shard_record
from geneformer.embeddings import _job as J
from geneformer.embeddings import cell_embeddings, embed_to_file, embedding_frame, gene_embeddings
from geneformer.models import load_model
from geneformer.shards import merge

pytestmark = pytest.mark.usefixtures("one_torch_thread")
H = 64


@pytest.fixture(scope="module")
def model(golden_dir):
    return load_model(golden_dir / "models" / "mini-V1", device="cpu")


@pytest.fixture(scope="module")
def cells(golden_dir):
    """30 short V1 cells, in dataset order (not sorted by length)."""
    import datasets

    ds = datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))
    order = np.argsort(np.asarray(ds["length"]), kind="stable")[:30]
    return ds.select(np.sort(order))


def _embs(df):
    return df[[c for c in df.columns if str(c).isdigit()]].to_numpy(np.float32)


def _read(path):
    return pd.read_csv(path) if str(path).endswith(".csv") else pd.read_parquet(path)


def _same_table(a, b):
    """Same columns, index and labels; embeddings equal up to batching (other paddings, other sums)."""
    a, b = _read(a), _read(b)
    assert a.columns.tolist() == b.columns.tolist() and a.index.tolist() == b.index.tolist()
    labels = [c for c in a.columns if not str(c).isdigit()]
    pd.testing.assert_frame_equal(a[labels], b[labels])
    np.testing.assert_allclose(_embs(a), _embs(b), atol=1e-6)


def test_chunked_outputs_equal_the_in_memory_embeddings(model, cells, tmp_path):
    embs = cell_embeddings(model, cells, progress=False)
    ref = embedding_frame(embs, {"cell_type": cells["cell_type"]})
    for ext in ("parquet", "csv", "h5ad", "pt"):
        assert embed_to_file(model, cells, tmp_path / f"e.{ext}", labels=["cell_type"], chunk_rows=7,
                             progress=False) == tmp_path / f"e.{ext}"
    pq = pd.read_parquet(tmp_path / "e.parquet")
    assert list(pq.columns) == [str(i) for i in range(H)] + ["cell_type"]
    np.testing.assert_allclose(_embs(pq), embs, atol=1e-6)
    assert pq["cell_type"].tolist() == list(cells["cell_type"])
    csv = pd.read_csv(tmp_path / "e.csv")  # named columns only: no unnamed index column
    assert csv["cell_type"].tolist() == list(cells["cell_type"])
    np.testing.assert_allclose(_embs(csv), embs, atol=1e-6)
    h5 = ad.read_h5ad(tmp_path / "e.h5ad")
    np.testing.assert_allclose(h5.obsm["X_geneformer"], embs, atol=1e-6)
    np.testing.assert_array_equal(h5.X, h5.obsm["X_geneformer"])
    assert h5.obs["cell_type"].astype(str).tolist() == list(cells["cell_type"])
    np.testing.assert_allclose(torch.load(tmp_path / "e.pt").numpy(), embs, atol=1e-6)
    assert not (tmp_path / "e.parquet.shards").exists()  # the chunks are gone once the output is written
    ref_csv = tmp_path / "ref.csv"
    ref.to_csv(ref_csv, index=False)
    assert pd.read_csv(ref_csv).columns.tolist() == csv.columns.tolist()


def test_embeddings_go_into_the_source_anndata(model, cells, tmp_path):
    from geneformer._constants import ROW_COLUMN

    n_obs = 40
    rows = np.arange(30) + 5  # the tokenized cells came from obs rows 5..34
    source = ad.AnnData(X=np.zeros((n_obs, 3), np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_obs)]))
    source.write_h5ad(tmp_path / "src.h5ad")
    data = cells.add_column(ROW_COLUMN, rows.tolist())
    for i in range(2):
        embed_to_file(model, data, tmp_path / "out.h5ad", adata=tmp_path / "src.h5ad", shard=(i, 2), chunk_rows=8,
                      progress=False)
    merge(tmp_path / "out.h5ad")
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obs_names.tolist() == source.obs_names.tolist()
    emb = out.obsm["X_geneformer"]
    assert np.isnan(emb[:5]).all() and np.isnan(emb[35:]).all()
    np.testing.assert_allclose(emb[rows], cell_embeddings(model, cells, progress=False), atol=1e-6)


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_shards_merge_to_the_single_run(model, cells, tmp_path, ext):
    single = embed_to_file(model, cells, tmp_path / f"single.{ext}", labels=["cell_type"], mode="cell",
                           chunk_rows=4, progress=False)
    out = tmp_path / f"sharded.{ext}"
    for i in (2, 0, 1):  # any order, any machine
        assert embed_to_file(model, cells, out, labels=["cell_type"], chunk_rows=4, shard=f"{i}/3",
                             progress=False) is None
    assert not out.exists()
    assert merge(out) == out
    _same_table(out, single)
    assert not (tmp_path / f"sharded.{ext}.shards").exists()


def test_gene_mode_shards_merge_to_the_single_run(model, cells, tmp_path):
    single = embed_to_file(model, cells, tmp_path / "g.csv", mode="gene", progress=False)
    for i in range(3):
        embed_to_file(model, cells, tmp_path / "gs.csv", mode="gene", chunk_rows=5, shard=(i, 3), progress=False)
    merge(tmp_path / "gs.csv")
    a, b = (pd.read_csv(p, index_col="ensembl_id").drop(columns="symbol") for p in (single, tmp_path / "gs.csv"))
    assert a.index.tolist() == b.index.tolist() and a.index[0].startswith("ENSG")
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-6)
    direct = gene_embeddings(model, cells, progress=False).to_frame(None, model)
    np.testing.assert_allclose(a.to_numpy(), direct.to_numpy(), atol=1e-5)


def test_shards_follow_the_attention_cost_of_the_selected_cells(model, cells, tmp_path):
    """max_ncells picks and sorts first; shard 0 (the longest cells) then gets fewer cells."""
    for i in range(2):
        embed_to_file(model, cells, tmp_path / "m.parquet", max_ncells=20, chunk_rows=100, shard=(i, 2),
                      labels=["cell_id"], progress=False)
    records = [shard_record(tmp_path / "m.parquet", Shard(i, 2)) for i in range(2)]
    assert all(r["kind"] == "embed" for r in records)
    sizes = [len(pd.read_parquet(tmp_path / f"m.parquet.shards/{Shard(i, 2).label}/chunk-000000.parquet"))
             for i in range(2)]
    assert sum(sizes) == 20 and sizes[0] < sizes[1]
    merge(tmp_path / "m.parquet")
    single = embed_to_file(model, cells, tmp_path / "m1.parquet", max_ncells=20, labels=["cell_id"], progress=False)
    a, b = pd.read_parquet(single), pd.read_parquet(tmp_path / "m.parquet")
    assert a["cell_id"].tolist() == b["cell_id"].tolist()
    np.testing.assert_allclose(_embs(a), _embs(b), atol=1e-6)


def test_merge_names_the_missing_shards(model, cells, tmp_path):
    out = tmp_path / "e.parquet"
    for i in (0, 3):
        embed_to_file(model, cells, out, chunk_rows=8, shard=(i, 4), progress=False)
    with pytest.raises(ShardError, match=r"2 of 4 shards .*: 1/4, 2/4"):
        merge(out)
    assert not out.exists()


def test_an_interrupted_shard_resumes_and_a_finished_one_is_skipped(model, cells, tmp_path, monkeypatch):
    out = tmp_path / "e.parquet"
    done: list = []

    def crash(k):
        done.append(k)
        if len(done) == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(J, "_chunk_done_hook", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_to_file(model, cells, out, chunk_rows=4, shard=(1, 2), progress=False)
    assert shard_record(out, Shard(1, 2)) is None  # not finished
    done.clear()
    monkeypatch.setattr(J, "_chunk_done_hook", done.append)
    embed_to_file(model, cells, out, chunk_rows=4, shard=(1, 2), progress=False)
    n_chunks = shard_record(out, Shard(1, 2))["n_chunks"]
    assert done == list(range(2, n_chunks))  # only the chunks the crash left

    def boom(*a, **k):
        raise AssertionError("recomputed")

    real = J.cell_embeddings
    monkeypatch.setattr(J, "cell_embeddings", boom)
    assert embed_to_file(model, cells, out, chunk_rows=4, shard=(1, 2), progress=False) is None
    with pytest.raises(ShardError, match="different run"):
        embed_to_file(model, cells, out, chunk_rows=4, shard=(1, 2), emb_layer=0, progress=False)
    monkeypatch.setattr(J, "cell_embeddings", real)
    embed_to_file(model, cells, out, chunk_rows=4, shard=(0, 2), progress=False)
    merge(out)
    _same_table(out, embed_to_file(model, cells, tmp_path / "single.parquet", chunk_rows=4, progress=False))


def test_merge_finds_the_parts_beside_the_output_from_anywhere(model, cells, tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    for i in range(2):
        embed_to_file(model, cells, "rel.csv", chunk_rows=10, shard=(i, 2), progress=False)
    monkeypatch.chdir(tmp_path)
    merge(tmp_path / "run" / "rel.csv")
    np.testing.assert_allclose(_embs(_read(tmp_path / "run" / "rel.csv")), cell_embeddings(model, cells, progress=False),
                               atol=1e-6)
