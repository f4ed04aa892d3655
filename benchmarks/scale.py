"""Atlas scale: throughput and peak memory of the long jobs as the number of cells grows.

Sections (sub-commands; each prints its own table):

    python benchmarks/scale.py embed [--cells 10000 100000] [--ranks 1 2] [--layers 2] [--hidden 128]
            [--length-scale 1.0] [--device auto] [--batch-size N] [--workdir DIR]
        embed synthetic cells (random tokens of the V1 vocabulary size, 25,426; lengths drawn from
        the real Genecorpus-30M cells in ../shared/data, times --length-scale) into a parquet file
        with a small randomly initialised model (embeddings.embed_to_file), in one process and with
        torchrun --nproc_per_node 2 (each rank on its own GPU when there are GPUs, else the CPU with
        gloo): cells/s (wall time, start-up included) and each process's peak resident memory,
        which must stay flat from 10k to 100k cells (only the chunk in flight is held).

    python benchmarks/scale.py tokenize-soma [--cells 10000 100000] [--chunk-size 512]
        tokenize a synthetic TileDB-SOMA experiment (the Census format; 20,000 V2 genes, ~2,500
        non-zero per cell, built from a synthetic h5ad with tiledbsoma.io.from_h5ad) in a clean
        child process, sampling its memory (PSS): cells/s and peak MiB per size, which must stay
        flat as the cells grow.

Needs the published dictionaries: GENEFORMER_DICTS_DIR (default ../shared/dicts), and tiledbsoma
(``pip install 'geneformer[soma]'``). Synthetic inputs are kept in benchmarks/output/ for reruns.
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "output"
sys.path.insert(0, str(ROOT / "src"))

DATA = Path(os.environ.get("GENEFORMER_SHARED_DIR", ROOT.parent / "shared")) / "data" / \
    "genecorpus30M_500_tokenized_cells.parquet"
V1_VOCAB = 25_426


def _tokenize_bench():
    """benchmarks/tokenize.py as a module (its synthetic corpus and memory sampling), by path:
    the name ``tokenize`` would be the standard library's."""
    spec = importlib.util.spec_from_file_location("bench_tokenize", ROOT / "benchmarks" / "tokenize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- tokenize-soma ------------------------------------------------------------------------------
_TOKENIZE_SOMA = """
import sys
from geneformer.tokenization import tokenize_files

uri, out, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenize_files([uri], out, "V2", chunk_size=chunk, custom_attr_name_dict={"cell_id": "cell_id"},
               reader_options={"var_id_column": "ensembl_id"}, overwrite=True, progress=False)
"""


def make_soma(uri: Path, n_cells: int) -> None:
    """A synthetic SOMA experiment of ``n_cells``: an h5ad written chunk by chunk, then ingested."""
    import tiledbsoma.io

    h5ad = OUT / f"synthetic_{n_cells}.h5ad"
    if not h5ad.exists():
        _tokenize_bench().make_h5ad(h5ad, n_cells)
    tmp = uri.with_name(uri.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tiledbsoma.io.from_h5ad(str(tmp), str(h5ad), measurement_name="RNA", X_layer_name="raw")
    os.replace(tmp, uri)


def tokenize_soma(args: argparse.Namespace) -> None:
    bench = _tokenize_bench()

    def measure(uri: Path) -> tuple[float, float]:
        out = uri.with_name(uri.stem + "_soma.dataset")
        result = bench.measure_child([_TOKENIZE_SOMA, str(uri), str(out), str(args.chunk_size)])
        shutil.rmtree(out, ignore_errors=True)
        return result

    print(f"{'cells':>8} {'seconds':>8} {'cells/s':>9} {'peak PSS MiB':>13}  (SOMA experiment, chunk "
          f"{args.chunk_size}, 20000 genes, ~2500 non-zero per cell, V2, one process)")
    bench.size_series(args.cells, lambda n: OUT / f"synthetic_{n}.soma", make_soma, measure)


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


# ---- sections ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="section", required=True)
    p = sub.add_parser("tokenize-soma", help="tokenize a synthetic SOMA experiment")
    p.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--chunk-size", type=int, default=512)
    p.set_defaults(run=tokenize_soma)
    e = sub.add_parser("embed", help="embed synthetic cells in one process and with torchrun ranks")
    e.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    e.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    e.add_argument("--layers", type=int, default=2)
    e.add_argument("--hidden", type=int, default=128)
    e.add_argument("--length-scale", type=float, default=1.0, help="multiply the real lengths (e.g. 0.1 on a CPU)")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--workdir", default=None)
    e.set_defaults(run=embed)
    w = sub.add_parser("_worker")  # one process of an embed run
    w.add_argument("--dataset", required=True)
    w.add_argument("--model", required=True)
    w.add_argument("--output", required=True)
    w.add_argument("--device", default="auto")
    w.add_argument("--batch-size", type=int, default=None)
    w.set_defaults(run=worker)
    args = ap.parse_args()
    os.environ.setdefault("GENEFORMER_DICTS_DIR", str(ROOT.parent / "shared" / "dicts"))
    OUT.mkdir(parents=True, exist_ok=True)
    args.run(args)


if __name__ == "__main__":
    main()
