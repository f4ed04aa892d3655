"""CPU threads follow the CPUs the process may use (affinity mask, cgroup quota), and waiting
threads sleep instead of spinning (the defaults set when geneformer is imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geneformer._utils import _device as D


def _cgroup(tmp_path: Path, cpu_max: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    return tmp_path


def test_cgroup_quota_v2_v1_and_none(tmp_path):
    assert D.cgroup_cpu_quota(_cgroup(tmp_path / "a", "150000 100000")) == pytest.approx(1.5)
    assert D.cgroup_cpu_quota(_cgroup(tmp_path / "b", "max 100000")) is None
    assert D.cgroup_cpu_quota(_cgroup(tmp_path / "c", v1=("50000", "100000"))) == pytest.approx(0.5)
    assert D.cgroup_cpu_quota(_cgroup(tmp_path / "d", v1=("-1", "100000"))) is None
    assert D.cgroup_cpu_quota(tmp_path / "missing") is None


def test_usable_cpus_is_the_smaller_of_affinity_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    assert D.usable_cpus(_cgroup(tmp_path, "250000 100000")) == 3  # 2.5 CPUs: 3 threads, not 8
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert D.usable_cpus(tmp_path) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    (tmp_path / "cpu.max").write_text("400000 100000\n")
    assert D.usable_cpus(tmp_path) == 1  # pinned to one CPU whatever the quota
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert D.usable_cpus(tmp_path) == 1  # a tenth of a CPU still runs one thread


def test_limit_cpu_threads_sets_defaults_keeps_the_users_and_caps_torch(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    root = _cgroup(tmp_path, "100000 100000")
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert D.limit_cpu_threads(env, root) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice stays
    assert env["KMP_BLOCKTIME"] == "0"
    assert env["OMP_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"


def test_importing_geneformer_before_torch_makes_waiting_threads_sleep():
    env = {k: v for k, v in os.environ.items() if k not in D.THREAD_ENV_DEFAULTS}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import os, geneformer, torch; "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['NUMBA_NUM_THREADS'], torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    policy, numba_threads, torch_threads = out.stdout.split()
    assert policy == "PASSIVE"
    assert int(numba_threads) == int(torch_threads) == D.usable_cpus()
