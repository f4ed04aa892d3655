"""Scratch tensors kept from one call to the next, so that the inference fast path does not allocate
(and the OS fault in) fresh batch-sized buffers at every layer and batch."""

from __future__ import annotations

import math

import torch


def scratch(workspace: dict, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor of ``shape``, carved from the flat buffer ``workspace[name]``, which only ever grows:
    the batches of one run (whose widths differ a little) keep reusing the same memory."""
    size = math.prod(shape)
    flat = workspace.get(name)
    if flat is None or flat.numel() < size or flat.dtype != dtype or flat.device != torch.device(device):
        flat = workspace[name] = torch.empty(size, dtype=dtype, device=device)
    return flat[:size].view(shape)
