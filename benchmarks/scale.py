"""Atlas-scale runs: throughput and peak memory per process as the number of cells grows.

``embed``: synthetic cells (random tokens of the V1 vocabulary size, 25,426; lengths drawn from the
real Genecorpus-30M cells in ``../shared/data/genecorpus30M_500_tokenized_cells.parquet``, times
``--length-scale``) are embedded into a parquet file by a small randomly initialised model
(``--layers``/``--hidden``; 4 heads, intermediate 2 x hidden) with :func:`geneformer.embeddings.embed_to_file`,
in one process and with ``torchrun --nproc_per_node 2`` (each rank on its own GPU when there are
GPUs, else on the CPU with gloo), at each ``--cells`` size. Printed per run: cells/s (wall time
of the whole job, start-up included) and each process's peak resident memory, which must stay flat
from 10k to 100k cells (only the chunk in flight is held, never all the cells).

    python benchmarks/scale.py embed --cells 10000 100000 [--ranks 1 2] [--layers 2] [--hidden 128]
        [--length-scale 1.0] [--device auto] [--batch-size N] [--workdir DIR]

The figures in the README: ``python benchmarks/scale.py embed --cells 10000 100000`` on a quiet
machine (a GPU makes the 100k-cell run minutes instead of hours).
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DATA = Path(os.environ.get("GENEFORMER_SHARED_DIR", ROOT.parent / "shared")) / "data" / \
    "genecorpus30M_500_tokenized_cells.parquet"
V1_VOCAB = 25_426


# ---- inputs ---------------------------------------------------------------------------------------
def real_lengths() -> np.ndarray:
    import pyarrow.parquet as pq

    return np.asarray(pq.read_table(DATA, columns=["length"]).column("length"), dtype=np.int64)


def make_dataset(folder: Path, n_cells: int, length_scale: float, seed: int = 0) -> Path:
    """``n_cells`` synthetic tokenized cells on disk, written in blocks (never all in memory)."""
    import datasets

    datasets.disable_progress_bars()
    pool = np.maximum(1, np.round(real_lengths() * length_scale)).astype(np.int64)

    def cells():
        rng = np.random.default_rng(seed)
        for start in range(0, n_cells, 1000):
            lens = rng.choice(pool, size=min(1000, n_cells - start))
            for L in lens.tolist():
                yield {"input_ids": rng.integers(3, V1_VOCAB, size=L, dtype=np.int32).tolist(), "length": L}

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "length": datasets.Value("int64")})
    ds = datasets.Dataset.from_generator(cells, features=features, cache_dir=str(folder / "hf-cache"))
    ds.save_to_disk(str(folder / f"cells-{n_cells}.dataset"))
    shutil.rmtree(folder / "hf-cache", ignore_errors=True)
    return folder / f"cells-{n_cells}.dataset"


def make_model(folder: Path, layers: int, hidden: int) -> Path:
    from geneformer.models import init_model

    model = init_model("Geneformer-V1-10M", num_hidden_layers=layers, hidden_size=hidden,
                       intermediate_size=2 * hidden, num_attention_heads=4)
    model.save_pretrained(folder / "model")
    return folder / "model"


# ---- one process of a run (plain python, or one torchrun rank) -------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch

    from geneformer.embeddings import embed_to_file
    from geneformer.models import load_model

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    model = load_model(args.model, device="cpu")
    t0 = time.perf_counter()
    embed_to_file(model, args.dataset, args.output, batch_size=args.batch_size, device=args.device,
                  progress=False)
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("SCALE " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "seconds": seconds,
                                 "peak_mib": peak_mib}), flush=True)


def run_embed(dataset: Path, model: Path, n_cells: int, ranks: int, args: argparse.Namespace, work: Path) -> None:
    output = work / f"embs-{n_cells}-{ranks}.parquet"
    worker_args = ["_worker", "--dataset", str(dataset), "--model", str(model), "--output", str(output),
                   "--device", args.device] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
    script = str(Path(__file__).resolve())
    if ranks == 1:
        cmd = [sys.executable, script, *worker_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               script, *worker_args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if ranks > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // ranks))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(res.stdout[-2000:] + res.stderr[-4000:])
    reports = sorted((json.loads(line[6:]) for line in res.stdout.splitlines() if line.startswith("SCALE ")),
                     key=lambda r: r["rank"])
    peaks = ", ".join(f"rank {r['rank']} {r['peak_mib']:.0f} MiB" for r in reports)
    compute = max(r["seconds"] for r in reports)
    print(f"embed {n_cells:>7} cells, {ranks} process(es): {n_cells / wall:8.1f} cells/s wall "
          f"({n_cells / compute:.1f} cells/s embedding), peak memory: {peaks}", flush=True)
    output.unlink(missing_ok=True)


def embed(args: argparse.Namespace) -> None:
    import torch

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gf-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.device_count()
    print(f"machine: {os.cpu_count()} CPUs, {cuda} CUDA device(s) "
          f"({torch.cuda.get_device_name(0) if cuda else 'CPU only'}); model: {args.layers} layers, "
          f"hidden {args.hidden}; lengths: Genecorpus x {args.length_scale} (mean "
          f"{real_lengths().mean() * args.length_scale:.0f})", flush=True)
    try:
        model = make_model(work, args.layers, args.hidden)
        for n in args.cells:
            t0 = time.perf_counter()
            dataset = make_dataset(work, n, args.length_scale)
            print(f"(made {n} synthetic cells in {time.perf_counter() - t0:.0f} s)", flush=True)
            for ranks in args.ranks:
                run_embed(dataset, model, n, ranks, args, work)
            shutil.rmtree(dataset, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="section", required=True)
    e = sub.add_parser("embed", help="embed synthetic cells in one process and with torchrun ranks")
    e.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    e.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    e.add_argument("--layers", type=int, default=2)
    e.add_argument("--hidden", type=int, default=128)
    e.add_argument("--length-scale", type=float, default=1.0, help="multiply the real lengths (e.g. 0.1 on a CPU)")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--workdir", default=None)
    w = sub.add_parser("_worker")  # one process of a run
    w.add_argument("--dataset", required=True)
    w.add_argument("--model", required=True)
    w.add_argument("--output", required=True)
    w.add_argument("--device", default="auto")
    w.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    {"embed": embed, "_worker": worker}[args.section](args)


if __name__ == "__main__":
    main()
