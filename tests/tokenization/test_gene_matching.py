"""One gene-matching rule in every entry point: the Ensembl ID where present, symbols for the rest."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from geneformer.compat import TranscriptomeTokenizer
from geneformer.tokenization import anndata_gene_ids, match_and_tokenize, tokenize_anndata, tokenize_files
from geneformer.vocab import match_genes


@pytest.fixture(scope="module")
def kang(data_dir):
    a = ad.read_h5ad(data_dir / "kang2018_ifnb_harmony_2k.h5ad", backed="r")
    small = a[:30].to_memory()
    a.file.close()
    small.X = sp.csr_matrix(small.X)
    return small


def test_kang_empty_ensembl_ids_are_filled_by_symbols(kang, vocab_v2):
    # 796 Kang genes have an empty var['ensembl_id']; 513 of them are V2 genes by symbol
    m = match_genes(kang.var, vocab_v2)
    assert (m.n_genes, m.n_by_id, m.n_by_symbol) == (9015, 8121, 513)
    ids_only = match_genes(kang.var, vocab_v2, symbol_fallback=False)
    assert (ids_only.n_matched, ids_only.n_symbol_unused) == (8121, 513)
    assert "8,121 matched" in m.describe() and "513 matched" in m.describe()


def test_every_entry_point_matches_the_same_genes(kang, vocab_v2, golden_dir, tmp_path, caplog):
    from geneformer.api import Geneformer, GeneformerConfig
    from geneformer.cli.main import app

    path = tmp_path / "kang.h5ad"
    kang.write_h5ad(path)
    mini = str(golden_dir / "models" / "mini-V2")
    gf = Geneformer(GeneformerConfig(model_name=mini))
    with caplog.at_level(logging.INFO, logger="geneformer"):
        table = {
            "tokenize_files": tokenize_files([path], tmp_path / "f.dataset", vocab_v2, progress=False),
            "tokenize_anndata": tokenize_anndata(kang, vocab_v2, progress=False),
            "match_and_tokenize": match_and_tokenize(kang, vocab_v2, row_column=False, progress=False).dataset,
            "TranscriptomeTokenizer(symbol_fallback=True)": TranscriptomeTokenizer(
                symbol_fallback=True).tokenize_anndata_in_memory(kang),
            "process_data": gf.process_data(kang),
            "tokenize": gf.tokenize(kang),
        }
        matches = {"process_data": None, "tokenize": gf.gene_match}
        gf.embed(kang.copy(), batch_size=30)
        matches["embed"] = gf.gene_match
        res = CliRunner().invoke(app, ["tokenize", str(path), "--output", str(tmp_path / "cli"), "--prefix", "k", "-q"])
        assert res.exit_code == 0, res.output
    from geneformer.data import load_tokenized

    table["cli tokenize"] = load_tokenized(tmp_path / "cli" / "k.dataset")
    # the same tokens from every entry point, and the same count of matched genes
    reference = table["tokenize_anndata"]["input_ids"]
    for name, ds in table.items():
        assert ds["input_ids"] == reference, name
    assert matches["tokenize"] == matches["embed"] == (8634, 9015)
    assert caplog.text.count("(513 matched)") >= len(table)  # each source's count is logged
    # the reference class keeps the reference's rule (its output is the reference's) and says what it leaves out
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geneformer"):
        ref = TranscriptomeTokenizer().tokenize_anndata_in_memory(kang)
    assert ref["input_ids"] != reference
    assert "513 genes with an empty Ensembl ID" in caplog.text


def test_partly_empty_ensembl_column_falls_back_to_symbols(vocab_v2):
    sym_to_ens = {s: e for s, e in vocab_v2.gene_name_id.items() if e in vocab_v2.token_dict}
    symbols = list(sym_to_ens)[:4]
    ens = [sym_to_ens[s] for s in symbols]
    var = pd.DataFrame({"ensembl_id": [ens[0], "", ens[2], np.nan]}, index=symbols)
    a = ad.AnnData(X=sp.csr_matrix(np.array([[4.0, 3.0, 2.0, 1.0]])), var=var)
    m = match_genes(a.var, vocab_v2)
    assert (m.n_by_id, m.n_by_symbol) == (2, 2)
    assert list(m.ids) == ens
    ds = tokenize_anndata(a, vocab_v2, progress=False)
    assert sorted(ds["input_ids"][0][1:-1]) == sorted(vocab_v2.token_dict[e] for e in ens)
    ds2, match = match_and_tokenize(a, vocab_v2, gene_names="index", progress=False)
    assert match == (4, 4) and ds2["input_ids"] == ds["input_ids"]
    assert list(anndata_gene_ids(a, vocab_v2)) == ens
    # an explicit Ensembl ID column: the symbols still name the genes it leaves empty
    assert match_genes(a.var, vocab_v2, gene_id_column="ensembl_id").n_matched == 4
