"""GPU throughput: embeddings, in silico perturbation and pretraining, each against the device's
measured bf16 matrix-product rate.

Randomly initialised models with the published architectures (Geneformer-V1-10M: 6 layers, hidden
256, 2,048 inputs; Geneformer-V2-104M: 12 layers, hidden 768, 4,096 inputs), in bf16 (the CUDA
default), on real cells:

1. embedding cells/s, V1-10M, the real Genecorpus-30M cells of
   ``../shared/data/genecorpus30M_500_tokenized_cells.parquet`` (2,009-2,048 genes; repeated);
2. embedding cells/s, V2-104M, synthetic 4,096-long cells (``<cls>``, 4,094 distinct genes, ``<eos>``:
   no real cell is that long in the sample);
3. delete-all perturbations/s of one V1 cell (the longest real cell) and one V2 cell (synthetic,
   4,096), emb_mode "cell", the perturbation engine's parts and batches as a run has them;
4. pretraining tokens/s, V1-10M masked-gene model, bf16 autocast, AdamW, batches of real cells.

Each figure is printed with the achieved TFLOP/s (matmul FLOPs of the layers actually run, real
tokens only; training counts forward + backward as 3x forward) and its share of the bf16 matmul
rate measured in the same run (8,192² products). Goals (issue 15): embedding >= 50% at 4,096
tokens, ISP >= 40%. The bf16 vs fp32 cosine distance of the V1 embeddings is printed too.

    python benchmarks/gpu.py [--device cuda:0] [--smoke]

``--smoke`` shrinks everything to seconds (any device; for checking the script itself). Without
CUDA and without ``--device`` it says so and exits 0.
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
rates = _isolate.sibling("_rates")

from geneformer.data import as_sequences  # noqa: E402
from geneformer.embeddings import cell_embeddings  # noqa: E402
from geneformer.models import encoder_flops, init_model, layer_index  # noqa: E402

DATA = Path(os.environ.get("GENEFORMER_SHARED_DIR", ROOT.parent / "shared")) / "data" / \
    "genecorpus30M_500_tokenized_cells.parquet"
V1_SIZE, CLS, EOS = 25426, 2, 3


def _timed(fn, device) -> float:
    rates.synchronize(device)
    t0 = time.perf_counter()
    fn()
    rates.synchronize(device)
    return time.perf_counter() - t0


def _synthetic_v2(n_cells: int, length: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.concatenate([[CLS], rng.choice(np.arange(4, vocab), length - 2, replace=False), [EOS]])
            for _ in range(n_cells)]


def embedding(name: str, model, cells: list[np.ndarray], device, rate: float, goal: float) -> None:
    seqs = as_sequences(cells)
    layers = layer_index(model, -1)
    cfg = model.config
    flops = encoder_flops(seqs.lengths, layers, cfg.hidden_size, cfg.intermediate_size)
    kw = dict(emb_layer=-1, device=device, progress=False)
    cell_embeddings(model, as_sequences(cells[:2]), amp_dtype="bf16", **kw)  # warm-up
    seconds = _timed(lambda: cell_embeddings(model, seqs, amp_dtype="bf16", **kw), device)
    ok = flops / seconds >= goal * rate
    print(f"embedding {name}: {len(cells)} cells of {int(seqs.lengths.mean()):,} genes, "
          f"{len(cells) / seconds:,.1f} cells/s, {rates.share(flops, seconds, rate)} "
          f"(goal >= {100 * goal:.0f}%: {'met' if ok else 'NOT met'})", flush=True)


def cosine_check(model, cells: list[np.ndarray], device) -> None:
    seqs = as_sequences(cells)
    e32 = cell_embeddings(model, seqs, device=device, amp_dtype="fp32", progress=False)
    e16 = cell_embeddings(model, seqs, device=device, amp_dtype="bf16", progress=False)
    cos = (e32 * e16).sum(1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e16, axis=1))
    print(f"bf16 vs fp32 cell embeddings ({len(cells)} cells): cosine distance max {(1 - cos).max():.1e} "
          f"(goal <= 1e-3: {'met' if (1 - cos).max() <= 1e-3 else 'NOT met'})", flush=True)


def perturbation(name: str, model, cell: np.ndarray, special: bool, device, rate: float, goal: float) -> None:
    n_pert, seconds, flops, budget = rates.delete_all(model, cell, special, device, torch.bfloat16)
    ok = flops / seconds >= goal * rate
    print(f"ISP delete-all {name}: one cell of {len(cell):,} genes, {n_pert:,} perturbations in {seconds:.1f} s, "
          f"{n_pert / seconds:,.1f} perturbations/s, {rates.share(flops, seconds, rate)} "
          f"(goal >= {100 * goal:.0f}%: {'met' if ok else 'NOT met'}; token budget {budget:,})", flush=True)


def pretraining(cells: list[np.ndarray], device, rate: float, batch: int, steps: int, max_len: int) -> None:
    from geneformer.models import GeneformerForMaskedLM
    from geneformer.train import DataCollatorForMaskedGenes, architecture_config, use_fused_attention_dropout

    torch.manual_seed(0)
    cfg = architecture_config("gf-6L-30M-i2048", V1_SIZE, max_position_embeddings=max(max_len, 2048))
    model = GeneformerForMaskedLM(cfg).to(device)
    use_fused_attention_dropout(model)  # as pretrain() trains
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    collate = DataCollatorForMaskedGenes({"<pad>": 0, "<mask>": 1, **{f"g{i}": i for i in range(2, V1_SIZE)}}, seed=0)
    batches = [collate([{"input_ids": c[:max_len]} for c in cells[i * batch:(i + 1) * batch]])
               for i in range(steps + 1)]
    tokens = masked = 0
    lengths: list[int] = []

    def step(b) -> None:
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    step(batches[0])  # warm-up
    rates.synchronize(device)
    t0 = time.perf_counter()
    for b in batches[1:]:
        step(b)
        lengths += b["attention_mask"].sum(1).tolist()
        masked += int((b["labels"] != -100).sum())
    rates.synchronize(device)
    seconds = time.perf_counter() - t0
    tokens = sum(lengths)
    h = cfg.hidden_size
    forward = encoder_flops(np.asarray(lengths), cfg.num_hidden_layers, h, cfg.intermediate_size)
    forward += 2 * masked * (h * h + h * V1_SIZE)  # the masked-only head: transform and decoder
    print(f"pretraining V1-10M: batches of {batch} cells, {steps} steps, {tokens / seconds:,.0f} tokens/s, "
          f"{rates.share(3 * forward, seconds, rate)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda when available (else nothing to do)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check that the script runs")
    args = ap.parse_args()
    if args.device is None and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; nothing to measure (use --device cpu --smoke to try it).")
        return
    device = torch.device(args.device or "cuda")
    import pandas as pd

    if not DATA.is_file():
        sys.exit(f"{DATA} not found (the ../shared reference folder).")
    real = [np.asarray(x, dtype=np.int64) for x in pd.read_parquet(DATA, columns=["input_ids"])["input_ids"]]
    if args.smoke:
        sizes = dict(v1_cells=4, v2_cells=2, v2_len=96, v1_isp=40, v2_isp=48, batch=2, steps=1, train_len=64)
        real = [c[:64] for c in real]
    else:
        sizes = dict(v1_cells=2000, v2_cells=256, v2_len=4096, v1_isp=2048, v2_isp=4096, batch=16, steps=8,
                     train_len=2048)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"bf16 supported {device.type != 'cuda' or torch.cuda.is_bf16_supported()}")
    rate = rates.matmul_rate(torch.bfloat16, device, n=512 if args.smoke else None, seconds=0.2 if args.smoke else 2)
    print(f"measured bf16 matmul rate: {rate / 1e12:,.1f} TFLOP/s", flush=True)

    v1 = init_model("Geneformer-V1-10M", seed=0).to(device)
    v1_cells = [real[i % len(real)] for i in range(sizes["v1_cells"])]
    embedding("V1-10M (2,048)", v1, v1_cells, device, rate, goal=0.5)
    cosine_check(v1, v1_cells[:64], device)
    longest = max(real, key=len)[: sizes["v1_isp"]]
    perturbation("V1-10M", v1, longest, False, device, rate, goal=0.4)
    pretraining(real, device, rate, sizes["batch"], sizes["steps"], sizes["train_len"])
    del v1

    v2 = init_model("Geneformer-V2-104M", seed=0).to(device)
    vocab = int(v2.config.vocab_size)
    embedding("V2-104M (4,096)", v2, _synthetic_v2(sizes["v2_cells"], sizes["v2_len"], vocab), device, rate,
              goal=0.5)
    perturbation("V2-104M", v2, _synthetic_v2(1, sizes["v2_isp"], vocab, seed=1)[0], True, device, rate, goal=0.4)
    rate_after = rates.matmul_rate(torch.bfloat16, device, n=512 if args.smoke else None,
                                   seconds=0.2 if args.smoke else 2)
    print(f"bf16 matmul rate after the run: {rate_after / 1e12:,.1f} TFLOP/s")


if __name__ == "__main__":
    main()
