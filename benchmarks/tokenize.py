"""Tokenizer throughput and memory on a synthetic 10x-like corpus.

Generates raw-count h5ad files of 20,000 genes (the first 20,000 V2 vocabulary genes) with ~2,500
non-zero genes per cell, then tokenizes them (V2, nproc workers) in a child process while sampling
the memory (PSS) of the whole process tree. Prints cells/s and peak memory for each size, to show
that memory stays flat as the cell count grows, and the incremental rate between the sizes.

    python benchmarks/tokenize.py [--cells 10000 100000] [--nproc 2]

Needs the published dictionaries: GENEFORMER_DICTS_DIR (default ../shared/dicts).
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import os  # noqa: E402
import sys  # noqa: E402
import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "output"
N_GENES = 20_000
DENSITY = 2_500 / N_GENES


def make_h5ad(path: Path, n_cells: int, seed: int = 0, chunk: int = 2_000) -> None:
    """Write a CSR raw-count h5ad chunk by chunk (never the whole matrix in memory)."""
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    from geneformer.vocab import GeneVocab

    genes = GeneVocab.load("V2").genes[:N_GENES]
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        g = f.create_group("X")
        g.attrs["encoding-type"], g.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        g.attrs["shape"] = (n_cells, N_GENES)
        data = g.create_dataset("data", (0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
        indices = g.create_dataset("indices", (0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
        indptr = [0]
        totals = []
        for s in range(0, n_cells, chunk):
            n = min(chunk, n_cells - s)
            mask = rng.random((n, N_GENES), dtype=np.float32) < DENSITY
            r, c = np.nonzero(mask)
            vals = (rng.negative_binomial(1, 0.35, size=len(r)) + 1).astype(np.int32)
            old = data.shape[0]
            data.resize((old + len(vals),))
            indices.resize((old + len(vals),))
            data[old:] = vals
            indices[old:] = c.astype(np.int32)
            per_row = np.bincount(r, minlength=n)
            indptr.extend((old + np.cumsum(per_row)).tolist())
            totals.append(np.bincount(r, weights=vals, minlength=n))
        g.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))
        n_counts = np.concatenate(totals)
        obs = pd.DataFrame({"n_counts": n_counts, "cell_id": [f"cell{i}" for i in range(n_cells)]},
                           index=[str(i) for i in range(n_cells)])
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame({"ensembl_id": genes}, index=genes))
        for k in ("obsm", "varm", "layers", "uns", "obsp", "varp"):
            f.create_group(k)
    os.replace(tmp, path)


# run in a fresh interpreter (not a multiprocessing child, which would re-run this script and fail
# to import _isolate once benchmarks/ is off the path)
_TOKENIZE = """
import sys
from geneformer.tokenization import tokenize_files

path, out, nproc = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenize_files([path], out, "V2", nproc=nproc, custom_attr_name_dict={"cell_id": "cell_id"},
               overwrite=True, progress=False)
"""


def _tree_rss(pid: int) -> int:
    """Memory of a process and its workers: proportional set size, so pages that forked workers
    share with their parent count once (a plain RSS sum would count them once per process)."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def measure_child(args: list[str]) -> tuple[float, float]:
    """Run ``python -P -c *args`` in a clean child (its memory is the job's alone): seconds and the
    peak PSS of its process tree in MiB."""
    peak = 0
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-P", "-c", *args])
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the benchmark child failed with exit code {proc.returncode}")
    return elapsed, peak / 2**20


def run(path: Path, nproc: int) -> tuple[float, float]:
    out = OUT / (path.stem + ".dataset")
    result = measure_child([_TOKENIZE, str(path), str(out), str(nproc)])
    shutil.rmtree(out, ignore_errors=True)
    return result


def size_series(cells: list[int], input_of: Callable[[int], Path], make: Callable[[Path, int], None],
                measure: Callable[[Path], tuple[float, float]]) -> None:
    """One row per size (inputs made once and kept), then the incremental rate between the sizes."""
    runs = []
    for n in cells:
        path = input_of(n)
        if not path.exists():
            t = time.perf_counter()
            make(path, n)
            print(f"  (generated {path.name} in {time.perf_counter() - t:.1f}s)", file=sys.stderr)
        secs, rss = measure(path)
        runs.append((n, secs))
        print(f"{n:>8} {secs:>8.1f} {n / secs:>9.0f} {rss:>13.0f}")
    if len(runs) > 1:
        (n1, t1), (n2, t2) = runs[0], runs[-1]
        # the difference removes the fixed cost of starting Python, imports and loading the dictionaries
        print(f"incremental rate {n1}->{n2} cells: {(n2 - n1) / (t2 - t1):.0f} cells/s "
              f"(fixed start-up cost ~{t1 - n1 * (t2 - t1) / (n2 - n1):.1f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("GENEFORMER_DICTS_DIR", str(ROOT.parent / "shared" / "dicts"))
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{'cells':>8} {'seconds':>8} {'cells/s':>9} {'peak PSS MiB':>13}  (nproc={args.nproc}, "
          f"{N_GENES} genes, ~{int(DENSITY * N_GENES)} non-zero per cell, V2)")
    size_series(args.cells, lambda n: OUT / f"synthetic_{n}.h5ad", make_h5ad, lambda p: run(p, args.nproc))


if __name__ == "__main__":
    main()
