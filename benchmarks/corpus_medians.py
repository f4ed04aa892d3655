"""Throughput of the readers and of gene median estimation on PBMC3k written in every format.

Usage: python benchmarks/corpus_medians.py [--data ../shared/data] [--repeat N]
Prints cells/s per reader (full pass in chunks) and per median mode (exact, t-digest).
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import argparse
import tempfile
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import scipy.io
import scipy.sparse as sp

from geneformer.vocab import compute_gene_digests
from geneformer.io import open_reader


def write_formats(a: ad.AnnData, d: Path) -> dict[str, Path]:
    out = {"h5ad": d / "x.h5ad", "zarr": d / "x.zarr", "loom": d / "x.loom", "10x_h5": d / "x.h5", "mtx": d / "mtx"}
    a.write_h5ad(out["h5ad"])
    a.write_zarr(out["zarr"])
    a.write_loom(out["loom"])
    x = a.X.tocsr()
    with h5py.File(out["10x_h5"], "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(a.obs_names, dtype="S")
        g.create_dataset("data", data=x.data.astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=x.indices.astype(np.int64), compression="gzip")
        g["indptr"] = x.indptr.astype(np.int64)
        g["shape"] = np.array([x.shape[1], x.shape[0]], dtype=np.int32)
        fe = g.create_group("features")
        fe["id"] = np.array(a.var["ensembl_id"].astype(str), dtype="S")
        fe["name"] = np.array(a.var_names, dtype="S")
        fe["feature_type"] = np.array(["Gene Expression"] * a.n_vars, dtype="S")
    out["mtx"].mkdir()
    scipy.io.mmwrite(out["mtx"] / "matrix.mtx", sp.coo_matrix(x.T), field="integer")
    (out["mtx"] / "features.tsv").write_text(
        "".join(f"{i}\t{n}\tGene Expression\n" for i, n in zip(a.var["ensembl_id"].astype(str), a.var_names)))
    (out["mtx"] / "barcodes.tsv").write_text("".join(f"{b}\n" for b in a.obs_names))
    return out


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    a = ad.read_h5ad(Path(args.data) / "pbmc3k_raw_seurat_labels.h5ad")
    a.X = sp.csr_matrix(a.X)
    n = a.n_obs
    print(f"PBMC3k: {n} cells × {a.n_vars} genes, {a.X.nnz} non-zeros")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_formats(a, Path(tmp))
        for fmt, path in files.items():
            def read_all(path=path):
                with open_reader(path) as r:
                    for _ in r.iter_counts(512):
                        pass
            t = best_of(read_all, args.repeat)
            print(f"read {fmt:7s} {n / t:12,.0f} cells/s  ({t:.3f} s)")
        for label, kw in (("exact", {"exact": True}), ("t-digest", {"exact": False})):
            t = best_of(lambda kw=kw: compute_gene_digests(files["h5ad"], progress=False, **kw).medians(), args.repeat)
            print(f"medians {label:8s} {n / t:10,.0f} cells/s  ({t:.3f} s)")


if __name__ == "__main__":
    main()
