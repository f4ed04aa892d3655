"""Every reader returns the same counts, genes and cells as the source, written to real files of each format."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from conftest import pbmc3k_cells

from geneformer.io import InputFileError, detect_format, open_reader

N_CELLS = 50


@pytest.fixture(scope="module")
def source(data_dir) -> ad.AnnData:
    """First cells of PBMC3k (raw counts, CSR int), all genes."""
    return pbmc3k_cells(data_dir, N_CELLS)


@pytest.fixture(scope="module")
def files(source, tmp_path_factory) -> dict[str, Path]:
    """The source written in every supported format."""
    d = tmp_path_factory.mktemp("formats")
    out = {}
    out["h5ad_csr"] = d / "csr.h5ad"
    source.write_h5ad(out["h5ad_csr"])
    dense = source.copy()
    dense.X = source.X.toarray()
    out["h5ad_dense"] = d / "dense.h5ad"
    dense.write_h5ad(out["h5ad_dense"])
    csc = source.copy()
    csc.X = sp.csc_matrix(source.X)
    out["h5ad_csc"] = d / "csc.h5ad"
    csc.write_h5ad(out["h5ad_csc"])
    out["zarr"] = d / "data.zarr"
    source.write_zarr(out["zarr"])
    out["loom"] = d / "anndata.loom"
    source.write_loom(out["loom"])
    out["loompy"] = d / "loompy.loom"
    _write_loompy(source, out["loompy"])
    out["10x_h5"] = d / "filtered_feature_bc_matrix.h5"
    _write_10x_h5_v3(source, out["10x_h5"])
    out["10x_h5_v2"] = d / "filtered_gene_bc_matrices_h5.h5"
    _write_10x_h5_v2(source, out["10x_h5_v2"])
    out["mtx"] = _write_mtx(source, d / "mtx", gz=False, v3=True)
    out["mtx_gz"] = _write_mtx(source, d / "mtx_gz", gz=True, v3=True)
    out["mtx_v2"] = _write_mtx(source, d / "mtx_v2", gz=False, v3=False)
    return out


# ---- writers mimicking the real tools -----------------------------------------------------------
def _write_loompy(a: ad.AnnData, path: Path) -> None:
    import loompy

    row_attrs = {"Gene": a.var_names.to_numpy(), "ensembl_id": a.var["ensembl_id"].astype(str).to_numpy()}
    col_attrs = {"CellID": a.obs_names.to_numpy(), "n_counts": a.obs["n_counts"].to_numpy(),
                 "cell_type": a.obs["cell_type"].astype(str).to_numpy()}
    loompy.create(str(path), sp.coo_matrix(a.X.T), row_attrs, col_attrs)


def _antibody_features(a: ad.AnnData, k: int = 3):
    """Extra non-gene features (antibody capture) interleaved with genes, and their counts."""
    rng = np.random.default_rng(0)
    extra = sp.csr_matrix(rng.integers(0, 50, size=(a.n_obs, k)).astype(np.int32))
    return extra, [f"CD{i}_TotalSeqB" for i in range(k)]


def _write_10x_h5_v3(a: ad.AnnData, path: Path) -> None:
    extra, ab_ids = _antibody_features(a)
    # put the antibody features in the middle of the gene list, as a check of column remapping
    mid = a.n_vars // 2
    x = sp.hstack([a.X[:, :mid], extra, a.X[:, mid:]]).tocsr().astype(np.int32)
    ids = list(a.var["ensembl_id"].astype(str))
    names = list(a.var_names)
    ids = ids[:mid] + ab_ids + ids[mid:]
    names = names[:mid] + ab_ids + names[mid:]
    types = ["Gene Expression"] * mid + ["Antibody Capture"] * len(ab_ids) + ["Gene Expression"] * (a.n_vars - mid)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(a.obs_names, dtype="S"))
        g.create_dataset("data", data=x.data, compression="gzip")
        g.create_dataset("indices", data=x.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=x.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([x.shape[1], x.shape[0]], dtype=np.int32))
        fe = g.create_group("features")
        fe.create_dataset("id", data=np.array(ids, dtype="S"))
        fe.create_dataset("name", data=np.array(names, dtype="S"))
        fe.create_dataset("feature_type", data=np.array(types, dtype="S"))
        fe.create_dataset("genome", data=np.array(["GRCh38"] * len(ids), dtype="S"))
        fe.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def _write_10x_h5_v2(a: ad.AnnData, path: Path) -> None:
    x = a.X.tocsr()
    with h5py.File(path, "w") as f:
        g = f.create_group("hg19")
        g.create_dataset("barcodes", data=np.array(a.obs_names, dtype="S"))
        g.create_dataset("data", data=x.data.astype(np.int32))
        g.create_dataset("indices", data=x.indices.astype(np.int64))
        g.create_dataset("indptr", data=x.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([x.shape[1], x.shape[0]], dtype=np.int32))
        g.create_dataset("genes", data=np.array(a.var["ensembl_id"].astype(str), dtype="S"))
        g.create_dataset("gene_names", data=np.array(a.var_names, dtype="S"))


def _write_mtx(a: ad.AnnData, folder: Path, gz: bool, v3: bool) -> Path:
    folder.mkdir()
    ids = a.var["ensembl_id"].astype(str).to_numpy()
    if v3:
        extra, ab_ids = _antibody_features(a)
        x = sp.hstack([a.X, extra]).tocsr()
        feats = pd.DataFrame({"id": list(ids) + ab_ids, "name": list(a.var_names) + ab_ids,
                              "type": ["Gene Expression"] * a.n_vars + ["Antibody Capture"] * len(ab_ids)})
        fname = "features.tsv"
    else:
        x = a.X
        feats = pd.DataFrame({"id": ids, "name": a.var_names})
        fname = "genes.tsv"
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix(x.T), field="integer")
    feats.to_csv(folder / fname, sep="\t", header=False, index=False)
    pd.Series(a.obs_names).to_csv(folder / "barcodes.tsv", sep="\t", header=False, index=False)
    if gz:
        for name in ("matrix.mtx", fname, "barcodes.tsv"):
            with open(folder / name, "rb") as src, gzip.open(folder / f"{name}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            (folder / name).unlink()
    return folder


def _read_all(reader, chunk_size=None) -> sp.csr_matrix:
    if chunk_size is None:
        return reader.read_rows(0, reader.n_cells)
    return sp.vstack([m for _, m in reader.iter_counts(chunk_size)]).tocsr()


def _same_counts(got: sp.csr_matrix, want: sp.csr_matrix) -> None:
    assert got.shape == want.shape
    assert (got != want).nnz == 0


# ---- tests ---------------------------------------------------------------------------------------
ANN_KINDS = ["h5ad_csr", "h5ad_dense", "h5ad_csc", "zarr", "loom"]
ALL_KINDS = ANN_KINDS + ["loompy", "10x_h5", "10x_h5_v2", "mtx", "mtx_gz", "mtx_v2"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_counts_and_gene_ids_match_source(files, source, kind):
    with open_reader(files[kind]) as r:
        assert r.n_cells == N_CELLS
        _same_counts(_read_all(r), source.X)
        _same_counts(_read_all(r, chunk_size=7), source.X)  # chunks that do not divide the cell count
        np.testing.assert_array_equal(r.var["ensembl_id"].astype(str).to_numpy(),
                                      source.var["ensembl_id"].astype(str).to_numpy())


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cell_index_matches_source(files, source, kind):
    with open_reader(files[kind]) as r:
        obs = r.read_obs()
        assert list(obs.index) == list(source.obs_names)




@pytest.mark.parametrize("kind", ANN_KINDS)
def test_obs_columns_match_source(files, source, kind):
    with open_reader(files[kind]) as r:
        assert set(r.obs_columns) == set(source.obs.columns)
        obs = r.read_obs()
        for col in source.obs.columns:
            np.testing.assert_array_equal(obs[col].astype(str).to_numpy(), source.obs[col].astype(str).to_numpy())
        sub = r.read_obs(["n_counts"])
        assert list(sub.columns) == ["n_counts"]
        np.testing.assert_allclose(sub["n_counts"].to_numpy(dtype=float), source.obs["n_counts"].to_numpy())


def test_loom_gene_table(files, source):
    with open_reader(files["loom"]) as r:  # written by anndata: index from var_names, not repeated
        assert list(r.var.index) == list(source.var_names)
        assert set(r.var.columns) == {"gene_symbol", "ensembl_id"}
    with open_reader(files["loompy"]) as r:  # loompy convention: Gene / CellID kept as attributes too
        assert list(r.var.index) == list(source.var_names)
        assert {"Gene", "ensembl_id"} <= set(r.var.columns)
        assert "CellID" in r.obs_columns
        np.testing.assert_allclose(r.read_obs(["n_counts"])["n_counts"], source.obs["n_counts"])


def test_loom_is_not_modified(files):
    path = files["loom"]
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    with open_reader(path) as r:
        list(r.iter_counts(16))
        r.read_obs()
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before


def test_loom_layer(tmp_path, source):
    path = tmp_path / "layers.loom"
    a = source.copy()
    a.layers["spliced"] = a.X * 2
    a.write_loom(path)
    with open_reader(path, layer="spliced") as r:
        _same_counts(_read_all(r, 20), sp.csr_matrix(source.X * 2))
        assert r.reopen_args() == (str(path), {"layer": "spliced"})
    with pytest.raises(InputFileError, match="nope"):
        open_reader(path, layer="nope")


@pytest.mark.parametrize("kind", ["10x_h5", "10x_h5_v2", "mtx", "mtx_gz", "mtx_v2"])
def test_10x_tables(files, source, kind):
    with open_reader(files[kind]) as r:
        var = r.var
        assert list(var.index) == list(source.var["ensembl_id"].astype(str))
        assert list(var["gene_symbol"]) == list(source.var_names)  # antibody features are dropped
        obs = r.read_obs()
        assert list(obs["cell_id"]) == list(source.obs_names)
        assert r.obs_columns == ["cell_id"]
        with pytest.raises(KeyError, match="n_counts"):
            r.read_obs(["n_counts"])


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_reopen_args_reopen_the_same_data(files, source, kind):
    with open_reader(files[kind]) as r:
        args = r.reopen_args()
        fmt = r.format
    path, opts = args
    with open_reader(path, fmt, **opts) as r2:
        _same_counts(r2.read_rows(10, 20), source.X[10:20])


def test_detect_format(files):
    expect = {"h5ad_csr": "h5ad", "zarr": "zarr", "loom": "loom", "10x_h5": "10x_h5", "mtx": "10x_mtx",
              "mtx_gz": "10x_mtx"}
    for kind, fmt in expect.items():
        assert detect_format(files[kind]) == fmt


def test_10x_h5_several_genomes(tmp_path, source):
    path = tmp_path / "two.h5"
    _write_10x_h5_v2(source, path)
    with h5py.File(path, "a") as f:
        f.copy("hg19", "mm10")
    with pytest.raises(InputFileError, match="genome"):
        open_reader(path)
    with open_reader(path, genome="mm10") as r:
        _same_counts(_read_all(r), source.X)


# ---- bad inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,name", [("loom", "x.loom"), ("10x_h5", "x.h5"), ("h5ad", "x.h5ad"),
                                      ("10x_mtx", "mtxfolder")])
def test_missing_input(tmp_path, fmt, name):
    with pytest.raises(InputFileError, match=name):
        open_reader(tmp_path / name, fmt)


@pytest.mark.parametrize("kind", ["loom", "10x_h5", "h5ad_csr"])
def test_truncated_file(files, tmp_path, kind):
    src = files[kind]
    bad = tmp_path / f"truncated{src.suffix}"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(InputFileError, match=bad.name):
        with open_reader(bad) as r:
            list(r.iter_counts(10))


def test_not_an_hdf5_file(tmp_path):
    bad = tmp_path / "text.loom"
    bad.write_text("this is not a loom file\n")
    with pytest.raises(InputFileError, match="text.loom"):
        open_reader(bad)


def test_h5_without_10x_layout(tmp_path):
    bad = tmp_path / "other.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    with pytest.raises(InputFileError, match="other.h5"):
        open_reader(bad)


def test_truncated_mtx(files, tmp_path):
    folder = tmp_path / "bad_mtx"
    shutil.copytree(files["mtx_gz"], folder)
    m = folder / "matrix.mtx.gz"
    m.write_bytes(m.read_bytes()[: m.stat().st_size // 2])
    with pytest.raises(InputFileError, match="matrix.mtx.gz"):
        with open_reader(folder) as r:
            r.read_rows(0, 5)


def test_mtx_folder_missing_barcodes(files, tmp_path):
    folder = tmp_path / "no_barcodes"
    shutil.copytree(files["mtx"], folder)
    (folder / "barcodes.tsv").unlink()
    with pytest.raises(InputFileError, match="barcodes"):
        open_reader(folder, "10x_mtx")


def test_mtx_shape_mismatch(files, tmp_path):
    folder = tmp_path / "short_barcodes"
    shutil.copytree(files["mtx"], folder)
    lines = (folder / "barcodes.tsv").read_text().splitlines()
    (folder / "barcodes.tsv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputFileError, match="barcodes"):
        open_reader(folder)


def test_loom_reads_in_blocks(files, source, monkeypatch, tmp_path):
    """Dense loom reads are split into chunk-aligned column blocks; the result is the same."""
    import geneformer.io._loom as loom_mod

    path = tmp_path / "small_chunks.loom"
    shutil.copy(files["loompy"], path)
    with h5py.File(path, "a") as f:  # re-chunk the matrix 8 cells wide
        m = f["matrix"][...]
        del f["matrix"]
        f.create_dataset("matrix", data=m, chunks=(64, 8), compression="gzip")
    monkeypatch.setattr(loom_mod, "_BLOCK_CELLS", 20)  # -> blocks of 16 cells
    with open_reader(path) as r:
        _same_counts(_read_all(r, chunk_size=23), source.X)
        _same_counts(r.read_rows(3, 41), source.X[3:41])
        assert r.read_rows(N_CELLS, N_CELLS + 5).shape == (0, source.n_vars)
