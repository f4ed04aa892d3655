"""State embeddings: the mean (or median) embedding of the cells of each state, the targets that
goal-state perturbation measures shifts towards; and their files (safetensors, or the reference's pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .._constants import EmbMode
from .._utils import (
    InputFileError,
    OptionError,
    check_cell_states,
    doc_params,
    load_plain_file,
    state_list,
    write_bytes,
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
    """Write ``{state: tensor}``: a ``.safetensors`` file (no pickle; the states' labels in its
    metadata), or any other name as the pickle the reference's ``EmbExtractor.get_state_embs`` writes."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save

        states = list(state_embs)
        tensors = {str(i): torch.as_tensor(state_embs[s]).detach().cpu().contiguous() for i, s in enumerate(states)}
        meta = {"geneformer.states": json.dumps(states)}
        write_bytes(path, save(tensors, metadata=meta))
        return
    write_pickle(path, dict(state_embs))


def load_state_embs(path: str | os.PathLike) -> dict:
    """Read state embeddings ({state: tensor}) onto the CPU: a ``.safetensors`` file from
    :func:`save_state_embs`, or a pickle through the restricted loader (plain data and tensors only,
    also when saved from CUDA tensors); anything else is an :class:`InputFileError` naming the file."""
    p = Path(path)
    obj = _load_safetensors_states(p) if p.suffix == ".safetensors" else load_plain_file(p, "state-embeddings pickle")
    if not isinstance(obj, dict) or not obj:
        kind = "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise InputFileError(f"State-embeddings file {p} must hold {{state: embedding tensor}}; it holds {kind}.")
    bad = [k for k, v in obj.items() if not (torch.is_tensor(v) or isinstance(v, np.ndarray))]
    if bad:
        raise InputFileError(f"State-embeddings file {p} holds non-tensor values for state(s) {bad[:3]}.")
    return obj


def _load_safetensors_states(p: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        if "geneformer.states" not in meta:
            return tensors
        return {s: tensors[str(i)] for i, s in enumerate(json.loads(meta["geneformer.states"]))}
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(f"Could not read state embeddings {p}: {exc} (truncated, or not a safetensors "
                             "file).") from exc


__all__ = ["load_state_embs", "save_state_embs", "state_embeddings"]
