"""Checking that tokenized cells fit a model before any forward pass: not empty, the same vocabulary
(the V1/V2 mix-up named), no cell longer than the model accepts."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._constants import V2_CLS_ID, V2_EOS_ID
from .._utils import InputError
from ..data import TokenSequences
from ..models import model_input_size, vocab_version_for_size


def validate_sequences(seqs: TokenSequences, model: Any, what: str = "the dataset") -> None:
    """Raise InputError when the sequences do not fit the model: empty, other vocabulary, too long."""
    config = getattr(model, "config", model)
    n = len(seqs)
    if n == 0:
        raise InputError(f"{what} has no cells; nothing to run the model on (check filters and max_ncells).")
    lens = seqs.lengths
    if (lens == 0).any():
        bad = np.flatnonzero(lens == 0)[:5].tolist()
        raise InputError(f"{what} has {int((lens == 0).sum())} empty cells (rows {bad}...); drop them first.")
    vocab_size = int(config.vocab_size)
    model_v = vocab_version_for_size(vocab_size)
    vmax, vmin = int(seqs.values.max()), int(seqs.values.min())
    if vmax >= vocab_size or vmin < 0:
        other = {"V1": "V2", "V2": "V1"}.get(model_v or "", "another")
        raise InputError(
            f"{what} holds token ids from {vmin} to {vmax:,} but the model's vocabulary has {vocab_size:,} tokens"
            f"{f' (the {model_v} vocabulary)' if model_v else ''}: the data was probably tokenized with the "
            f"{other} vocabulary. Re-tokenize with model_version='{model_v or '...'}' or use a {other} model."
        )
    max_len = model_input_size(config)
    if int(lens.max()) > max_len:
        i = int(np.argmax(lens))
        raise InputError(
            f"Cell {i} of {what} has {int(lens[i]):,} tokens but the model accepts at most {max_len:,} "
            f"(max_position_embeddings). Re-tokenize with model_input_size={max_len}."
        )
    if model_v == "V1":
        bracketed = (seqs.first_tokens() == V2_CLS_ID) & (seqs.last_tokens() == V2_EOS_ID)
        if bracketed.mean() > 0.5:
            raise InputError(
                f"{what} looks tokenized with the V2 vocabulary (cells start with <cls>=2 and end with <eos>=3) "
                "but the model is a V1 model (25,426 tokens, no special tokens). Re-tokenize with "
                "model_version='V1' or use a V2 model."
            )
