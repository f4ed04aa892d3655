"""Faults: a worker process killed mid-run (tokenize, build-vocab), and two runs writing one output."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from conftest import pbmc3k_cells

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers are forked")


@pytest.fixture(scope="module")
def cells_file(tmp_path_factory, data_dir) -> Path:
    p = tmp_path_factory.mktemp("faults") / "cells.h5ad"
    pbmc3k_cells(data_dir, 80).write_h5ad(p)
    return p


@pytest.fixture()
def run_cli():
    from typer.testing import CliRunner

    from geneformer.cli.main import app

    return lambda args: CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def deadline():
    """Fail instead of hanging: the parent must notice a dead worker within a minute."""
    def _expired(*_):
        raise TimeoutError("the run hung after a worker died")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture()
def killed_worker(monkeypatch):
    """Every worker process SIGKILLs itself (as the OOM killer would) when it reads cells 40 and up."""
    import geneformer.io._base as base

    parent, check = os.getpid(), base.check_counts

    def check_then_die(counts, start, reader):
        if os.getpid() != parent and start >= 40:
            os.kill(os.getpid(), signal.SIGKILL)
        check(counts, start, reader)

    monkeypatch.setattr(base, "check_counts", check_then_die)  # forked workers inherit the patch


@pytest.mark.parametrize("command", ["tokenize", "build-vocab"])
def test_a_killed_worker_fails_the_run_promptly(command, cells_file, tmp_path, run_cli, killed_worker, deadline):
    out = tmp_path / "out"
    res = run_cli([command, cells_file, "--output", out, "--nproc", "2", "--chunk-size", "10"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "BrokenProcessPool" not in res.output
    assert "worker process died" in res.output and "cells.h5ad" in res.output and "--nproc" in res.output
    assert not out.exists() or not any(out.rglob("*")), "a failed run left output behind"


def test_a_second_tokenize_on_a_locked_output_is_refused(cells_file, tmp_path, run_cli, monkeypatch):
    """Run A is writing (held mid-write); run B on the same path fails at once and changes nothing;
    A's output is A's; afterwards B needs --overwrite."""
    import datasets

    import geneformer.tokenization._writer as W
    from geneformer.tokenization import tokenize_files
    from geneformer.vocab import GeneVocab

    writing, release = threading.Event(), threading.Event()
    write = W.DatasetWriter.write

    def held_write(self, batch, source):
        if threading.current_thread().name == "run-A":
            writing.set()
            release.wait(60)
        return write(self, batch, source)

    monkeypatch.setattr(W.DatasetWriter, "write", held_write)
    out = tmp_path / "cells.dataset"
    errors: list = []

    def run_a():
        try:
            tokenize_files([str(cells_file)], out, GeneVocab.load("V2"), custom_attr_name_dict={"cell_type": "ct"},
                           progress=False)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    a = threading.Thread(target=run_a, name="run-A")
    a.start()
    try:
        assert writing.wait(60)
        res = run_cli(["tokenize", cells_file, "--output", tmp_path, "--overwrite"])
        assert res.exit_code == 2 and "being written by another tokenize run" in res.output, res.output
        assert not out.exists()
    finally:
        release.set()
        a.join(60)
    assert not errors, errors
    assert "ct" in datasets.load_from_disk(str(out)).column_names  # run A's output, not B's
    res = run_cli(["tokenize", cells_file, "--output", tmp_path])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = run_cli(["tokenize", cells_file, "--output", tmp_path, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "ct" not in datasets.load_from_disk(str(out)).column_names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.dataset"]  # no lock or temporary left
