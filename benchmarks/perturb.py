"""In silico perturbation throughput, and the statistics on its output.

Usage: python benchmarks/perturb.py [--shared ../shared] [--threads N] [--skip-10m] [--device cpu|cuda]
                                    [--genecorpus-perturbations N] [--only-genecorpus]

Runs, with the mini-V1 fixture model and a randomly initialised model of the Geneformer-V1-10M
architecture (6 layers, hidden 256, 4 heads, intermediate 512, 2,048 positions, V1 vocabulary):

1. delete-all on the 3 pbmc3k cells of the reference's golden run (max_ncells=3, cell_and_gene);
2. a 20-gene list (the 20 genes present in most cells) deleted together in 50 cells (cell_and_gene);
3. goal-state delete-all on 4 Kang cells (mini-V2, cls; the golden run's settings);
4. InSilicoPerturberStats on the delete-all output: aggregate_gene_shifts (gene-level, the
   reference's 879 s step) and mixture_model;
5. the realistic case: delete-all of the longest real Genecorpus-30M cell (2,048 genes, from
   ``data/genecorpus30M_500_tokenized_cells.parquet``) with the random Geneformer-V1-10M model, in
   fp32 and in bf16, through the perturbation engine (emb_mode "cell"); the first
   ``--genecorpus-perturbations`` genes (default 256; 2,048 is the whole cell) of the cell, each
   perturbed sequence 2,047 genes long as in the whole run. Printed: perturbations/s, achieved
   GFLOP/s and its share of the fp32 / bf16 matmul rate measured just before and after each run
   (2,048² products back to back for 2 s; the mean of the two). The dtypes alternate
   (fp32 bf16 fp32 bf16 with ``--genecorpus-repeats 2``), so that a change of load on a shared
   machine hits both alike. The reference runs this case at ~0.4 perturbations/s on 2 cores (fp32).

Reference times on a 2-core CPU (golden/README.md): delete-all of 3 cells with mini-V1 244 s,
20-cell delete list 10.0 s, goal-state delete-all of 4 Kang cells 58.5 s, aggregate_gene_shifts 879 s.
The machine's load average is printed: on a shared 2-core machine a busy neighbour makes
multi-threaded BLAS much slower (try --threads 1).
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402
KANG_STATES = {"state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": []}
REFERENCE = {"delete_all_3": 244.0, "delete_list_20": 10.0, "kang_goal_4": 58.5, "aggregate_gene_shifts": 879.0}


def _top_genes(dataset_path: Path, n: int) -> list[str]:
    """Ensembl IDs of the ``n`` genes present in most cells."""
    import datasets

    from geneformer.vocab import GeneVocab

    ds = datasets.load_from_disk(str(dataset_path))
    counts = np.bincount(np.concatenate([np.asarray(x) for x in ds["input_ids"]]).astype(np.int64))
    inv = GeneVocab.load("V1").id_to_token
    return [inv[int(t)] for t in np.argsort(-counts)[:n]]


def run(label: str, model, data, out: Path, n_ref: str | None = None, **kw) -> tuple[float, int]:
    from geneformer.compat import InSilicoPerturber
    from geneformer.perturb import read_results

    if out.exists():
        shutil.rmtree(out)
    isp = InSilicoPerturber(progress=False, forward_batch_size=None, **kw)
    t0 = time.perf_counter()
    path = isp.perturb_data(model, data, out, "bench")
    dt = time.perf_counter() - t0
    df = read_results(path)
    cell_rows = df[df["affected"].isna()]
    n_pert = len(cell_rows) // max(1, cell_rows["state"].nunique())
    ref = REFERENCE.get(n_ref or "")
    speed = f"   reference {ref:.1f} s -> {ref / dt:5.1f}x" if ref else ""
    print(f"{label:<52s} {dt:8.2f} s  {n_pert:6d} perturbations  {n_pert / dt:8.1f} /s{speed}", flush=True)
    return dt, n_pert


def genecorpus(shared: Path, device: str, n_pert: int, repeats: int) -> None:
    """Case 5: delete-all of a real 2,048-gene cell with a V1-10M-architecture model, fp32 and bf16."""
    import pandas as pd
    import torch

    from geneformer.models import init_model

    rates = _isolate.sibling("_rates")
    cells = pd.read_parquet(shared / "data" / "genecorpus30M_500_tokenized_cells.parquet", columns=["input_ids"])
    cell = np.asarray(max(cells["input_ids"], key=len), dtype=np.int64)
    model = init_model("Geneformer-V1-10M", seed=0).to(device)
    totals = {torch.float32: [0, 0.0, 0.0, 0.0], torch.bfloat16: [0, 0.0, 0.0, 0.0]}
    for _ in range(repeats):
        for dtype, acc in totals.items():
            before = rates.matmul_rate(dtype, device, n=2048, seconds=2)
            n, seconds, flops, _ = rates.delete_all(model, cell, False, device, dtype, n_pert)
            after = rates.matmul_rate(dtype, device, n=2048, seconds=2)
            acc[0] += n
            acc[1] += seconds
            acc[2] += flops
            acc[3] += (before + after) / 2 / repeats
    for dtype, (n, seconds, flops, rate) in totals.items():
        label = "fp32" if dtype == torch.float32 else "bf16"
        print(f"random Geneformer-V1-10M: delete all, real {len(cell):,}-gene cell, {label}: {n} perturbations "
              f"in {seconds:.1f} s, {n / seconds:6.2f} /s (reference fp32 ~0.4 /s on 2 cores), "
              f"{rates.share(flops, seconds, rate)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--skip-10m", action="store_true", help="only the mini models")
    ap.add_argument("--genecorpus-perturbations", type=int, default=256,
                    help="genes of the 2,048-gene cell deleted in the realistic case (0: skip it)")
    ap.add_argument("--genecorpus-repeats", type=int, default=1, help="fp32/bf16 rounds of the realistic case")
    ap.add_argument("--only-genecorpus", action="store_true", help="only the realistic case")
    args = ap.parse_args()

    import torch

    os.environ.setdefault("GENEFORMER_DICTS_DIR", str(args.shared / "dicts"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from geneformer.compat import InSilicoPerturberStats
    from geneformer.models import init_model, load_model

    gold = args.shared / "golden"
    pbmc = gold / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"
    kang = gold / "tokenized" / "kang2018_ifnb_harmony_2k_V2.dataset"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f}, device {args.device or 'auto'}")
    if args.genecorpus_perturbations:
        genecorpus(args.shared, args.device or "cpu", args.genecorpus_perturbations, args.genecorpus_repeats)
    if args.only_genecorpus:
        return
    tmp = Path(tempfile.mkdtemp(prefix="gf-bench-perturb-"))
    try:
        genes20 = _top_genes(pbmc, 20)
        models = [("mini-V1", load_model(gold / "models" / "mini-V1", device=args.device or "cpu"))]
        if not args.skip_10m:
            models.append(("random Geneformer-V1-10M", init_model("Geneformer-V1-10M", seed=0)))
        for name, model in models:
            # nproc=None keeps the threads chosen above (the class's default would set min(4, CPUs))
            common = dict(model_version="V1", emb_mode="cell_and_gene", device=args.device, nproc=args.threads)
            run(f"{name}: delete all, 3 cells", model, pbmc, tmp / f"{name}_all",
                "delete_all_3" if name == "mini-V1" else None, genes_to_perturb="all", max_ncells=3, **common)
            run(f"{name}: 20-gene list deleted together, 50 cells", model, pbmc, tmp / f"{name}_list",
                genes_to_perturb=genes20, max_ncells=50, **common)
        mini_v2 = load_model(gold / "models" / "mini-V2", device=args.device or "cpu")
        run("mini-V2: goal-state delete all, 4 Kang cells (cls)", mini_v2, kang, tmp / "kang", "kang_goal_4",
            genes_to_perturb="all", emb_mode="cls", cell_states_to_model=KANG_STATES,
            state_embs_dict=gold / "embeddings" / "kang_V2_state_embs.pkl", max_ncells=4, model_version="V2",
            device=args.device, nproc=args.threads)

        folder = tmp / "mini-V1_all"
        for mode in ("aggregate_gene_shifts", "mixture_model"):
            stats = InSilicoPerturberStats(mode=mode, model_version="V1")
            t0 = time.perf_counter()
            df = stats.get_stats(folder, None, tmp / "stats", mode)
            dt = time.perf_counter() - t0
            ref = REFERENCE.get(mode)
            speed = f"   reference {ref:.0f} s -> {ref / dt:5.1f}x" if ref else ""
            print(f"stats {mode} on the 3-cell delete-all output{'':<9s} {dt:8.2f} s  {len(df):,} rows{speed}",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
