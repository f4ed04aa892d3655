"""Atlas scale: throughput and peak memory of the long jobs as the number of cells grows.

Sections (sub-commands; each prints its own table):

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
import os  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "output"


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


# ---- sections ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="section", required=True)
    p = sub.add_parser("tokenize-soma", help="tokenize a synthetic SOMA experiment")
    p.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--chunk-size", type=int, default=512)
    p.set_defaults(run=tokenize_soma)
    args = ap.parse_args()
    os.environ.setdefault("GENEFORMER_DICTS_DIR", str(ROOT.parent / "shared" / "dicts"))
    OUT.mkdir(parents=True, exist_ok=True)
    args.run(args)


if __name__ == "__main__":
    main()
