"""Gene medians (exact and t-digest), their merging and persistence, vocabulary building and the CLI."""

from __future__ import annotations

import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import pbmc3k_cells

from geneformer.vocab import (
    GeneDigests,
    GeneVocab,
    build_vocab,
    compute_gene_digests,
    estimate_gene_medians,
    write_vocab,
)

N_CELLS = 400


@pytest.fixture(scope="module")
def pbmc(data_dir) -> ad.AnnData:
    sub = pbmc3k_cells(data_dir, N_CELLS)
    sub.var["ensembl_id"] = sub.var["ensembl_id"].astype(str)
    return sub


def numpy_medians(a: ad.AnnData, n_counts=None, keep=None) -> tuple[dict, dict]:
    """Reference: per-gene median of the non-zero normalised values, one dense column at a time."""
    x = a.X.toarray().astype(np.float64)
    n = a.obs["n_counts"].to_numpy(float) if n_counts is None else n_counts
    if keep is not None:
        x, n = x[keep], n[keep]
    norm = x / n[:, None] * 10_000
    med, cnt = {}, {}
    for j, g in enumerate(a.var["ensembl_id"]):
        if not g:
            continue
        v = norm[:, j][norm[:, j] != 0]
        if len(v):
            med[g], cnt[g] = float(np.median(v)), len(v)
    return med, cnt


@pytest.fixture(scope="module")
def reference(pbmc):
    return numpy_medians(pbmc)


def test_exact_medians_match_numpy(pbmc, reference):
    med, cnt = estimate_gene_medians(pbmc, exact=True, chunk_size=64, return_counts=True, progress=False)
    ref_med, ref_cnt = reference
    assert set(med) == set(ref_med)
    for g, v in ref_med.items():
        assert med[g] == pytest.approx(v, rel=1e-12)
    assert {g: cnt[g] for g in ref_cnt} == ref_cnt
    assert all(cnt[g] == 0 for g in cnt if g not in ref_cnt)


def test_auto_mode_is_exact_for_small_data(pbmc, reference):
    d = compute_gene_digests(pbmc, progress=False)
    assert d.mode == "exact"
    assert d.medians() == pytest.approx(reference[0], rel=1e-12)


def test_auto_mode_switches_to_digest_above_the_limit(pbmc, reference):
    d = compute_gene_digests(pbmc, chunk_size=50, exact_limit=5_000, progress=False)
    assert d.mode == "digest"
    _close(d.medians(), reference[0], rel=0.05)


def _close(got: dict, want: dict, rel: float) -> None:
    assert set(got) == set(want)
    r = np.array([got[g] / want[g] - 1 for g in want])
    assert np.abs(r).max() < rel
    assert np.median(np.abs(r)) < rel / 10


def test_tdigest_close_to_exact(pbmc, reference):
    med, cnt = estimate_gene_medians(pbmc, exact=False, chunk_size=100, return_counts=True, progress=False)
    _close(med, reference[0], rel=0.03)
    assert {g: cnt[g] for g in reference[1]} == reference[1]


def test_n_counts_default_to_row_totals(pbmc):
    a = pbmc.copy()
    del a.obs["n_counts"]
    totals = np.asarray(pbmc.X.sum(axis=1)).ravel().astype(float)
    want, _ = numpy_medians(pbmc, n_counts=totals)
    got = estimate_gene_medians(a, exact=True, progress=False)
    assert got == pytest.approx(want, rel=1e-12)


def test_filter_pass_honoured(pbmc):
    a = pbmc.copy()
    rng = np.random.default_rng(1)
    fp = rng.integers(0, 2, a.n_obs)
    a.obs["filter_pass"] = fp
    want, want_cnt = numpy_medians(pbmc, keep=fp == 1)
    got, cnt = estimate_gene_medians(a, exact=True, chunk_size=33, return_counts=True, progress=False)
    assert got == pytest.approx(want, rel=1e-12)
    assert {g: cnt[g] for g in want_cnt} == want_cnt
    # boolean and float flags pass with 1/True/1.0, strings "1" do not
    a.obs["filter_pass"] = (fp == 1)
    assert estimate_gene_medians(a, exact=True, progress=False) == pytest.approx(want, rel=1e-12)
    a.obs["filter_pass"] = pd.Series(fp.astype(str), index=a.obs_names).astype(object)
    d = compute_gene_digests(a, exact=True, progress=False)
    assert d.n_values == 0 and d.medians() == {}


