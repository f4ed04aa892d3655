"""A seeded, epoch-aware length-grouped sampler (the reference's ``LengthGroupedSampler`` semantics)."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def length_grouped_indices(
    lengths: np.ndarray, batch_size: int, generator: torch.Generator, mega_batch_mult: int | None = None
) -> np.ndarray:
    """Shuffle, cut into mega-batches of ``mult * batch_size``, sort each by length (descending,
    stable) and move the globally longest example to the very front (so memory errors come early).

    Same order as ``transformers.trainer_pt_utils.get_length_grouped_indices`` for the same
    generator, computed with numpy instead of Python sorts (it matters for 30M cells).
    """
    n = len(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if mega_batch_mult is None:
        mega_batch_mult = max(min(n // (batch_size * 4), 50), 1)
    size = mega_batch_mult * batch_size
    perm = torch.randperm(n, generator=generator).numpy()
    out = np.empty(n, dtype=np.int64)
    firsts = []
    for start in range(0, n, size):
        chunk = perm[start : start + size]
        order = np.argsort(-lengths[chunk], kind="stable")
        out[start : start + len(chunk)] = chunk[order]
        firsts.append(start)
    firsts = np.asarray(firsts)
    # the longest mega-batch head (first one on ties, as torch.argmax) swaps with the first head
    best = firsts[int(np.argmax(lengths[out[firsts]]))]
    out[0], out[best] = out[best], out[0]
    return out


class LengthGroupedSampler(Sampler[int]):
    """Groups cells of similar length into batches while keeping randomness.

    The order is a function of ``(seed, epoch)`` only, so every process of a distributed run draws
    the same order (the data loader then shards it) and a resumed run replays it exactly.
    ``set_epoch`` is called by accelerate's data loader at each epoch.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int = 0,
                 mega_batch_mult: int | None = None) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = length_grouped_indices(self.lengths, self.batch_size, g, self.mega_batch_mult)
        return iter(order.tolist())
