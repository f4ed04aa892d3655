"""The Dask recipe: tokenize shards as a task map on a LocalCluster of worker processes, then merge."""

from __future__ import annotations

from functools import partial

import pytest
from conftest import pbmc3k_cells

from geneformer.shards import run_with_dask
from geneformer.tokenization import tokenize_files

distributed = pytest.importorskip("dask.distributed")

ARROW = "data-00000-of-00001.arrow"


def test_tokenize_shards_on_a_local_cluster_equal_the_single_run(data_dir, vocab_v2, tmp_path):
    sub = pbmc3k_cells(data_dir, 300)
    files = [str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")]
    sub[:120].write_h5ad(files[0])
    sub[120:].write_h5ad(files[1])
    options = {"custom_attr_name_dict": {"cell_type": "cell_type"}, "chunk_size": 32, "progress": False}
    single = tmp_path / "single.dataset"
    tokenize_files(files, single, vocab_v2, **options)

    out = tmp_path / "dask.dataset"
    job = partial(tokenize_files, files, out, vocab_v2, **options)  # the vocabulary travels once per task
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        assert run_with_dask(job, 3, out, client=client) == out
        workers = client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2  # two processes did the work
    assert (out / ARROW).read_bytes() == (single / ARROW).read_bytes()
    assert not (tmp_path / "dask.dataset.shards").exists()  # merged: the parts are gone
