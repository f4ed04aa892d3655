"""tools/gpu_check.py on a CPU machine: the wheel list it would download (never torch or CUDA
libraries), and the check saying there is no GPU and exiting 0."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402


def _dry_run(*extra: str) -> list[str]:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "wheels", "--dry-run", *extra],
                         capture_output=True, text=True, check=True)
    return [line.strip() for line in out.stdout.splitlines()[1:]]


def test_requirements_are_the_projects():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert gpu_check.runtime_requirements() == deps


def test_wheel_list_pins_the_closure_without_torch():
    listed = _dry_run()
    names = {line.split("==")[0] for line in listed}
    assert {"numpy", "transformers", "peft", "accelerate", "datasets", "pytest", "bitsandbytes"} <= names
    # the closure: what the direct dependencies need too
    assert {"tokenizers", "safetensors", "pyarrow"} <= names
    assert not any(n in ("torch", "triton") or n.startswith("nvidia-") for n in names)
    pinned = [line for line in listed if line != "bitsandbytes"]
    assert all("==" in line for line in pinned)


def test_exclude_and_no_bitsandbytes():
    names = {line.split("==")[0] for line in _dry_run("--exclude", "pandas", "scipy", "--no-bitsandbytes")}
    assert "pandas" not in names and "scipy" not in names and "bitsandbytes" not in names
    assert "numpy" in names


def test_download_commands_never_resolve_dependencies(tmp_path):
    cmds = gpu_check.download_commands(["numpy==2.0.0"], ["bitsandbytes"], tmp_path, "3.10")
    assert len(cmds) == 2
    for cmd in cmds:
        assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
        assert cmd[cmd.index("--python-version") + 1] == "3.10"
    assert cmds[0][-1] == "numpy==2.0.0" and cmds[1][-1] == "bitsandbytes"


def test_check_without_cuda_says_so_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert "no CUDA device here" in out.stdout
    assert time.perf_counter() - t0 < 60
    assert not (ROOT / ".venv-gpu").exists()  # nothing set up


def test_gpu_benchmark_without_cuda_says_so_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no CUDA device here" in out.stdout
