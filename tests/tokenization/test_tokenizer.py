"""The streaming tokenizer: parity with the reference, every input quirk, and bad input."""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import contextmanager

import anndata as ad
import datasets
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from geneformer._utils import WorkerError
from geneformer.compat import TranscriptomeTokenizer
from geneformer.io import InputFileError
from geneformer.tokenization import match_and_tokenize, tokenize_anndata, tokenize_files
from geneformer.vocab import compute_gene_digests

LABELS = {
    "pbmc3k_raw_seurat_labels": ["cell_type", "cell_id"],
    "cellbench_lung_celllines": ["cell_line", "platform", "cell_id"],
    "kang2018_ifnb_harmony_2k": ["condition", "cell_id"],
}


@pytest.fixture(scope="module")
def pbmc_small(data_dir):
    a = ad.read_h5ad(data_dir / "pbmc3k_raw_seurat_labels.h5ad", backed="r")
    small = a[:40].to_memory()
    a.file.close()
    return small


@pytest.mark.parametrize("name", sorted(LABELS))
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_parity_with_reference(name, version, data_dir, golden_dir, tmp_path):
    cols = LABELS[name]
    tk = TranscriptomeTokenizer({c: c for c in cols}, model_version=version)
    ours = tk.tokenize_files([data_dir / f"{name}.h5ad"], tmp_path / "out.dataset", progress=False)
    gold = datasets.load_from_disk(str(golden_dir / "tokenized" / f"{name}_{version}.dataset"))
    assert ours.features == gold.features
    assert len(ours) == len(gold)
    gold_row = {c: i for i, c in enumerate(gold["cell_id"])}
    g_ids, g_len = gold["input_ids"], gold["length"]
    g_attrs = {c: gold[c] for c in cols}
    for ids, length, cid in (zip(ours["input_ids"], ours["length"], ours["cell_id"])):
        j = gold_row[cid]
        assert ids == g_ids[j], f"cell {cid} differs"
        assert length == g_len[j] == len(ids)
    for c in cols:
        assert [g_attrs[c][gold_row[cid]] for cid in ours["cell_id"]] == ours[c]


def test_v1_and_v2_layout(data_dir, tmp_path):
    path = data_dir / "cellbench_lung_celllines.h5ad"
    v1 = tokenize_files([path], tmp_path / "v1.dataset", "V1", progress=False)
    v2 = tokenize_files([path], tmp_path / "v2.dataset", "V2", progress=False)
    assert max(v1["length"]) == 2048 and min(v1["length"]) > 0
    ids1 = v1["input_ids"]
    assert all(0 not in x[:3] and 1 not in x[:3] for x in ids1)
    assert max(v2["length"]) == 4096
    for ids in v2["input_ids"][:50]:
        assert ids[0] == 2 and ids[-1] == 3 and 2 not in ids[1:-1] and 3 not in ids[1:-1]


def test_workers_give_identical_output(data_dir, tmp_path):
    path = data_dir / "kang2018_ifnb_harmony_2k.h5ad"
    one = TranscriptomeTokenizer({"cell_id": "cell_id"}, chunk_size=64, nproc=1)
    two = TranscriptomeTokenizer({"cell_id": "cell_id"}, chunk_size=64, nproc=2)
    a = one.tokenize_files([path], tmp_path / "a.dataset", progress=False)
    b = two.tokenize_files([path], tmp_path / "b.dataset", progress=False)
    assert a["input_ids"] == b["input_ids"] and a["cell_id"] == b["cell_id"]


def test_tokenize_data_reference_api(data_dir, tmp_path, pbmc_small):
    folder = tmp_path / "in"
    folder.mkdir()
    pbmc_small[:20].write_h5ad(folder / "b_part.h5ad")
    pbmc_small[20:].write_h5ad(folder / "a_part.h5ad")
    (folder / "other.txt").write_text("ignored")
    tk = TranscriptomeTokenizer({"cell_id": "cell_id"}, nproc=1)
    ds = tk.tokenize_data(folder, tmp_path / "out", "pbmc", file_format="h5ad")
    assert (tmp_path / "out" / "pbmc.dataset").is_dir()
    assert ds["cell_id"] == list(pbmc_small.obs["cell_id"][20:]) + list(pbmc_small.obs["cell_id"][:20])
    only_b = tk.tokenize_data(folder, tmp_path / "out", "b", file_format="h5ad", input_identifier="b_")
    assert len(only_b) == 20
    with pytest.raises(InputFileError, match="No \\*.loom files"):
        tk.tokenize_data(folder, tmp_path / "out", "x", file_format="loom")