def _halves(pbmc, exact):
    h = pbmc.n_obs // 2
    first = compute_gene_digests(pbmc[:h].copy(), exact=exact, progress=False)
    second = compute_gene_digests(pbmc[h:].copy(), exact=exact, progress=False)
    return first, second


def test_merge_halves_equals_whole_exact(pbmc, reference):
    first, second = _halves(pbmc, exact=True)
    merged = first.merge(second)
    assert merged.mode == "exact"
    assert merged.medians() == pytest.approx(reference[0], rel=1e-12)
    counts = merged.counts()
    assert {g: counts[g] for g in reference[1]} == reference[1]
    assert merged.n_cells == pbmc.n_obs


def test_merge_halves_close_digest(pbmc, reference):
    first, second = _halves(pbmc, exact=False)
    merged = first.merge(second)
    assert merged.mode == "digest"
    _close(merged.medians(), reference[0], rel=0.03)


def test_merge_exact_into_digest(pbmc, reference):
    first, _ = _halves(pbmc, exact=False)
    _, second = _halves(pbmc, exact=True)
    merged = first.merge(second)
    assert merged.mode == "digest"
    _close(merged.medians(), reference[0], rel=0.03)


def test_merge_genes_that_differ_between_files():
    a, b = GeneDigests(exact=True), GeneDigests(exact=True)
    a.update(sp.csr_matrix([[1, 2], [3, 0]]), [10, 10], ["G1", "G2"])
    b.update(sp.csr_matrix([[5, 1]]), [10, 10][:1], ["G3", "G1"])
    a.merge(b)
    assert a.medians() == pytest.approx({"G1": 1000.0, "G2": 2000.0, "G3": 5000.0})  # G1: 1000, 3000, 1000
    assert a.counts() == {"G1": 3, "G2": 1, "G3": 1}


def test_duplicate_and_skipped_gene_columns_are_summed_or_ignored():
    d = GeneDigests(exact=True)
    # columns 0 and 2 are the same gene: summed per cell; column 1 has no id: ignored
    d.update(np.array([[1, 7, 1], [0, 7, 3]]), [10, 20], ["G1", "", "G1"])
    assert d.medians() == pytest.approx({"G1": (2000.0 + 1500.0) / 2})
    assert d.counts() == {"G1": 2}


def test_gene_filter(pbmc, reference):
    keep = list(pbmc.var["ensembl_id"][:5000])
    got = estimate_gene_medians(pbmc, exact=True, gene_filter=keep, progress=False)
    assert got == pytest.approx({g: v for g, v in reference[0].items() if g in set(keep)}, rel=1e-12)
    mask_fn = _first_genes
    assert estimate_gene_medians(pbmc, exact=True, gene_filter=mask_fn, progress=False) == got


def _first_genes(var: pd.DataFrame) -> np.ndarray:
    return np.arange(len(var)) < 5000


@pytest.mark.parametrize("exact", [True, False])
def test_save_load_round_trip(pbmc, tmp_path, exact):
    d = compute_gene_digests(pbmc, exact=exact, progress=False)
    d.gene_symbols["X"] = "ENSG0"
    path = d.save(tmp_path / "digests.npz")
    back = GeneDigests.load(path)
    assert back.mode == d.mode and back.gene_ids == d.gene_ids and back.n_cells == d.n_cells
    assert back.counts() == d.counts()
    assert back.medians() == d.medians()
    assert back.gene_symbols == d.gene_symbols
    with open(path, "rb") as fh:  # a plain npz, not a pickle
        assert fh.read(2) == b"PK"


