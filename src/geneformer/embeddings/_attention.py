"""Attention weights of chosen cells and layers, and a gene-by-gene attention network.

Attention probabilities are computed with the eager formula ``softmax(Q K^T / sqrt(d) + mask)`` for
the requested layers only (the rest of the model keeps running with SDPA), so asking for weights
never slows down ordinary embedding runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data import as_sequences
from ..inference import iter_forward
from ..models import n_layers
from ._core import SpecialTokens, special_flags, token_labels


@dataclass
class CellAttention:
    """Attention of one cell: ``weights[layer_i, head, query, key]`` over its real positions."""

    row: int
    token_ids: np.ndarray  # (L,)
    layers: tuple[int, ...]  # 0-based encoder layer indices, in the order of ``weights``
    weights: np.ndarray  # (n_layers, heads, L, L) float32; each query row sums to 1


def resolve_layers(model: Any, layers: int | Sequence[int]) -> tuple[int, ...]:
    """0-based encoder layer indices; negative counts from the end (-1 = last layer)."""
    n = n_layers(model)
    layers = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    out = []
    for lay in layers:
        lay = int(lay)
        if not -n <= lay < n:
            raise ValueError(f"attention layer {lay} is out of range for a {n}-layer model (0..{n - 1} or -1..-{n}).")
        out.append(lay % n)
    return tuple(out)


def get_attentions(
    model: Any,
    data: Any,
    *,
    cells: Sequence[int] | None = None,
    layers: int | Sequence[int] = -1,
    batch_size: int | None = 4,
    device: Any = None,
    progress: bool | None = None,
) -> list[CellAttention]:
    """Attention weights of ``cells`` (row numbers; default all) at ``layers`` (0-based, -1 = last).

    Returns one CellAttention per requested cell, in the order given, cropped to the cell's length.
    """
    seqs = as_sequences(data)
    lay = resolve_layers(model, layers)
    rows = np.arange(len(seqs)) if cells is None else np.asarray(list(cells), dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(seqs)):
        raise IndexError(f"cells must be row numbers in 0..{len(seqs) - 1}.")
    hidden_layers = [x + 1 for x in lay]  # attention of encoder layer i is computed by block i+1
    found: dict[int, CellAttention] = {}
    for batch in iter_forward(model, seqs, layer=max(hidden_layers), attention_layers=hidden_layers,
                              batch_size=batch_size, device=device, rows=rows, progress=progress,
                              desc="attention"):
        lens = batch.lengths.cpu().numpy()
        stacked = np.stack([batch.attentions[h].float().cpu().numpy() for h in hidden_layers], axis=1)
        for j, r in enumerate(batch.rows):
            n = int(lens[j])
            found[int(r)] = CellAttention(int(r), seqs.row(int(r)).copy(), lay, stacked[j, :, :, :n, :n].copy())
    return [found[int(r)] for r in rows]


def attention_network(
    model: Any,
    data: Any,
    *,
    layers: int | Sequence[int] = -1,
    cells: Sequence[int] | None = None,
    top_k: int = 20,
    vocab: Any = None,
    exclude_special: bool = True,
    batch_size: int | None = 4,
    device: Any = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Gene-by-gene attention summary usable as a directed network.

    Per cell, attention is averaged over heads and the chosen layers, special tokens are dropped and
    each gene (query) keeps its ``top_k`` most attended genes (keys). An edge's ``weight`` is the
    mean, over the cells that express the source gene, of the attention it pays to the target (0 in
    cells where the target is absent or outside the top k). Columns: source, target (Ensembl IDs),
    weight, n_cells (cells where the edge was among the top k), sorted by weight descending.
    """
    seqs = as_sequences(data)
    special = SpecialTokens.for_model(model, vocab)
    has_cls, has_eos = special_flags(seqs, special)
    lay = resolve_layers(model, layers)
    hidden_layers = [x + 1 for x in lay]
    rows = np.arange(len(seqs)) if cells is None else np.asarray(list(cells), dtype=np.int64)
    src_parts, dst_parts, w_parts = [], [], []
    source_cells: dict[int, int] = {}
    for batch in iter_forward(model, seqs, layer=max(hidden_layers), attention_layers=hidden_layers,
                              batch_size=batch_size, device=device, rows=rows, progress=progress,
                              desc="attention network"):
        mean_att = sum(batch.attentions[h].float() for h in hidden_layers) / len(hidden_layers)
        mean_att = mean_att.mean(dim=1).cpu().numpy()  # (B, L, L), averaged over heads
        lens = batch.lengths.cpu().numpy()
        for j, r in enumerate(batch.rows):
            start = int(has_cls[r]) if exclude_special else 0
            end = int(lens[j]) - (int(has_eos[r]) if exclude_special else 0)
            toks = seqs.row(int(r))[start:end]
            att = mean_att[j, start:end, start:end]
            k = min(top_k, att.shape[1])
            if k == 0:
                continue
            top = np.argpartition(-att, k - 1, axis=1)[:, :k]
            src_parts.append(np.repeat(toks, k))
            dst_parts.append(toks[top].ravel())
            w_parts.append(np.take_along_axis(att, top, axis=1).ravel())
            for t in toks.tolist():
                source_cells[t] = source_cells.get(t, 0) + 1
    if not src_parts:
        return pd.DataFrame(columns=["source", "target", "weight", "n_cells"])
    edges = pd.DataFrame({"source": np.concatenate(src_parts), "target": np.concatenate(dst_parts),
                          "weight": np.concatenate(w_parts).astype(np.float64)})
    agg = edges.groupby(["source", "target"], sort=False)["weight"].agg(["sum", "count"]).reset_index()
    denom = agg["source"].map(source_cells).to_numpy(np.float64)
    agg["weight"] = agg["sum"].to_numpy() / denom
    agg = agg.rename(columns={"count": "n_cells"})[["source", "target", "weight", "n_cells"]]
    agg["source"] = token_labels(agg["source"].tolist(), vocab, model)
    agg["target"] = token_labels(agg["target"].tolist(), vocab, model)
    return agg.sort_values("weight", ascending=False, kind="stable").reset_index(drop=True)
