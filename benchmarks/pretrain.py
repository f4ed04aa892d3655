"""Pretraining throughput: our step vs the reference-style step, same V1-10M model and cells.

ours  : ``GeneformerForMaskedLM`` (MLM head only at masked genes), length-grouped batches padded to
        the batch's longest cell, attention dropout through ``geneformer.train.use_fused_attention_dropout``
        (exact, at the fused kernel's speed on CPU), as ``pretrain`` trains by default;
ours without fused dropout: the same on PyTorch's own ``sdpa`` (whose CPU dropout path is the
        unfused math kernel), to show what each part contributes;
plain : ``BertForMaskedLM`` (full-vocabulary head at every position), batches padded to 2,048, as
        the reference pretraining does with ``max_length`` padding, stock ``sdpa``.

All: the same initial weights, the same masks (15%), AdamW, forward + backward + optimizer step,
on the 500 real Genecorpus-30M cells of ``../shared/data/genecorpus30M_500_tokenized_cells.parquet``.
Prints tokens/s (real, non-padding tokens) of each and the ratios to plain. The variants' steps are
interleaved (A B C A B C ...), so that load from other jobs on a shared machine hits them alike.

    python benchmarks/pretrain.py [--batch-size 4] [--steps 3] [--warmup 1] [--threads N] [--bf16] [--data PATH]
                                  [--attn-dropout P] [--skip-unfused]

``--attn-dropout`` overrides the V1 preset's attention dropout (0.02), e.g. 0.1 as in the V2 models.

The Genecorpus sample cells are nearly all 2,048 genes long, so there the gain is the sparse head
and the fused attention dropout, not padding; ``--data ../shared/golden/tokenized/pbmc3k_raw_seurat_labels_V1.dataset`` (mean 827 genes)
shows the effect of dynamic padding as well.
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import BertForMaskedLM

from geneformer.train import architecture_config
from geneformer.train import DataCollatorForMaskedGenes
from geneformer.train import use_fused_attention_dropout
from geneformer.models import GeneformerForMaskedLM
from geneformer.train import LengthGroupedSampler

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("GENEFORMER_SHARED_DIR", HERE.parents[0].parent / "shared"))
V1_SIZE = 25426


def _token_dict(size: int) -> dict[str, int]:
    # masking needs only the special ids and the gene id range (V1: <pad>=0, <mask>=1, genes 2..)
    return {"<pad>": 0, "<mask>": 1, **{f"g{i}": i for i in range(2, size)}}


class _Variant:
    """One model under test: its optimizer, batches and the time and tokens of its timed steps."""

    def __init__(self, name: str, model, batches, device, bf16: bool) -> None:
        self.name, self.model, self.batches, self.device, self.bf16 = name, model, batches, device, bf16
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.001)
        self.elapsed, self.tokens, self.loss = 0.0, 0, float("nan")

    def step(self, i: int, timed: bool) -> None:
        batch = {k: v.to(self.device) for k, v in self.batches[i].items()}
        self.model.train()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(**batch).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.loss = loss.item()
        if timed:
            self.elapsed += dt
            self.tokens += int(batch["attention_mask"].sum())

    @property
    def rate(self) -> float:
        return self.tokens / self.elapsed


def _run_interleaved(variants: list[_Variant], steps: int, warmup: int) -> None:
    """Step the variants in turn (A B C A B C ...) so that a change of load on a shared machine
    hits all of them alike and their ratios stay meaningful."""
    for i in range(warmup + steps):
        for v in variants:
            v.step(i, timed=i >= warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--attn-dropout", type=float, default=None,
                    help="attention_probs_dropout_prob (default: the V1 preset's 0.02)")
    ap.add_argument("--skip-unfused", action="store_true", help="do not time ours without the fused dropout")
    ap.add_argument("--data", default=str(SHARED / "data" / "genecorpus30M_500_tokenized_cells.parquet"),
                    help="parquet file or tokenized V1 dataset folder (input_ids, length)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    if Path(args.data).is_dir():  # a tokenized dataset folder (save_to_disk), e.g. a golden V1 dataset
        from datasets import load_from_disk

        ds = load_from_disk(args.data)
        cells = [np.asarray(x, dtype=np.int64) for x in ds["input_ids"]]
        lengths = np.asarray(ds["length"])
    else:
        table = pq.read_table(args.data, columns=["input_ids", "length"])
        cells = [np.asarray(x, dtype=np.int64) for x in table.column("input_ids").to_pylist()]
        lengths = np.asarray(table.column("length").to_pylist())
    n_batches = args.warmup + args.steps
    need = n_batches * args.batch_size

    tok = _token_dict(V1_SIZE)
    ours_collate = DataCollatorForMaskedGenes(tok, seed=0)
    plain_collate = DataCollatorForMaskedGenes(tok, seed=0, pad_to_multiple_of=2048)
    order = list(LengthGroupedSampler(lengths, args.batch_size, seed=0))[:need]
    groups = [order[i : i + args.batch_size] for i in range(0, need, args.batch_size)]
    ours_batches = [ours_collate([{"input_ids": cells[j]} for j in g]) for g in groups]
    plain_batches = [plain_collate([{"input_ids": cells[j]} for j in g]) for g in groups]

    torch.manual_seed(0)
    overrides = {} if args.attn_dropout is None else {"attention_probs_dropout_prob": args.attn_dropout}
    cfg = architecture_config("gf-6L-30M-i2048", V1_SIZE, **overrides)
    ours = GeneformerForMaskedLM(copy.deepcopy(cfg)).to(device)
    fused = use_fused_attention_dropout(ours)  # what pretrain() does (GeneformerPretrainer's default)
    unfused = None if args.skip_unfused else GeneformerForMaskedLM(copy.deepcopy(cfg)).to(device)
    plain = BertForMaskedLM(copy.deepcopy(cfg)).to(device)
    for other in (unfused, plain):
        if other is not None:
            other.load_state_dict(ours.state_dict())

    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up (variants interleaved), bf16 {args.bf16}, "
          f"attention dropout {cfg.attention_probs_dropout_prob}")
    print(f"cells: {len(cells)}, mean length {lengths.mean():.0f}, max {lengths.max()}")
    variants = [_Variant(f"ours  (masked-only head, dynamic padding, fused dropout {fused}):", ours, ours_batches,
                         device, args.bf16)]
    if unfused is not None:
        variants.append(_Variant("ours without fused dropout (stock sdpa):", unfused, ours_batches, device, args.bf16))
    variants.append(_Variant("plain (full head, padded to 2,048, stock sdpa):", plain, plain_batches, device, args.bf16))
    _run_interleaved(variants, args.steps, args.warmup)
    for v in variants:
        print(f"{v.name:<68}{v.rate:10.1f} tokens/s  ({v.tokens} tokens, {v.elapsed / args.steps:.2f} s/step, "
              f"loss {v.loss:.3f})")
    plain_tps, ours_tps = variants[-1].rate, variants[0].rate
    print(f"speed-up: {ours_tps / plain_tps:.2f}x", end="")
    if unfused is not None:
        unf_tps = variants[1].rate
        print(f" (without fused dropout {unf_tps / plain_tps:.2f}x; fused dropout alone {ours_tps / unf_tps:.2f}x)")
    else:
        print()


if __name__ == "__main__":
    main()