def test_in_memory_matches_file(pbmc_small, tmp_path):
    pbmc_small.write_h5ad(tmp_path / "s.h5ad")
    pbmc_small.write_zarr(tmp_path / "s.zarr")
    mem = tokenize_anndata(pbmc_small, "V2", custom_attr_name_dict={"cell_id": "cell_id"})
    assert isinstance(mem, datasets.Dataset)
    for src in ("s.h5ad", "s.zarr"):
        disk = tokenize_files([tmp_path / src], tmp_path / f"{src}.dataset", "V2",
                              custom_attr_name_dict={"cell_id": "cell_id"}, progress=False)
        assert disk["input_ids"] == mem["input_ids"]


def test_gene_symbols_are_mapped(pbmc_small, vocab_v2):
    by_id = tokenize_anndata(pbmc_small, vocab_v2)
    sym = pbmc_small.copy()
    sym.var = pd.DataFrame(index=pbmc_small.var["gene_symbol"].astype(str).values)
    sym.var_names_make_unique()
    by_sym = tokenize_anndata(sym, vocab_v2)  # index of symbols, no ensembl_id column
    # symbol mapping recovers nearly all of the tokens found through Ensembl IDs
    a, b = by_id["input_ids"][0], by_sym["input_ids"][0]
    assert len(set(a) & set(b)) / len(set(a)) > 0.9
    explicit = tokenize_anndata(pbmc_small, vocab_v2, gene_symbol_column="gene_symbol")
    assert len(set(explicit["input_ids"][0]) & set(a)) / len(set(a)) > 0.9


def _toy(vocab, genes, X, obs=None):
    X = sp.csr_matrix(np.asarray(X))
    obs = obs if obs is not None else pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame({"ensembl_id": genes}, index=[f"g{i}" for i in range(len(genes))]))


def test_duplicates_are_summed(vocab_v2):
    g = vocab_v2.genes[100:104]
    dup = _toy(vocab_v2, [g[0], g[1], g[0], g[2]], [[2, 1, 3, 4]])
    single = _toy(vocab_v2, [g[0], g[1], g[2]], [[5, 1, 4]])
    a = tokenize_anndata(dup, vocab_v2)["input_ids"][0]
    b = tokenize_anndata(single, vocab_v2)["input_ids"][0]
    assert a == b and len(a) == len(set(a))
    with pytest.raises(InputFileError, match="more than once"):
        tokenize_anndata(dup, vocab_v2, collapse_gene_ids=False)


def test_mapping_dict_collapses_aliases(vocab_v2):
    # an Ensembl ID that the mapping dictionary sends to another vocabulary gene
    alias = next(k for k, v in vocab_v2.ensembl_mapping.items()
                 if k.startswith("ENSG") and v != k and v in vocab_v2.token_dict and k not in vocab_v2.token_dict)
    target = vocab_v2.ensembl_mapping[alias]
    other = vocab_v2.genes[5] if vocab_v2.genes[5] != target else vocab_v2.genes[6]
    a = tokenize_anndata(_toy(vocab_v2, [alias, target, other], [[2, 3, 4]]), vocab_v2)["input_ids"][0]
    assert a == [2, vocab_v2.token_dict[target], vocab_v2.token_dict[other], 3]


def test_explicit_zeros_not_tokenized(vocab_v1):
    g = vocab_v1.genes[:3]
    X = sp.csr_matrix((np.array([0, 5, 1]), np.array([0, 1, 2]), np.array([0, 3])), shape=(1, 3))
    a = ad.AnnData(X=X, var=pd.DataFrame({"ensembl_id": g}, index=list(g)))
    ids = tokenize_anndata(a, vocab_v1)["input_ids"][0]
    assert ids == [vocab_v1.token_dict[g[1]], vocab_v1.token_dict[g[2]]]


