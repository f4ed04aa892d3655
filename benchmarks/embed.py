"""Cell-embedding throughput of a Geneformer-V1-10M-sized model on 500 real Genecorpus-30M cells.

A randomly initialised model with the Geneformer-V1-10M architecture (6 layers, hidden 256, 4 heads,
intermediate 512, 2,048 inputs, vocabulary 25,426) embeds the cells of
``../shared/data/genecorpus30M_500_tokenized_cells.parquet`` in fp32 and in bf16 (autocast). Printed:
cells/s, achieved GFLOP/s (matmul FLOPs of the layers actually run, real tokens only), this machine's
fp32/bf16 matmul GFLOP/s measured in the same run, and the cosine distance between the bf16 and fp32
embeddings.

    python benchmarks/embed.py [--ncells 500] [--batch-size N] [--threads N] [--emb-layer -1]
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from geneformer.embeddings import cell_embeddings  # noqa: E402
from geneformer.inference import as_sequences  # noqa: E402
from geneformer.models import init_model, layer_index  # noqa: E402

DATA = Path(os.environ.get("GENEFORMER_SHARED_DIR", ROOT.parent / "shared")) / "data" / \
    "genecorpus30M_500_tokenized_cells.parquet"


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    """Best-of-``reps`` square matmul rate (GFLOP/s) for ``dtype``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def model_flops(lengths: np.ndarray, layers: int, hidden: int, inter: int) -> float:
    """Matmul FLOPs of ``layers`` BERT layers over cells of the given lengths (padding not counted).

    Per layer and cell of length L: Q, K, V, output projections 4·2·L·H², feed-forward 2·2·L·H·I,
    attention scores and weighted values 2·2·L²·H.
    """
    L = lengths.astype(np.float64)
    per_layer = 8 * L * hidden**2 + 4 * L * hidden * inter + 4 * L**2 * hidden
    return float(layers * per_layer.sum())


def timed_embeddings(model, seqs, **kw) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    embs = cell_embeddings(model, seqs, progress=False, **kw)
    return embs, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ncells", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=None, help="cells per batch (default: automatic)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--emb-layer", type=int, default=-1)
    args = ap.parse_args()

    import pandas as pd

    if not DATA.is_file():
        sys.exit(f"{DATA} not found (the ../shared reference folder).")
    torch.set_num_threads(args.threads)
    table = pd.read_parquet(DATA, columns=["input_ids"])
    seqs = as_sequences(table["input_ids"].tolist()[: args.ncells])
    model = init_model("Geneformer-V1-10M", seed=0)
    cfg = model.config
    layers = layer_index(model, args.emb_layer)
    flops = model_flops(seqs.lengths, layers, cfg.hidden_size, cfg.intermediate_size)
    kw = dict(emb_layer=args.emb_layer, batch_size=args.batch_size, device="cpu")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"{len(seqs)} cells, {int(seqs.lengths.min())}-{int(seqs.lengths.max())} tokens; model: "
          f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
          f"running {layers} layers (emb_layer {args.emb_layer}); {flops / 1e9:,.0f} GFLOP per pass")

    mm32_a, mm16_a = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    # warm-up: kernel selection and allocator
    warm = as_sequences([seqs.row(i) for i in range(2)])
    cell_embeddings(model, warm, progress=False, batch_size=2)
    cell_embeddings(model, warm, progress=False, batch_size=2, amp_dtype="bf16")

    e32, t32 = timed_embeddings(model, seqs, **kw)
    e16, t16 = timed_embeddings(model, seqs, amp_dtype="bf16", **kw)
    mm32_b, mm16_b = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    # the other core may be busy: compare against the mean of the rates measured before and after
    mm32, mm16 = (mm32_a + mm32_b) / 2, (mm16_a + mm16_b) / 2

    cos = (e32 * e16).sum(1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e16, axis=1))
    dist = 1.0 - cos
    g32, g16 = flops / t32 / 1e9, flops / t16 / 1e9
    print(f"matmul GFLOP/s (2048^2, best of 6; before/after/mean): fp32 {mm32_a:.1f}/{mm32_b:.1f}/{mm32:.1f}, "
          f"bf16 {mm16_a:.1f}/{mm16_b:.1f}/{mm16:.1f}")
    print(f"fp32: {len(seqs) / t32:.2f} cells/s, {t32:.1f} s, {g32:.1f} GFLOP/s = {100 * g32 / mm32:.0f}% of fp32 matmul "
          f"(goal >= 80%: {'met' if g32 >= 0.8 * mm32 else 'NOT met'})")
    print(f"bf16: {len(seqs) / t16:.2f} cells/s, {t16:.1f} s, {g16:.1f} GFLOP/s = {100 * g16 / mm16:.0f}% of bf16 matmul "
          f"(goal >= 60%: {'met' if g16 >= 0.6 * mm16 else 'NOT met'})")
    print(f"bf16 vs fp32 cosine distance: max {dist.max():.2e}, mean {dist.mean():.2e} "
          f"(goal <= 1e-3: {'met' if dist.max() <= 1e-3 else 'NOT met'})")


if __name__ == "__main__":
    main()
