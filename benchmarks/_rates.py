"""The machine's matrix-product rate, measured in the same run as a benchmark's figures, the ratio
of an achieved rate to it, and a timed delete-all of one cell through the perturbation engine
(imported with ``_isolate.sibling("_rates")``)."""

from __future__ import annotations

import time


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype, device="cpu", n: int | None = None, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of square ``dtype`` matrix products back to back for about ``seconds``
    (total FLOPs over total time, after one untimed product); n defaults to 8,192 on GPUs, 2,048 on CPU."""
    import torch

    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    count, t0 = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        if count % 4 == 0 or device.type != "cuda":
            synchronize(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return 2 * n**3 * count / elapsed


def share(flops: float, seconds: float, rate: float) -> str:
    """``"X TFLOP/s = Y% of the matmul rate"`` (GFLOP/s below a TFLOP/s)."""
    achieved = flops / seconds
    unit, scale = ("TFLOP/s", 1e12) if rate >= 1e12 else ("GFLOP/s", 1e9)
    return f"{achieved / scale:,.2f} {unit} = {100 * achieved / rate:.0f}% of the matmul rate ({rate / scale:,.1f} {unit})"


def delete_all(model, cell, special: bool, device, dtype, max_perturbations: int | None = None,
               rows_per_part: int = 1000) -> tuple[int, float, float, int]:
    """Delete every gene of ``cell`` (the first ``max_perturbations`` only, if given), emb_mode
    "cell", through the engine's parts and batches as a run has them (perturbed sequences built,
    originals and perturbations forwarded, cosines computed), after an untimed 8-row warm-up.
    Returns ``(perturbations, seconds, FLOPs of the layers run, token budget)``."""
    import numpy as np
    import torch

    from geneformer._utils import itemsize
    from geneformer.data import as_sequences
    from geneformer.inference import auto_token_budget
    from geneformer.models import encoder_flops, layer_index
    from geneformer.perturb._engine import RunSettings, build_part, plan_parts, run_part

    device, cfg = torch.device(device), model.config
    layers = layer_index(model, -1)
    s = RunSettings(perturb_type="delete", emb_mode="cell", layer=layers, special=special,
                    max_len=int(cfg.max_position_embeddings))
    seqs = as_sequences([cell])
    budget = auto_token_budget(model, len(cell), device, itemsize=itemsize(dtype))
    parts = plan_parts(seqs.lengths, s, rows_per_part)
    if max_perturbations is not None:  # the first parts, the last one cut (one cell: one segment a part)
        kept, left = [], int(max_perturbations)
        for part in parts:
            if left <= 0:
                break
            (c, r0, r1), = part
            kept.append([(c, r0, min(r1, r0 + left))])
            left -= kept[-1][0][2] - r0
        parts = kept
    n_pert = sum(r1 - r0 for part in parts for _, r0, r1 in part)
    per_pert = len(cell) - 1
    flops = encoder_flops(np.full(n_pert, per_pert), layers, cfg.hidden_size, cfg.intermediate_size)
    flops += len(parts) * encoder_flops(seqs.lengths, layers, cfg.hidden_size, cfg.intermediate_size)
    workspace: dict = {}

    def run(which) -> None:
        for part in which:
            run_part(model, build_part(seqs, part, s), s, device=device, token_budget=budget, amp_dtype=dtype,
                     workspace=workspace)

    run([[(0, 0, min(8, n_pert))]])
    synchronize(device)
    t0 = time.perf_counter()
    run(parts)
    synchronize(device)
    return n_pert, time.perf_counter() - t0, flops, budget