def test_nan_labels_kept_as_missing(vocab_v1):
    g = vocab_v1.genes[:2]
    obs = pd.DataFrame({"label": ["a", np.nan, "b"], "score": [1.0, np.nan, 3.0],
                        "cat": pd.Categorical(["x", None, "y"])}, index=["c0", "c1", "c2"])
    a = _toy(vocab_v1, list(g), [[1, 2], [3, 0], [0, 1]], obs)
    ds = tokenize_anndata(a, vocab_v1, custom_attr_name_dict={"label": "label", "score": "score", "cat": "cat"})
    assert ds["label"] == ["a", None, "b"]
    assert ds["score"][1] is None and ds["cat"] == ["x", None, "y"]


def test_empty_cells_dropped_and_counted(vocab_v2, caplog):
    g = vocab_v2.genes[:2]
    a = _toy(vocab_v2, list(g) + ["NOT_A_GENE"], [[1, 2, 0], [0, 0, 7], [0, 3, 0]])
    with caplog.at_level(logging.INFO, logger="geneformer"):
        ds = tokenize_anndata(a, vocab_v2)  # no custom attributes: the reference crashed here
    assert len(ds) == 2
    assert "1 dropped with no vocabulary gene" in caplog.text


def test_filter_pass(vocab_v1):
    g = vocab_v1.genes[:2]
    obs = pd.DataFrame({"filter_pass": pd.Series([1, 0, True, 1.0, "1"], dtype=object, index=list("abcde")),
                        "cid": list("abcde")}, index=list("abcde"))
    a = _toy(vocab_v1, list(g), [[1, 1]] * 5, obs)
    ds = tokenize_anndata(a, vocab_v1, custom_attr_name_dict={"cid": "cid"})
    assert ds["cid"] == ["a", "c", "d"]


def test_n_counts_computed_when_missing(vocab_v1, caplog):
    g = vocab_v1.genes[:3]
    # the third column is not a vocabulary gene but still counts toward the total
    a = _toy(vocab_v1, [g[0], g[1], "NOT_A_GENE"], [[3, 1, 100]])
    b = a.copy()
    b.obs["n_counts"] = [104.0]
    with caplog.at_level(logging.INFO, logger="geneformer"):
        ds = tokenize_anndata(a, vocab_v1, keep_counts=True)
    assert "sum of all genes" in caplog.text
    ref = tokenize_anndata(b, vocab_v1, keep_counts=True)
    assert ds["input_ids"] == ref["input_ids"]
    np.testing.assert_allclose(ds["counts"][0], ref["counts"][0])


def test_missing_ensembl_id_falls_back_to_index(vocab_v1):
    g = vocab_v1.genes[:2]
    a = ad.AnnData(X=sp.csr_matrix(np.array([[1, 2]])), var=pd.DataFrame(index=list(g)))
    assert tokenize_anndata(a, vocab_v1)["input_ids"][0] == [vocab_v1.token_dict[g[1]], vocab_v1.token_dict[g[0]]]


def test_no_gene_overlap_is_a_clear_error(vocab_v2):
    a = _toy(vocab_v2, ["foo", "bar"], [[1, 2]])
    with pytest.raises(InputFileError, match="0 of 2 genes"):
        tokenize_anndata(a, vocab_v2)


def test_non_integer_counts_warn(vocab_v2):
    g = vocab_v2.genes[:2]
    a = _toy(vocab_v2, list(g), [[0.5, 2.3]])
    with pytest.warns(UserWarning, match="raw counts"):
        tokenize_anndata(a, vocab_v2)


def test_unknown_attribute(vocab_v2):
    a = _toy(vocab_v2, vocab_v2.genes[:2], [[1, 2]])
    with pytest.raises(InputFileError, match="no cell attribute"):
        tokenize_anndata(a, vocab_v2, custom_attr_name_dict={"cell_type": "cell_type"})


def test_truncated_file(pbmc_small, tmp_path):
    good = tmp_path / "good.h5ad"
    pbmc_small.write_h5ad(good)
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(InputFileError, match="bad.h5ad"):
        tokenize_files([bad], tmp_path / "o.dataset", "V2", progress=False)
    with pytest.raises(InputFileError, match="does not exist"):
        tokenize_files([tmp_path / "missing.h5ad"], tmp_path / "o.dataset", "V2", progress=False)
    assert not (tmp_path / "o.dataset").exists()
    assert not list(tmp_path.glob(".o.dataset.tmp-*"))  # no debris left behind


