"""The CPU path under contention: cell embeddings alone and beside competing CPU-bound processes.

Each measurement runs in a fresh child process (thread settings are fixed when the OpenMP runtime
loads), embedding the first ``--ncells`` real Genecorpus-30M cells of
``../shared/data/genecorpus30M_500_tokenized_cells.parquet`` with a randomly initialised
Geneformer-V1-10M-sized model (as ``benchmarks/embed.py``), in fp32 on the CPU:

- ``old``: the thread settings before this change: torch imported first (OpenMP's default
  spin-then-sleep barriers) with torch's own thread count;
- ``new``: ``geneformer`` imported first (``geneformer._utils.limit_cpu_threads``: waiting threads
  sleep, threads = the CPUs the process may use by affinity mask and cgroup quota).

Each setting is timed alone and beside ``--competitors`` busy-looping Python processes (default:
one per usable CPU, i.e. a load of about twice the cores). Printed per run: wall seconds, CPU
seconds of the embedding process (spinning shows up as CPU time that does no work), and the
slowdown against the same setting alone next to the slowdown a fair share of the CPUs explains,
``(our threads + competitors) / CPUs``. Other tenants' load moves every figure: run it on a quiet
machine, and repeat (``--repeats``) to see the spread.

    python benchmarks/contention.py [--ncells 64] [--competitors N] [--settings old new] [--repeats 1]
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GENEFORMER_SHARED_DIR", ROOT.parent / "shared")) / "data" / \
    "genecorpus30M_500_tokenized_cells.parquet"
#: the variables limit_cpu_threads sets; removed from the children's environment so that "old"
#: sees what a process saw before it (the user's own values are kept)
THREAD_VARS = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_USER_SET = {k for k in THREAD_VARS if k in os.environ}


def child(settings: str, ncells: int) -> None:
    """One measurement (run in a fresh process); prints a JSON line."""
    import resource

    sys.path.insert(0, str(ROOT / "src"))
    if settings == "old":
        import torch  # first: OpenMP starts with its default wait policy
    else:
        import geneformer  # noqa: F401  (first: sets the thread defaults before OpenMP loads)
    policy = os.environ.get("OMP_WAIT_POLICY", "(default)")  # what the OpenMP runtime saw
    import pandas as pd
    import torch

    from geneformer.data import as_sequences
    from geneformer.embeddings import cell_embeddings
    from geneformer.models import init_model

    if settings == "old":
        torch.set_num_threads(os.cpu_count() or 1)  # torch's default before the cap
    seqs = as_sequences(pd.read_parquet(DATA, columns=["input_ids"])["input_ids"].tolist()[:ncells])
    model = init_model("Geneformer-V1-10M", seed=0)
    cell_embeddings(model, as_sequences([seqs.row(0)[:256]]), progress=False, device="cpu")  # warm-up
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cell_embeddings(model, seqs, progress=False, device="cpu")
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"wall": wall, "cpu": cpu, "threads": torch.get_num_threads(),
                      "wait_policy": policy}))


def measure(settings: str, ncells: int, competitors: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS or k in _USER_SET}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        out = subprocess.run([sys.executable, __file__, "--child", settings, "--ncells", str(ncells)],
                             env=env, capture_output=True, text=True, check=False)
    finally:
        for p in hogs:  # only the processes started here
            p.kill()
            p.wait()
    if out.returncode != 0:
        sys.exit(f"measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ncells", type=int, default=64)
    ap.add_argument("--competitors", type=int, default=None, help="busy processes (default: usable CPUs)")
    ap.add_argument("--settings", nargs="+", default=["old", "new"], choices=["old", "new"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.ncells)
        return
    if not DATA.is_file():
        sys.exit(f"{DATA} not found (the ../shared reference folder).")
    sys.path.insert(0, str(ROOT / "src"))
    from geneformer._utils._device import cgroup_cpu_quota, usable_cpus  # light: no torch

    cpus = usable_cpus()
    k = cpus if args.competitors is None else args.competitors
    print(f"{os.cpu_count()} CPUs on the machine, {cpus} usable by this process (cgroup quota: "
          f"{cgroup_cpu_quota()}); load average before: {os.getloadavg()[0]:.1f}; {args.ncells} cells, "
          f"{k} competing busy processes")
    print(f"{'settings':<8} {'competitors':>11} {'threads':>7} {'wait policy':>11} {'wall s':>8} {'CPU s':>7} "
          f"{'cells/s':>8} {'slowdown':>9} {'fair share':>10}")
    for _ in range(args.repeats):
        for s in args.settings:
            alone = measure(s, args.ncells, 0)
            busy = measure(s, args.ncells, k)
            for n, r in ((0, alone), (k, busy)):
                fair = max(1.0, (r["threads"] + n) / cpus) if n else 1.0
                print(f"{s:<8} {n:>11d} {r['threads']:>7d} {r['wait_policy']:>11} {r['wall']:>8.2f} "
                      f"{r['cpu']:>7.2f} {args.ncells / r['wall']:>8.2f} {r['wall'] / alone['wall']:>8.2f}x "
                      f"{fair:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
