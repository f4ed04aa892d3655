"""Time every InSilicoPerturberStats mode on the reference's perturbation outputs.

Usage: python benchmarks/perturb_stats.py [--shared ../shared] [--genes-per-cell N]

The golden folders keep only the cell-level pickles of the 3-cell delete-all run, so a gene-level
dictionary of the same shape is synthesised for ``aggregate_gene_shifts``: for every cell, each of
its genes (the keys of its cell-level files) paired with every other gene of that cell (random
cosines). The reference took 879 s for ``aggregate_gene_shifts`` on that run. ``--genes-per-cell``
synthesises 3 cells of N genes instead (e.g. 2000: ~12 M values).
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import argparse
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KANG_STATES = {"state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": []}
LIST_GENES = ["ENSG00000198851", "ENSG00000090382", "ENSG00000156738"]


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    print(f"{label:<58s} {dt:8.2f} s   ({len(out):,} rows)", flush=True)
    return out


def synth_gene_level(cell_folder: Path, out: Path, genes_per_cell: int | None, seed: int = 0) -> int:
    """Write cell-level + synthetic gene-level pickles shaped like a delete-all run; returns n values."""
    from geneformer.perturb import load_raw, save_raw

    rng = np.random.default_rng(seed)
    cells: dict[int, list[int]] = defaultdict(list)
    if genes_per_cell is None:
        for path in sorted(cell_folder.glob("*_raw.pickle")):
            h = int(re.search(r"_(\d+)batch-?\d+_raw", path.name).group(1))
            obj = load_raw(path)
            cells[h] += [int(k[0]) for k in obj]
            save_raw(obj, out / path.name)  # the cell-level results beside the gene-level ones
    else:
        for h in range(3):
            toks = rng.choice(np.arange(2, 25_000), size=genes_per_cell, replace=False)
            cells[h] = toks.tolist()
            save_raw(defaultdict(list, {(t, "cell_emb"): [float(rng.uniform(0.9, 1))] for t in cells[h]}),
                     out / f"in_silico_delete_synth_dict_cell_embs_{h}batch0_raw.pickle")
    n_values = 0
    for h, toks in cells.items():
        n = len(toks)
        vals = rng.uniform(0.8, 1.0, size=n * (n - 1)).tolist()
        it = iter(vals)
        gene = defaultdict(list)
        for g in toks:
            for a in toks:
                if a != g:
                    gene[(g, a)] = [next(it)]
        save_raw(gene, out / f"in_silico_delete_synth_dict_gene_embs_{h}batch0_raw.pickle")
        n_values += n * (n - 1)
        del gene, vals
    return n_values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_shared = Path(os.environ.get("GENEFORMER_SHARED_DIR", HERE.parent.parent / "shared"))
    ap.add_argument("--shared", type=Path, default=default_shared)
    ap.add_argument("--genes-per-cell", type=int, default=None)
    args = ap.parse_args()
    golden = args.shared / "golden" / "perturb"
    if not golden.is_dir():
        raise SystemExit(f"{golden} not found; pass --shared to the shared reference folder.")
    os.environ.setdefault("GENEFORMER_DICTS_DIR", str(args.shared / "dicts"))

    from geneformer.compat import InSilicoPerturberStats

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        S = InSilicoPerturberStats
        timed("goal_state_shift  V2_kang_goal_delete_all (4 cells)", lambda: S(
            mode="goal_state_shift", cell_states_to_model=KANG_STATES, model_version="V2"
        ).get_stats(golden / "V2_kang_goal_delete_all", None, tmp, "goal"))
        timed("mixture_model     V1_delete_all (3 cells)", lambda: S(mode="mixture_model", model_version="V1")
              .get_stats(golden / "V1_delete_all", None, tmp, "mix"))
        timed("vs_null           V1_delete_all vs itself", lambda: S(mode="vs_null", model_version="V1")
              .get_stats(golden / "V1_delete_all", golden / "V1_delete_all", tmp, "null"))
        timed("aggregate_data    V1_delete_list (20 cells)", lambda: S(
            mode="aggregate_data", genes_perturbed=LIST_GENES, model_version="V1"
        ).get_stats(golden / "V1_delete_list", None, tmp, "data"))
        timed("aggregate_gene_shifts V1_delete_list (20 cells)", lambda: S(
            mode="aggregate_gene_shifts", genes_perturbed=LIST_GENES, model_version="V1"
        ).get_stats(golden / "V1_delete_list", None, tmp, "agg_list"))

        synth = tmp / "synth"
        synth.mkdir()
        t0 = time.perf_counter()
        n = synth_gene_level(golden / "V1_delete_all", synth, args.genes_per_cell)
        size = sum(p.stat().st_size for p in synth.iterdir()) / 1e6
        print(f"(synthesised {n:,} gene-level values, {size:.0f} MB of pickles, in {time.perf_counter() - t0:.1f} s)")
        what = "3 golden cells" if args.genes_per_cell is None else f"3 cells x {args.genes_per_cell} genes"
        df = timed(f"aggregate_gene_shifts delete-all, {what}", lambda: S(
            mode="aggregate_gene_shifts", model_version="V1").get_stats(synth, None, tmp, "agg_all"))
        t0 = time.perf_counter()
        df.to_csv(tmp / "again.csv")
        print(f"(of which writing the {(tmp / 'agg_all.csv').stat().st_size / 1e6:.0f} MB CSV with pandas: "
              f"~{time.perf_counter() - t0:.1f} s; reference: 879 s for the 3-cell delete-all, 160 MB CSV)")


if __name__ == "__main__":
    main()
