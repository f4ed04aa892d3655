"""The one batched forward pass that embeddings, perturbation, prediction and state embeddings use:
length-sorted batches under a token budget, padding to each batch's own longest cell, device and
dtype, an out-of-memory split, and encoders stopped at the layer that is needed."""

from .._utils import InputError
from ._batching import auto_token_budget, collate, make_batches
from ._forward import forward_first_position, forward_hidden, forward_outputs
from ._loop import ForwardBatch, iter_forward, lagged_to_host, run_model
from ._validate import validate_sequences

__all__ = [
    "ForwardBatch", "InputError", "auto_token_budget", "collate", "forward_first_position", "forward_hidden", "forward_outputs", "iter_forward", "lagged_to_host",
    "make_batches", "run_model", "validate_sequences",
]
