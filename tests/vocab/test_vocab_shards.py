"""Gene medians and vocabularies from shards equal the single run's."""

from __future__ import annotations

import pytest
from conftest import pbmc3k_cells
from typer.testing import CliRunner

from geneformer._utils import ShardError
from geneformer.vocab import GeneDigests, GeneVocab, build_corpus_vocab, compute_gene_digests


@pytest.fixture(scope="module")
def corpus(data_dir, tmp_path_factory):
    sub = pbmc3k_cells(data_dir, 500)
    sub.var["ensembl_id"] = sub.var["ensembl_id"].astype(str)
    folder = tmp_path_factory.mktemp("corpus")
    a, b = folder / "a.h5ad", folder / "b.loom"
    sub[:300].copy().write_h5ad(a)
    sub[300:].copy().write_loom(b)
    return [str(a), str(b)]


def test_shard_sketches_merge_to_the_whole_exactly(corpus):
    whole = compute_gene_digests(corpus, exact=True, chunk_size=64, progress=False)
    merged = GeneDigests(exact=True)
    for i in range(3):
        merged.merge(compute_gene_digests(corpus, exact=True, chunk_size=64, progress=False, shard=(i, 3)))
    assert merged.n_cells == whole.n_cells == 500
    assert merged.medians() == whole.medians()  # exact: equal, not close
    assert merged.counts() == whole.counts()


def test_cli_vocab_shards_and_merge(corpus, tmp_path):
    from geneformer.cli.main import app

    runner = CliRunner()
    opts = ["--name", "pbmc", "--exact", "--min-cells", "3", "--chunk-size", "64", "--save-digests"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert runner.invoke(app, ["build-vocab", *corpus, "--output", str(single), *opts]).exit_code == 0
    for i in (1, 0):
        res = runner.invoke(app, ["build-vocab", *corpus, "--output", str(sharded), *opts, "--shard", f"{i}/3"])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(sharded)])
    assert res.exit_code == 2 and "2/3" in res.output
    assert runner.invoke(app, ["build-vocab", *corpus, "--output", str(sharded), *opts, "--shard", "2/3"]).exit_code == 0
    res = runner.invoke(app, ["merge", str(sharded)])
    assert res.exit_code == 0, res.output
    a, b = GeneVocab.from_dir(single), GeneVocab.from_dir(sharded)
    assert a.token_dict == b.token_dict and a.gene_medians == b.gene_medians
    for f in ("gene_stats_pbmc.tsv", "token_dictionary_pbmc.pkl", "gene_median_dictionary_pbmc.pkl"):
        assert (single / f).read_bytes() == (sharded / f).read_bytes(), f
    assert GeneDigests.load(sharded / "gene_digests_pbmc.npz").medians() == a.gene_medians


def test_vocab_shard_rerun_and_other_settings(corpus, tmp_path, monkeypatch):
    from geneformer.vocab import _corpus_vocab

    out = tmp_path / "v"
    first = build_corpus_vocab(corpus, out, exact=True, chunk_size=64, shard=(0, 2), progress=False)
    assert first.vocab is None and first.path.is_file()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished shard was sketched again")

    monkeypatch.setattr(_corpus_vocab, "compute_gene_digests", must_not_run)
    again = build_corpus_vocab(corpus, out, exact=True, chunk_size=64, shard=(0, 2), progress=False)
    assert again.digests.medians() == first.digests.medians()
    with pytest.raises(ShardError, match="different run"):
        build_corpus_vocab(corpus, out, exact=True, chunk_size=64, min_cells=5, shard=(0, 2))
