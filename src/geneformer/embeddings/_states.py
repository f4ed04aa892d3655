"""State embeddings: the mean (or median) embedding of the cells of each state, the targets that
goal-state perturbation measures shifts towards; and their pickle file (the reference's format)."""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, Mapping

import torch

from .._constants import EmbMode
from .._utils import (
    OptionError,
    check_cell_states,
    doc_params,
    state_list,
    write_pickle,
)
from .._utils._docs import doc_batch_size, doc_device, doc_dtype, doc_emb_layer, doc_progress
from ..data import check_columns, column_values, load_tokenized
from ._extract import extract_embeddings


@doc_params(emb_layer=doc_emb_layer, batch_size=doc_batch_size, device=doc_device, dtype=doc_dtype,
            progress=doc_progress)
def state_embeddings(
    model: Any,
    data: Any,
    cell_states_to_model: Mapping[str, Any],
    *,
    mode: EmbMode = "cell",
    emb_layer: int = -1,
    summary_stat: str = "exact_mean",
    filter_data: Mapping[str, Any] | None = None,
    max_ncells: int | None = 1000,
    vocab: Any = None,
    batch_size: int | None = 100,
    device: Any = None,
    dtype: Any = None,
    progress: bool | None = None,
) -> dict[Any, torch.Tensor]:
    """``{state: (H,) float32 tensor}``: the exact mean or median cell embedding of each state's cells.

    For the start, goal and alternative states of ``cell_states_to_model`` in that order, the cells
    whose ``state_key`` equals the state (after ``filter_data``; at most ``max_ncells`` of them,
    chosen with ``shuffle(seed=42)``) are embedded and summarised.

    Args:
        mode: "cell" (mean over genes) or "cls" (the ``<cls>`` state); "gene" summarises gene embeddings.
        {emb_layer}
        summary_stat: "exact_mean" or "exact_median".
        vocab: the vocabulary (for ``<cls>``/``<eos>``): "V1"/"V2", a token dictionary, or None.
        {batch_size}
        {device}
        {dtype}
        {progress}
    """
    states = check_cell_states(cell_states_to_model)
    if summary_stat not in ("exact_mean", "exact_median"):
        raise OptionError(f"State embeddings need summary_stat 'exact_mean' or 'exact_median'; got {summary_stat!r}.")
    key = states["state_key"]
    ds = load_tokenized(data)
    check_columns(ds, [key], what="state")
    present = set(column_values(ds, key))
    wanted = state_list(states)
    missing = [s for s in wanted if s not in present]
    if missing:
        raise ValueError(f"State(s) {missing} do not occur in column {key!r} (values: {sorted(map(str, present))[:20]}).")
    return {state: extract_embeddings(model, ds, mode=mode, emb_layer=emb_layer, filter_data=filter_data,
                                      state_filter={key: [state]}, max_ncells=max_ncells, summary_stat=summary_stat,
                                      vocab=vocab, batch_size=batch_size, device=device, dtype=dtype,
                                      progress=progress).tensor
            for state in wanted}


def save_state_embs(state_embs: Mapping[Any, torch.Tensor], path: str | os.PathLike) -> None:
    """Pickle ``{state: tensor}`` as the reference's ``EmbExtractor.get_state_embs`` does."""
    write_pickle(path, dict(state_embs))


def load_state_embs(path: str | os.PathLike) -> dict:
    """Read a state-embedding pickle ({state: tensor}) onto the CPU, even if saved from CUDA tensors."""

    class _CPUUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module == "torch.storage" and name == "_load_from_bytes":
                return lambda b: torch.load(io.BytesIO(b), map_location="cpu", weights_only=False)
            return super().find_class(module, name)

    with open(path, "rb") as fh:
        return _CPUUnpickler(fh).load()


__all__ = ["load_state_embs", "save_state_embs", "state_embeddings"]
