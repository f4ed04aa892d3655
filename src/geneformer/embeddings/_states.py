"""TODO docstring."""

from __future__ import annotations

import os
import pickle

import torch



def load_state_embs(path: str | os.PathLike) -> dict:
    """Read a state-embedding pickle ({state: tensor}) onto the CPU, even if saved from CUDA tensors."""
    import io

    class _CPUUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module == "torch.storage" and name == "_load_from_bytes":
                return lambda b: torch.load(io.BytesIO(b), map_location="cpu", weights_only=False)
            return super().find_class(module, name)

    with open(path, "rb") as fh:
        return _CPUUnpickler(fh).load()
