"""Matrix-product FLOPs of BERT encoder layers, for throughput figures (achieved FLOP/s)."""

from __future__ import annotations

import numpy as np


def encoder_flops(lengths: np.ndarray, layers: int, hidden: int, inter: int) -> float:
    """Matmul FLOPs of ``layers`` BERT layers over cells of the given lengths (padding not counted).

    Per layer and cell of length L: Q, K, V, output projections 4·2·L·H², feed-forward 2·2·L·H·I,
    attention scores and weighted values 2·2·L²·H.
    """
    L = np.asarray(lengths).astype(np.float64)
    per_layer = 8 * L * hidden**2 + 4 * L * hidden * inter + 4 * L**2 * hidden
    return float(layers * per_layer.sum())
