"""Sharded tokenization: shards + merge equal the single run; idempotent, resumable, missing shards named."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import pbmc3k_cells
from typer.testing import CliRunner

from geneformer._utils import ShardError, shards_dir
from geneformer.shards import merge
from geneformer.tokenization import _pipeline, tokenize_files

ARROW = "data-00000-of-00001.arrow"
OPTIONS = {"custom_attr_name_dict": {"cell_type": "cell_type", "cell_id": "cell_id"}, "chunk_size": 64,
           "progress": False}


@pytest.fixture(scope="module")
def two_files(data_dir, tmp_path_factory):
    sub = pbmc3k_cells(data_dir, 600)
    folder = tmp_path_factory.mktemp("inputs")
    paths = [folder / "a.h5ad", folder / "b.h5ad"]
    sub[:250].write_h5ad(paths[0])
    sub[250:].write_h5ad(paths[1])
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def single(two_files, vocab_v2, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "one.dataset"
    tokenize_files(two_files, out, vocab_v2, **OPTIONS)
    return out


def _same_dataset(a, b) -> None:
    # the Arrow file byte for byte: same rows, columns, types and chunking
    assert (a / ARROW).read_bytes() == (b / ARROW).read_bytes()
    assert json.loads((a / "dataset_info.json").read_text()) == json.loads((b / "dataset_info.json").read_text())
    assert datasets.load_from_disk(str(b))["input_ids"] == datasets.load_from_disk(str(a))["input_ids"]


def test_shards_merge_to_the_single_run(two_files, single, vocab_v2, tmp_path):
    out = tmp_path / "sharded.dataset"
    sizes = {}
    for i in (2, 0, 3, 1):  # any order, any machine
        sizes[i] = len(tokenize_files(two_files, out, vocab_v2, shard=f"{i}/4", **OPTIONS))
    records = [json.loads(p.read_text()) for p in sorted(shards_dir(out).glob("*.done.json"))]
    # slices of whole chunks that cover every cell once: one cut inside a file, none across
    assert sum(r["n_cells"] for r in records) == 600
    assert all(a % 64 == 0 for r in records for a, b in r["rows"] if b > a)
    assert min(sizes.values()) > 0
    assert merge(out) == out
    _same_dataset(single, out)


def test_finished_shard_not_redone_interrupted_one_resumes(two_files, single, vocab_v2, tmp_path, monkeypatch):
    out = tmp_path / "s.dataset"
    for i in range(3):
        tokenize_files(two_files, out, vocab_v2, shard=(i, 3), **OPTIONS)

    real = _pipeline.iter_batches

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished shard was encoded again")

    monkeypatch.setattr(_pipeline, "iter_batches", must_not_run)
    assert len(tokenize_files(two_files, out, vocab_v2, shard=(1, 3), **OPTIONS)) > 0

    # shard 1 killed: its marker gone, a partial part left behind
    folder = shards_dir(out)
    (folder / "shard-00001-of-00003.done.json").unlink()
    arrow = folder / "shard-00001-of-00003" / ARROW
    arrow.write_bytes(arrow.read_bytes()[:1000])
    with pytest.raises(ShardError, match="1/3"):
        merge(out)

    def interrupted(*args, **kwargs):  # dies after the first chunk
        it = real(*args, **kwargs)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(_pipeline, "iter_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tokenize_files(two_files, out, vocab_v2, shard=(1, 3), **OPTIONS)
    assert not (folder / "shard-00001-of-00003.done.json").exists()

    monkeypatch.setattr(_pipeline, "iter_batches", real)
    tokenize_files(two_files, out, vocab_v2, shard=(1, 3), **OPTIONS)
    merge(out)
    _same_dataset(single, out)


def test_shard_of_another_run_is_refused(two_files, vocab_v2, tmp_path):
    out = tmp_path / "s.dataset"
    tokenize_files(two_files, out, vocab_v2, shard=(0, 2), **OPTIONS)
    with pytest.raises(ShardError, match="different run"):
        tokenize_files(two_files, out, vocab_v2, shard=(0, 2), **{**OPTIONS, "model_input_size": 512})
    # --overwrite redoes it with the new settings
    tokenize_files(two_files, out, vocab_v2, shard=(0, 2), overwrite=True, **{**OPTIONS, "model_input_size": 512})


def test_cli_shards_and_merge(two_files, single, tmp_path):
    from geneformer.cli.main import app

    runner = CliRunner()
    base = ["tokenize", *two_files, "--output", str(tmp_path), "--prefix", "c", "--chunk-size", "64",
            "--attr", "cell_type", "--attr", "cell_id"]
    out = tmp_path / "c.dataset"
    for i in (0, 2):
        res = runner.invoke(app, [*base, "--shard", f"{i}/3"])
        assert res.exit_code == 0, res.output
        assert f"geneformer merge {out}" in res.output
    res = runner.invoke(app, ["merge", str(out)])
    assert res.exit_code == 2
    assert "1 of 3 shards" in res.output and "1/3" in res.output and "0/3" not in res.output
    assert runner.invoke(app, [*base, "--shard", "1/3"]).exit_code == 0
    res = runner.invoke(app, ["merge", str(out)])
    assert res.exit_code == 0, res.output
    _same_dataset(single, out)
    res = runner.invoke(app, ["merge", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output
    assert not shards_dir(out).exists()  # merged: the parts are gone, so a second merge has nothing to read
    res = runner.invoke(app, ["merge", str(out), "--overwrite"])
    assert res.exit_code == 2 and "no finished shard" in res.output
    res = runner.invoke(app, [*base, "--shard", "3/3"])
    assert res.exit_code == 2 and "0..2" in res.output
