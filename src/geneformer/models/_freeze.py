"""Freezing the first encoder layers of any BERT-style model (plain, classifier, LoRA-wrapped, multi-task)."""

from __future__ import annotations

import re
from typing import Any

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def freeze_encoder_layers(model: Any, n: int) -> int:
    """Freeze the first ``n`` encoder layers (embeddings stay trainable, as the reference). Returns n.

    Layers are found by parameter name (``...encoder.layer.<i>.``), so wrapped models (peft,
    multi-task heads) are frozen the same way as plain ones."""
    n = int(n or 0)
    if n <= 0:
        return 0
    n_layers = int(model.config.num_hidden_layers)
    if n > n_layers:
        raise ValueError(f"freeze_layers={n} but the model has only {n_layers} encoder layers.")
    for name, p in model.named_parameters():
        m = _LAYER.search(name)
        if m and int(m.group(1)) < n:
            p.requires_grad = False
    return n
