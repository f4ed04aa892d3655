"""Sharded perturbation runs: shards + merge equal the single run (tidy table and raw pickles), a
missing shard is named, an interrupted shard resumes, a finished one is skipped."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from geneformer._utils import Shard, ShardError, shard_record
from geneformer.perturb import _results as R
from geneformer.perturb import _run as P
from geneformer.perturb import perturbation_spec, run_perturbation
from geneformer.shards import merge

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPP = "in_silico_delete_t"


@pytest.fixture(scope="module")
def cells(golden_dir):
    """Six real V1 cells cut to 8..18 tokens."""
    import datasets

    ds = datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))
    picks = [i for i, n in enumerate(ds["length"]) if n > 20][:6]
    ids = [list(ds[i]["input_ids"])[:L] for i, L in zip(picks, [14, 9, 17, 11, 18, 8])]
    return datasets.Dataset.from_dict({"input_ids": ids, "length": [len(s) for s in ids],
                                       "cell_id": [ds[i]["cell_id"] for i in picks]})


def _spec():
    return perturbation_spec("delete", "all", emb_mode="cell_and_gene", vocab="V1", rows_per_part=12)


def _shard(model, cells, out, i, n, **kw):
    return run_perturbation(model, cells, out, "t", _spec(), shard=(i, n), progress=False, **kw)


def _raw(folder):
    return {os.path.basename(p): R.load_raw(p) for p in sorted(glob.glob(str(folder / "*_raw.pickle")))}


def _same_outputs(a, b):
    import pyarrow.parquet as pq

    assert pq.read_table(a / f"{OPP}.parquet").equals(pq.read_table(b / f"{OPP}.parquet"))
    ra, rb = _raw(a), _raw(b)
    assert sorted(ra) == sorted(rb) and len(ra) == 2
    for name in ra:
        assert ra[name].keys() == rb[name].keys()
        for k in ra[name]:
            np.testing.assert_allclose(ra[name][k], rb[name][k], atol=1e-6)


def test_shards_merge_to_the_single_run(mini_v1, cells, tmp_path):
    single = run_perturbation(mini_v1, cells, tmp_path / "single", "t", _spec(), progress=False)
    out = tmp_path / "sharded"
    for i in (1, 2, 0):
        assert _shard(mini_v1, cells, out, i, 3) is None
    final = out / f"{OPP}.parquet"
    assert not final.exists() and not _raw(out)
    records = [shard_record(final, Shard(i, 3)) for i in range(3)]
    assert [r["parts"][0] for r in records] == sorted(r["parts"][0] for r in records)  # contiguous slices
    assert merge(final) == final == out / single.name
    _same_outputs(tmp_path / "single", out)
    assert not (out / f"{OPP}_parts").exists() and not (out / f"{OPP}.parquet.shards").exists()
    # a shard rerun after the merge finds the finished table and does nothing
    assert _shard(mini_v1, cells, out, 0, 3) == final


def test_merge_names_the_missing_shards(mini_v1, cells, tmp_path):
    _shard(mini_v1, cells, tmp_path, 1, 3)
    with pytest.raises(ShardError, match=r"2 of 3 shards .*: 0/3, 2/3"):
        merge(tmp_path / f"{OPP}.parquet")


def test_an_interrupted_shard_resumes_and_a_finished_one_is_skipped(mini_v1, cells, tmp_path, monkeypatch):
    done: list = []

    def crash(i):
        done.append(i)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(P, "_part_done_hook", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _shard(mini_v1, cells, tmp_path, 0, 2)
    first = done[0]
    done.clear()
    monkeypatch.setattr(P, "_part_done_hook", done.append)
    _shard(mini_v1, cells, tmp_path, 0, 2)
    start, stop = shard_record(tmp_path / f"{OPP}.parquet", Shard(0, 2))["parts"]
    assert first == start and done == list(range(start + 1, stop))  # only what the crash left

    def boom(*a, **k):
        raise AssertionError("recomputed")

    real = P.run_part
    monkeypatch.setattr(P, "run_part", boom)
    assert _shard(mini_v1, cells, tmp_path, 0, 2) is None
    monkeypatch.setattr(P, "run_part", real)
    _shard(mini_v1, cells, tmp_path, 1, 2)
    merge(tmp_path / f"{OPP}.parquet")
    run_perturbation(mini_v1, cells, tmp_path / "single", "t", _spec(), progress=False)
    _same_outputs(tmp_path / "single", tmp_path)