def test_existing_output_refused_unless_overwrite(pbmc_small, tmp_path):
    pbmc_small.write_h5ad(tmp_path / "s.h5ad")
    out = tmp_path / "o.dataset"
    tokenize_files([tmp_path / "s.h5ad"], out, "V1", progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        tokenize_files([tmp_path / "s.h5ad"], out, "V1", progress=False)
    ds = tokenize_files([tmp_path / "s.h5ad"], out, "V2", progress=False, overwrite=True)
    assert ds["input_ids"][0][0] == 2


def test_raw_layer(pbmc_small):
    a = pbmc_small.copy()
    a.raw = a
    a.X = sp.csr_matrix(a.X.shape, dtype=np.float32)  # X holds nothing useful
    ds = tokenize_anndata(a, "V2", layer="raw")
    assert ds["input_ids"] == tokenize_anndata(pbmc_small, "V2")["input_ids"]


def test_cli_tokenize(pbmc_small, tmp_path):
    from geneformer.cli.main import app

    pbmc_small.write_h5ad(tmp_path / "s.h5ad")
    runner = CliRunner()
    res = runner.invoke(app, ["tokenize", str(tmp_path / "s.h5ad"), "--output", str(tmp_path / "o"),
                              "--attr", "cell_type", "--attr", "cell_id=barcode", "--model-version", "V1"])
    assert res.exit_code == 0, res.output
    ds = datasets.load_from_disk(str(tmp_path / "o" / "s.dataset"))
    assert set(ds.column_names) == {"input_ids", "cell_type", "barcode", "length"}
    res = runner.invoke(app, ["tokenize", str(tmp_path / "s.h5ad"), "--output", str(tmp_path / "o")])
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(app, ["tokenize", str(tmp_path / "nope.h5ad"), "--output", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "does not exist" in res.output


# ---- worker processes --------------------------------------------------------------------------
@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts the wait for a pool that never answers."""
    def hang(signum, frame):
        raise TimeoutError(f"no error within {seconds} s: the worker pool hangs")

    before = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.mark.parametrize("stage", ["tokenize", "medians"])
def test_killed_worker_fails_promptly(stage, pbmc_small, tmp_path, monkeypatch):
    """A worker killed mid-task (forked workers inherit the patched function) raises WorkerError naming the
    input, instead of leaving the parent waiting for a result that never comes."""
    path = tmp_path / "cells.h5ad"
    pbmc_small.write_h5ad(path)
    parent = os.getpid()

    def die(*args, **kwargs):
        if os.getpid() != parent:
            os._exit(9)
        raise AssertionError("the parent process ran a worker's task")

    t0 = time.monotonic()
    with _deadline(120), pytest.raises(WorkerError, match="cells.h5ad"):
        if stage == "tokenize":
            monkeypatch.setattr("geneformer.tokenization._chunks.encode_range", die)
            tokenize_files([path], tmp_path / "o.dataset", "V2", nproc=2, chunk_size=8, progress=False)
        else:
            monkeypatch.setattr("geneformer.vocab._corpus._digest_rows", die)
            compute_gene_digests([path], nproc=2, chunk_size=8, progress=False)
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "o.dataset").exists() and not list(tmp_path.glob(".o.dataset.tmp-*"))


# ---- the AnnData entry point of the model-card API ----------------------------------------------
@pytest.mark.parametrize("gene_names", [None, "index"])
def test_match_and_tokenize_equals_model_card(gene_names, golden_dir, data_dir):
    from geneformer.api import Geneformer, GeneformerConfig
    from geneformer.models import model_input_size

    adata = ad.read_h5ad(data_dir / "kang2018_ifnb_harmony_2k.h5ad")[:60].copy()
    del adata.obs["n_counts"]  # computed on the fly, and the caller's AnnData stays as it was
    before = adata.obs.copy()
    gf = Geneformer(GeneformerConfig(model_name=str(golden_dir / "models" / "mini-V2")))
    theirs = gf.tokenize(adata, gene_names=gene_names, custom_attr_name_dict={"cell_id": "cell_id"})
    ours, match = match_and_tokenize(adata, gf.vocab, gene_names=gene_names, custom_attr_name_dict={"cell_id": "cell_id"},
                                     model_input_size=model_input_size(gf.model), progress=False)
    assert ours.column_names == theirs.column_names and "_gf_row" in ours.column_names
    assert ours.to_dict() == theirs.to_dict()
    assert match == gf.gene_match and match[0] > 0
    pd.testing.assert_frame_equal(adata.obs, before)