def test_load_rejects_bad_files(tmp_path):
    from geneformer.io import InputFileError

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.arange(3))
    with pytest.raises(InputFileError, match="bad.npz"):
        GeneDigests.load(bad)


def test_files_and_processes(pbmc, tmp_path, reference):
    """Two h5ad files, one and two worker processes: same exact medians as the whole."""
    h = pbmc.n_obs // 2
    paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    pbmc[:h].copy().write_h5ad(paths[0])
    pbmc[h:].copy().write_h5ad(paths[1])
    serial = estimate_gene_medians(paths, exact=True, chunk_size=64, progress=False)
    assert serial == pytest.approx(reference[0], rel=1e-12)
    parallel = estimate_gene_medians(paths, exact=True, chunk_size=64, nproc=2, progress=False)
    assert parallel == serial
    with pytest.raises(ValueError, match="picklable"):
        estimate_gene_medians(paths, nproc=2, gene_filter=lambda var: np.ones(len(var), bool), progress=False)


# ---- vocabularies --------------------------------------------------------------------------------
def test_build_vocab_order_and_special_tokens():
    medians = {"ENSG3": 1.5, "ENSG1": 2.0, "ENSG2": 0.5, "ENSG0": 0.0, "ENSGN": float("nan")}
    v = build_vocab(medians)
    assert list(v.token_dict) == ["<pad>", "<mask>", "<cls>", "<eos>", "ENSG1", "ENSG2", "ENSG3"]
    assert list(v.token_dict.values()) == list(range(7))
    assert (v.pad_id, v.mask_id, v.cls_id, v.eos_id) == (0, 1, 2, 3)
    assert v.has_cls_eos
    assert set(v.gene_medians) == {"ENSG1", "ENSG2", "ENSG3"}
    v1 = build_vocab(medians, special_tokens=False)
    assert list(v1.token_dict) == ["<pad>", "<mask>", "ENSG1", "ENSG2", "ENSG3"]
    assert not v1.has_cls_eos and v1.cls_id is None
    assert all(type(t) is int for t in v1.token_dict.values())


def test_build_vocab_min_cells_and_genes():
    medians, counts = {"A": 1.0, "B": 2.0, "C": 3.0}, {"A": 5, "B": 1, "C": 10}
    assert build_vocab(medians, counts=counts, min_cells=5).genes == ["A", "C"]
    assert build_vocab(medians, genes=["C", "B", "Z"]).genes == ["B", "C"]
    with pytest.raises(ValueError, match="counts"):
        build_vocab(medians, min_cells=2)
    with pytest.raises(ValueError, match="No gene"):
        build_vocab(medians, counts=counts, min_cells=100)


def test_build_vocab_from_digests(pbmc, reference):
    d = compute_gene_digests(pbmc, progress=False)
    v = build_vocab(d, min_cells=10)
    want = sorted(g for g, n in reference[1].items() if n >= 10)
    assert v.genes == want
    assert v.gene_medians == pytest.approx(reference[0], rel=1e-12)
    # symbols from the gene table's gene_symbol column
    assert v.gene_name_id["CD3E"] == pbmc.var.loc["CD3E", "ensembl_id"]


def test_write_vocab_published_and_json_round_trip(pbmc, tmp_path):
    d = compute_gene_digests(pbmc, progress=False)
    v = build_vocab(d)
    write_vocab(v, tmp_path / "pkl", "test", formats=("pickle",), counts=d.counts())
    names = sorted(p.name for p in (tmp_path / "pkl").iterdir())
    assert names == ["ensembl_mapping_dict_test.pkl", "gene_median_dictionary_test.pkl", "gene_name_id_dict_test.pkl",
                     "gene_stats_test.tsv", "token_dictionary_test.pkl"]
    with open(tmp_path / "pkl" / "token_dictionary_test.pkl", "rb") as fh:
        tok = pickle.load(fh)
    assert tok == v.token_dict and type(tok) is dict
    for folder, formats in (("pkl", None), ("json", ("json",))):
        if formats:
            write_vocab(v, tmp_path / folder, "test", formats=formats)
        back = GeneVocab.from_dir(tmp_path / folder)
        assert back.token_dict == v.token_dict
        assert back.gene_medians == v.gene_medians
        assert back.gene_name_id == v.gene_name_id
        assert back.ensembl_mapping == v.ensembl_mapping
    stats = pd.read_csv(tmp_path / "pkl" / "gene_stats_test.tsv", sep="\t")
    assert stats["in_vocab"].sum() == len(v.genes)


