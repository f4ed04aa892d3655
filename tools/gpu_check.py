"""The one-command GPU check, and the wheels it installs from.

``make gpu-wheels`` (on the CPU machine, with internet)::

    python tools/gpu_check.py wheels [--dest .whl] [--python-version 3.11] [--exclude NAME ...] [--dry-run]

downloads, into ``.whl/``, a wheel of every runtime dependency of the project (the versions
installed in this environment, the whole dependency closure) plus pytest and bitsandbytes, for
manylinux x86-64 — but never torch, triton or NVIDIA's CUDA libraries: a GPU machine has its own
CUDA PyTorch. ``--dry-run`` only prints the pinned list.

``make gpu-check`` (on the GPU machine, offline)::

    python tools/gpu_check.py check [--wheels .whl] [--skip-bench]

1. says so and exits 0 when PyTorch sees no CUDA device;
2. makes ``.venv-gpu`` (a virtual environment over the machine's own packages, so its CUDA PyTorch
   is used) and installs from ``.whl/`` only what is missing (bitsandbytes when its wheel is there);
3. runs the tests marked ``gpu``;
4. runs ``benchmarks/gpu.py``, which prints each figure next to the measured bf16 matmul rate.

Everything is sized to finish in under 8 minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: never downloaded: the GPU machine's PyTorch build brings these
EXCLUDED = {"torch", "triton", "pytorch-triton"}
EXCLUDED_PREFIXES = ("nvidia-",)
#: besides the runtime dependencies: what running the tests needs, and the optional 8/4-bit loading
EXTRA = ["pytest"]
OPTIONAL = ["bitsandbytes"]
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "linux_x86_64")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _excluded(name: str) -> bool:
    name = _canonical(name)
    return name in EXCLUDED or name.startswith(EXCLUDED_PREFIXES)


def runtime_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The ``[project] dependencies`` of the project (requirement strings).

    Read with a pattern rather than ``tomllib``, which Python 3.10 (a GPU image's, often) lacks."""
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", pyproject.read_text(), re.S | re.M)
    if block is None:
        raise SystemExit(f"no [project] dependencies list in {pyproject}")
    return re.findall(r'"([^"]+)"', block.group(1))


def pinned_closure(requirements: list[str], exclude: set[str] = frozenset()) -> list[str]:
    """``name==version`` of every distribution that ``requirements`` need, as installed here (the
    transitive closure through each installed distribution's own requirements, environment markers
    evaluated, extras not followed), leaving out torch, its CUDA libraries and ``exclude``."""
    from importlib import metadata

    from packaging.requirements import Requirement

    skip = {_canonical(n) for n in exclude}
    seen: dict[str, str] = {}
    missing: list[str] = []
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        name = _canonical(req.name)
        if name in seen or _excluded(name) or name in skip:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.append(req.name)
            continue
        seen[name] = dist.version
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            if sub_req.marker is None or sub_req.marker.evaluate({"extra": ""}):
                stack.append(sub_req)
    if missing:
        print(f"not installed here, so not pinned: {', '.join(sorted(set(missing)))}", file=sys.stderr)
    return [f"{n}=={v}" for n, v in sorted(seen.items())]


def download_commands(pins: list[str], optional: list[str], dest: Path, python_version: str) -> list[list[str]]:
    """One ``pip download --no-deps`` per requirement (so that nothing pulls a CUDA torch)."""
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--dest", str(dest), "--python-version", python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        base += ["--platform", platform]
    return [base + [req] for req in pins + optional]


