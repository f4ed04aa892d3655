"""Real multi-process runs: ``torchrun --nproc_per_node 2`` on CPU (gloo) for ``embed`` and ``perturb``
writes the same single output as one process, with both ranks doing part of the work; the
`--shard I/N` options of both commands merge to the single run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import geneformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the single-process runs, as the ranks
SRC = str(Path(geneformer.__file__).resolve().parents[1])


def _torchrun(module: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", module, *args]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


def _cli(command, args):
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    command.register(app)

    @app.command("noop")
    def _noop():
        pass

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def dataset(golden_dir, tmp_path_factory):
    """40 short V1 cells, in dataset order, saved as a dataset folder."""
    import datasets

    ds = datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))
    order = np.argsort(np.asarray(ds["length"]), kind="stable")[:40]
    folder = tmp_path_factory.mktemp("torchrun") / "cells.dataset"
    ds.select(np.sort(order)).save_to_disk(str(folder))
    return folder


def test_torchrun_embed_equals_one_process(golden_dir, dataset, tmp_path):
    from geneformer.cli import embed

    model = str(golden_dir / "models" / "mini-V1")
    args = [str(dataset), "--model", model, "--label", "cell_type", "--device", "cpu", "--chunk-rows", "8", "-q"]
    _cli(embed, ["embed", *args, "--output", str(tmp_path / "one.parquet")])
    res = _torchrun("geneformer.cli.embed", [*args, "--output", str(tmp_path / "two.parquet")], tmp_path)
    log = res.stdout + res.stderr
    for r in (0, 1):
        assert f"rank {r} embedded" in log and f"rank {r} embedded 0 chunk" not in log
    assert log.count("Wrote cell embeddings") == 1  # rank 0 writes the one output
    one, two = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "two.parquet")
    assert one.columns.tolist() == two.columns.tolist() and one["cell_type"].tolist() == two["cell_type"].tolist()
    np.testing.assert_allclose(one.iloc[:, :64].to_numpy(), two.iloc[:, :64].to_numpy(), atol=1e-6)
    assert not (tmp_path / "two.parquet.shards").exists()


def test_torchrun_perturb_equals_one_process(golden_dir, dataset, tmp_path):
    import pyarrow.parquet as pq

    from geneformer.cli import perturb
    from geneformer.perturb import load_raw

    model = str(golden_dir / "models" / "mini-V1")
    args = [str(dataset), "--model", model, "--prefix", "t", "--emb-mode", "cell_and_gene", "--max-ncells", "4",
            "--device", "cpu", "-q"]
    _cli(perturb, ["perturb", *args, "--output", str(tmp_path / "one")])
    res = _torchrun("geneformer.cli.perturb", [*args, "--output", str(tmp_path / "two")], tmp_path)
    assert (res.stdout + res.stderr).count("perturbations in") == 2  # both ranks computed parts
    name = "in_silico_delete_t.parquet"
    a, b = pq.read_table(tmp_path / "one" / name), pq.read_table(tmp_path / "two" / name)
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for col in a.column_names:
        if col == "value":
            np.testing.assert_allclose(a.column(col).to_numpy(), b.column(col).to_numpy(), atol=1e-5)
        else:
            assert a.column(col).equals(b.column(col)), col
    raws = sorted(p.name for p in (tmp_path / "one").glob("*_raw.pickle"))
    assert raws and raws == sorted(p.name for p in (tmp_path / "two").glob("*_raw.pickle"))
    for r in raws:
        ra, rb = load_raw(tmp_path / "one" / r), load_raw(tmp_path / "two" / r)
        assert ra.keys() == rb.keys()
        for k in ra:
            np.testing.assert_allclose(ra[k], rb[k], atol=1e-5)


def test_cli_shards_merge_to_the_single_run(golden_dir, dataset, tmp_path):
    import pyarrow.parquet as pq

    from geneformer.cli import embed, perturb
    from geneformer.shards import merge

    model = str(golden_dir / "models" / "mini-V1")
    args = [str(dataset), "--model", model, "--label", "cell_type", "--device", "cpu", "--chunk-rows", "8", "-q"]
    _cli(embed, ["embed", *args, "--output", str(tmp_path / "one.csv")])
    for i in range(2):
        _cli(embed, ["embed", *args, "--output", str(tmp_path / "two.csv"), "--shard", f"{i}/2"])
    merge(tmp_path / "two.csv")
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert one["cell_type"].tolist() == two["cell_type"].tolist()
    np.testing.assert_allclose(one.iloc[:, :64].to_numpy(), two.iloc[:, :64].to_numpy(), atol=1e-6)

    args = [str(dataset), "--model", model, "--prefix", "t", "--emb-mode", "cell", "--max-ncells", "4", "-q"]
    _cli(perturb, ["perturb", *args, "--output", str(tmp_path / "p1")])
    for i in range(2):
        _cli(perturb, ["perturb", *args, "--output", str(tmp_path / "p2"), "--shard", f"{i}/2"])
    name = "in_silico_delete_t.parquet"
    merge(tmp_path / "p2" / name)
    assert pq.read_table(tmp_path / "p1" / name).equals(pq.read_table(tmp_path / "p2" / name))