def test_vocab_genes_are_mapped_by_the_vocabulary(pbmc):
    """The new vocabulary maps its own genes to themselves (tokenizer-facing)."""
    v = build_vocab(compute_gene_digests(pbmc, progress=False))
    ids = v.canonical_ids(list(pbmc.var["ensembl_id"][:200]))
    assert all(i == g or (i == "" and g not in v.token_dict) for i, g in zip(ids, pbmc.var["ensembl_id"][:200]))


# ---- CLI -----------------------------------------------------------------------------------------
@pytest.fixture()
def cli_app():
    from geneformer.cli.main import app  # the real app: its commands carry the error guard

    return app


def test_cli_build_vocab(cli_app, pbmc, tmp_path, reference):
    from typer.testing import CliRunner

    h = pbmc.n_obs // 2
    a, b = tmp_path / "a.h5ad", tmp_path / "b.loom"
    pbmc[:h].copy().write_h5ad(a)
    pbmc[h:].copy().write_loom(b)
    out = tmp_path / "vocab"
    runner = CliRunner()
    res = runner.invoke(cli_app, ["build-vocab", str(a), str(b), "--output", str(out), "--name", "pbmc",
                                  "--exact", "--min-cells", "3", "--save-digests"])
    assert res.exit_code == 0, res.output
    v = GeneVocab.from_dir(out)
    assert v.genes == sorted(g for g, n in reference[1].items() if n >= 3)
    assert v.gene_medians == pytest.approx(reference[0], rel=1e-12)
    assert v.has_cls_eos
    assert (out / "token_dictionary_pbmc.pkl").is_file() and (out / "gene_median_dictionary_pbmc.pkl").is_file()
    assert GeneDigests.load(out / "gene_digests_pbmc.npz").mode == "exact"

    # a saved sketch of the first half merged with the second half gives the whole again
    first = tmp_path / "first"
    res = runner.invoke(cli_app, ["build-vocab", str(a), "--output", str(first), "--save-digests"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli_app, ["build-vocab", str(first / "gene_digests_custom.npz"), str(b),
                                  "--output", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    assert GeneVocab.from_dir(tmp_path / "merged").gene_medians == pytest.approx(reference[0], rel=1e-12)

    res = runner.invoke(cli_app, ["build-vocab", str(a), "--output", str(tmp_path / "v2"), "--no-special-tokens",
                                  "--approx"])
    assert res.exit_code == 0, res.output
    assert not GeneVocab.from_dir(tmp_path / "v2").has_cls_eos

    res = runner.invoke(cli_app, ["build-vocab", str(tmp_path / "missing.h5ad"), "--output", str(out)])
    assert res.exit_code == 2 and "missing.h5ad" in res.output

    # an existing vocabulary is refused (naming the flag, nothing changed) unless --overwrite
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = runner.invoke(cli_app, ["build-vocab", str(a), "--output", str(out), "--name", "pbmc"])
    assert res.exit_code == 2 and "--overwrite" in res.output and "Traceback" not in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    res = runner.invoke(cli_app, ["build-vocab", str(a), "--output", str(out), "--name", "pbmc", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert GeneVocab.from_dir(out).gene_medians != pytest.approx(reference[0], rel=1e-12)  # the first half only
    assert (out / "gene_digests_pbmc.npz").read_bytes() == before["gene_digests_pbmc.npz"]  # not asked: kept

    res = runner.invoke(cli_app, ["build-vocab", "--help"])
    assert res.exit_code == 0 and "Examples" in res.output and "--min-cells" in res.output
