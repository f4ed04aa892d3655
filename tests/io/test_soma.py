"""TileDB-SOMA experiments: tokens equal those of the h5ad they were built from; filters, attributes, shards."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pbmc3k_cells

from geneformer.io import InputFileError, detect_format, open_reader
from geneformer.shards import merge
from geneformer.tokenization import tokenize_files

soma = pytest.importorskip("tiledbsoma")
soma_io = pytest.importorskip("tiledbsoma.io")

N_CELLS = 300
ATTRS = {"cell_type": "cell_type", "cell_id": "cell_id"}
SOMA_OPTIONS = {"var_id_column": "ensembl_id"}  # the Census calls it feature_id (the default)


@pytest.fixture(scope="module")
def pbmc(data_dir):
    return pbmc3k_cells(data_dir, N_CELLS)


@pytest.fixture(scope="module")
def experiment(pbmc, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("soma") / "pbmc")
    soma_io.from_anndata(uri, pbmc, measurement_name="RNA", X_layer_name="raw")
    return uri


@pytest.fixture(scope="module")
def h5ad_tokens(pbmc, vocab_v2, tmp_path_factory):
    path = tmp_path_factory.mktemp("h5ad") / "pbmc.h5ad"
    pbmc.write_h5ad(path)
    return tokenize_files([path], path.with_suffix(".dataset"), vocab_v2, custom_attr_name_dict=ATTRS,
                          chunk_size=64, progress=False)


def test_reader_streams_the_counts_of_the_h5ad(experiment, pbmc):
    assert detect_format(experiment) == "soma"
    with open_reader(experiment, **SOMA_OPTIONS) as r:
        assert r.n_cells == N_CELLS and len(r.var) == pbmc.n_vars
        assert list(r.var.index[:3]) == list(pbmc.var["ensembl_id"][:3])
        chunks = list(r.iter_counts(128))
        assert [s for s, _ in chunks] == [0, 128, 256]
        got = chunks[1][1]
        want = pbmc.X[128:256]
        assert got.has_sorted_indices and (got != want).nnz == 0
        obs = r.read_obs(["cell_type"])
        assert list(obs.index) == list(pbmc.obs_names) and list(obs["cell_type"]) == list(pbmc.obs["cell_type"])


def test_soma_tokens_equal_h5ad_tokens(experiment, h5ad_tokens, vocab_v2, tmp_path):
    ds = tokenize_files([experiment], tmp_path / "s.dataset", vocab_v2, custom_attr_name_dict=ATTRS,
                        chunk_size=64, progress=False, reader_options=SOMA_OPTIONS)
    assert ds.column_names == h5ad_tokens.column_names
    for col in ds.column_names:
        assert ds[col] == h5ad_tokens[col], col


def test_value_filter_selects_cells_and_shards_merge(experiment, h5ad_tokens, vocab_v2, tmp_path):
    opts = {**SOMA_OPTIONS, "value_filter": "cell_type == 'B' or cell_type == 'NK'"}
    keep = np.isin(h5ad_tokens["cell_type"], ["B", "NK"])
    want = [x for x, k in zip(h5ad_tokens["input_ids"], keep) if k]
    single = tokenize_files([experiment], tmp_path / "f.dataset", vocab_v2, custom_attr_name_dict=ATTRS,
                            chunk_size=16, progress=False, reader_options=opts)
    assert 0 < len(single) < N_CELLS and single["input_ids"] == want
    out = tmp_path / "sharded.dataset"
    for i in range(3):
        tokenize_files([experiment], out, vocab_v2, custom_attr_name_dict=ATTRS, chunk_size=16,
                       progress=False, reader_options=opts, shard=(i, 3))
    merge(out)
    assert (out / "data-00000-of-00001.arrow").read_bytes() == \
        (tmp_path / "f.dataset" / "data-00000-of-00001.arrow").read_bytes()


def test_cli_tokenizes_a_soma_experiment(experiment, h5ad_tokens, tmp_path):
    from typer.testing import CliRunner

    from geneformer.cli.main import app

    res = CliRunner().invoke(app, ["tokenize", experiment, "--output", str(tmp_path), "--prefix", "s",
                                   "--var-id-column", "ensembl_id", "--layer", "raw", "--measurement", "RNA",
                                   "--obs-filter", "cell_type == 'B'", "--attr", "cell_type"])
    assert res.exit_code == 0, res.output
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "s.dataset"))
    assert set(ds["cell_type"]) == {"B"} and len(ds) == h5ad_tokens["cell_type"].count("B")


@pytest.mark.parametrize("options, message", [
    ({"measurement": "ATAC"}, "no measurement 'ATAC'"),
    ({"layer": "normalized"}, "no X layer 'normalized'"),
    ({}, "no column 'feature_id'"),
    ({**SOMA_OPTIONS, "value_filter": "no_such_column == 1"}, "value_filter"),
])
def test_clear_errors(experiment, options, message):
    with pytest.raises(InputFileError, match=message):
        open_reader(experiment, **options)
