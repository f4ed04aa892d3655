"""Which rows of which inputs a shard reads: the inputs' cells in order, cut into whole blocks.

A block is ``block`` consecutive rows of one input (the pipeline's chunk), so a shard starts and
ends on chunk boundaries and the chunks it encodes are exactly those of the single run. Blocks are
balanced by stored values (the cost of encoding) where the format tells them cheaply, else by cells.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._utils import Shard, shard_bounds
from ._base import CellReader


def block_costs(reader: CellReader, block: int) -> np.ndarray:
    """The cost of each block of ``reader``: its stored values, else its number of cells."""
    n = reader.n_cells
    nnz = reader.block_nnz(block)
    if nnz is not None:
        return np.asarray(nnz, dtype=np.float64)
    starts = np.arange(0, n, block)
    return np.minimum(starts + block, n).astype(np.float64) - starts


def shard_rows(readers: Sequence[CellReader], block: int, shard: Shard | None) -> list[tuple[int, int]]:
    """For each reader, the ``(start, stop)`` rows that ``shard`` reads (``(0, 0)``: none).

    Shard ``i`` of ``n`` is the ``i``-th of ``n`` contiguous runs of blocks over all inputs in order,
    of nearly equal cost; together they read every row once.
    """
    if shard is None or shard.is_whole:
        return [(0, r.n_cells) for r in readers]
    costs = [block_costs(r, block) for r in readers]
    first = np.concatenate([[0], np.cumsum([len(c) for c in costs])])  # global index of each reader's block 0
    lo, hi = shard_bounds(np.concatenate(costs) if costs else np.zeros(0), shard)
    rows = []
    for k, r in enumerate(readers):
        a, b = max(lo, first[k]) - first[k], min(hi, first[k + 1]) - first[k]
        rows.append((int(a * block), int(min(b * block, r.n_cells))) if a < b else (0, 0))
    return rows
