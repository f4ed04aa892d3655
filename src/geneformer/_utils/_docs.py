"""Shared parameter documentation, written once and placed into docstrings with :func:`doc_params`
(scanpy's ``_doc_params``)::

    @doc_params(emb_layer=doc_emb_layer, device=doc_device)
    def cell_embeddings(model, data, *, emb_layer=-1, device=None):
        \"\"\"...

        Args:
            {emb_layer}
            {device}
        \"\"\"

Only the named ``{placeholders}`` are replaced, so other braces in a docstring stay as they are.
Each text is one argument entry; continuation lines are indented to match the entry.
"""

from __future__ import annotations

import re
from typing import Any, Callable

doc_emb_layer = """emb_layer: which layer's output, as in the reference: 0 = the last layer, -1 = the
            second-to-last (default), down to -n_layers = the embedding layer."""
doc_device = """device: "cpu", "cuda", "cuda:N", a torch.device, or None for ``settings.device``
            ("auto": CUDA when available)."""
doc_dtype = """dtype: compute precision: "fp32", "bf16" or "fp16" (mixed precision), or None for
            ``settings.dtype`` (None: bf16 on a CUDA GPU that supports it, else fp32)."""
doc_progress = """progress: show progress bars (None: ``settings.progress``)."""
doc_batch_size = """batch_size: at most this many cells (sequences) per forward pass; None fills batches
            up to a token budget chosen from free memory."""
doc_token_budget = """token_budget: padded tokens per forward pass (None: ``settings.token_budget``, else
            chosen from free memory)."""
doc_model = """model: a zoo name (``geneformer models``), a local model folder, or a loaded model."""
doc_data = """data: tokenized cells: a ``datasets.Dataset``, its ``save_to_disk`` folder, a DataFrame
            with ``input_ids``, token lists, or ``TokenSequences``."""
doc_vocab = """vocab: the gene vocabulary: "V1"/"V2", a vocabulary folder, a ``GeneVocab``, or None
            (follow the model)."""
doc_max_ncells = """max_ncells: process at most this many cells (chosen with ``shuffle(seed=42)``, as the
            reference); None: all."""
doc_filter_data = """filter_data: keep cells whose column values are among the given ones,
            ``{column: [values]}`` (equality, never substrings)."""
doc_cell_states = """cell_states_to_model: goal-state modelling, ``{"state_key": column, "start_state": s,
            "goal_state": g, "alt_states": [...]}`` (or the legacy ``{column: ([s], [g], [alts])}``)."""

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def doc_params(**texts: str) -> Callable[[Any], Any]:
    """Decorator filling ``{name}`` placeholders of a docstring with the shared texts."""

    def decorate(obj: Any) -> Any:
        doc = obj.__doc__
        if doc:
            obj.__doc__ = _PLACEHOLDER.sub(lambda m: texts.get(m.group(1), m.group(0)), doc)
        return obj

    return decorate

doc_nproc = """nproc: worker processes (None: ``settings.n_jobs``)."""
doc_file_format = """file_format: the input format ("h5ad", "zarr", "loom", "10x_h5", "10x_mtx", "soma"), or
            None to tell it from each file name."""
doc_shard = """shard: ``(i, n)`` or ``"i/n"``: do only the ``i``-th of ``n`` slices of the work (from 0) into a
            part beside the output; ``geneformer.shards.merge(output)`` then writes the output. A
            finished shard is not redone; None: the whole run."""