def wheels(args: argparse.Namespace) -> int:
    exclude = set(args.exclude or ())
    pins = pinned_closure(runtime_requirements() + EXTRA, exclude)
    optional = [] if args.no_bitsandbytes else [o for o in OPTIONAL if _canonical(o) not in exclude]
    cmds = download_commands(pins, optional, Path(args.dest), args.python_version)
    if args.dry_run:
        print(f"would download {len(cmds)} wheels (no torch, triton or nvidia-*) into {args.dest} "
              f"for CPython {args.python_version}, manylinux x86-64:")
        for req in pins + optional:
            print(f"  {req}")
        return 0
    Path(args.dest).mkdir(parents=True, exist_ok=True)
    failed = []
    for cmd, req in zip(cmds, pins + optional):
        if subprocess.run(cmd).returncode != 0:
            failed.append(req)
    size = sum(p.stat().st_size for p in Path(args.dest).glob("*.whl")) / 2**20
    print(f"{len(cmds) - len(failed)} of {len(cmds)} wheels in {args.dest} ({size:.0f} MiB)")
    if failed:
        print(f"no wheel for: {', '.join(failed)} (the GPU machine must already have them)")
    return 0


# ---- the check ----------------------------------------------------------------------------------
def _cuda_report(python: str) -> tuple[bool, str]:
    """Whether ``python``'s PyTorch sees a CUDA device, and a line saying what it sees."""
    probe = ("import torch; ok = torch.cuda.is_available(); "
             "print(ok); print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, ' + "
             "(torch.cuda.get_device_name(0) if ok else 'no CUDA device'))")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if out.returncode != 0:
        return False, f"PyTorch does not import ({out.stderr.strip().splitlines()[-1:] or ['?']})"
    lines = out.stdout.strip().splitlines()
    return lines[0] == "True", lines[-1]


def _venv(path: Path) -> str:
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
                       check=True)
    return str(python)


def _install(python: str, wheel_dir: Path) -> bool:
    """Install from ``wheel_dir`` what the runtime requirements and pytest still lack (offline)."""
    reqs = runtime_requirements() + EXTRA
    # (the venv's python runs the machine's pip, which then installs into the venv)
    pip = [python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheel_dir)]
    if subprocess.run(pip + reqs).returncode != 0:
        print(f"could not install the requirements from {wheel_dir}; run `make gpu-wheels` on a machine "
              "with internet and bring the folder here")
        return False
    if any(wheel_dir.glob("bitsandbytes-*.whl")):
        if subprocess.run(pip + ["--no-deps", "bitsandbytes"]).returncode != 0:
            print("bitsandbytes did not install; the 8/4-bit tests are skipped")
    return True


def check(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ok, seen = _cuda_report(sys.executable)
    if not ok:
        print(f"gpu-check: no CUDA device here ({seen}); nothing to check.")
        return 0
    print(f"gpu-check: {seen}")
    python = _venv(ROOT / args.venv)
    if not _install(python, ROOT / args.wheels):
        return 1
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    print(f"[{time.perf_counter() - t0:5.0f} s] set up; running the tests marked gpu", flush=True)
    tests = subprocess.run([python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                           cwd=ROOT, env=env).returncode
    bench = 0
    if not args.skip_bench:
        print(f"[{time.perf_counter() - t0:5.0f} s] benchmarks/gpu.py", flush=True)
        bench = subprocess.run([python, "benchmarks/gpu.py"], cwd=ROOT, env=env).returncode
    print(f"[{time.perf_counter() - t0:5.0f} s] gpu-check done: tests {'passed' if tests == 0 else 'FAILED'}"
          + ("" if args.skip_bench else f", benchmark {'ran' if bench == 0 else 'FAILED'}"))
    return tests or bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheels", help="download the wheels a GPU machine may lack (no torch)")
    w.add_argument("--dest", default=str(ROOT / ".whl"))
    w.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="the GPU machine's Python (default: this one's)")
    w.add_argument("--exclude", nargs="*", help="distributions the GPU machine is known to have")
    w.add_argument("--no-bitsandbytes", action="store_true")
    w.add_argument("--dry-run", action="store_true", help="print the pinned list, download nothing")
    c = sub.add_parser("check", help="install what is missing, run the gpu tests and benchmarks/gpu.py")
    c.add_argument("--wheels", default=".whl")
    c.add_argument("--venv", default=".venv-gpu")
    c.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args(argv)
    return wheels(args) if args.command == "wheels" else check(args)


if __name__ == "__main__":
    sys.exit(main())
