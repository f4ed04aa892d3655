"""The machine's matrix-product rate, measured in the same run as a benchmark's figures, and the
ratio of an achieved rate to it (imported with ``_isolate.sibling("_rates")``)."""

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
