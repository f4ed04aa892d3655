"""Which cells a perturbation run processes, and in which order (the reference's rules, on index arrays).

Order of the filters (SPEC 7.2): ``filter_data`` → start state → cells containing every perturbed
token (not for overexpression, which inserts absent genes) → cells containing the anchor gene →
``shuffle(seed 42)`` and keep ``max_ncells`` → stable sort by length, longest first → the
``cell_inds_to_perturb`` slice. Everything works on row-index arrays, so the dataset is never
copied and every selected cell keeps its row in the input (``rows``) for the outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .._constants import CELL_ID_COLUMNS
from ..data import TokenSequences, as_sequences, check_columns, lengths_of

logger = logging.getLogger(__name__)

_SCAN_ROWS = 65_536  # rows per chunk when scanning token lists

__all__ = ["CELL_ID_COLUMNS", "CellSelection", "find_cell_id_column", "select_cells"]


@dataclass
class CellSelection:
    """The cells to perturb, in processing order.

    ``rows``: row of each cell in the input dataset. ``seqs``: their token sequences.
    ``cell_ids``: values of ``cell_id_column`` (None when the data has no such column).
    """

    rows: np.ndarray
    seqs: TokenSequences
    cell_ids: np.ndarray | None = None
    cell_id_column: str | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def find_cell_id_column(column_names: Sequence[str], wanted: str | None = None) -> str | None:
    """``wanted`` (checked) or the first cell-identifier-like column of the dataset."""
    if wanted is not None:
        if wanted not in column_names:
            raise KeyError(f"cell_id_column {wanted!r} is not in the dataset; columns: {list(column_names)}.")
        return wanted
    lower = {c.lower(): c for c in column_names}
    return next((lower[c] for c in CELL_ID_COLUMNS if c in lower), None)


def _as_list(values: Any) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return [values]
    return list(values)


def _column(ds: Any, col: str, idx: np.ndarray) -> list:
    return ds.with_format("arrow")[col].take(idx).to_pylist() if len(idx) else []


def _column_all(ds: Any, col: str) -> list:
    return ds.with_format("arrow")[col].to_pylist()


def _contains(ds: Any, idx: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """Bool per row of ``idx``: the cell holds every token of ``tokens`` (chunked scan of input_ids)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    toks = np.asarray(list(tokens), dtype=np.int64)
    out = np.zeros(len(idx), dtype=bool)
    col = ds.with_format("arrow")["input_ids"]
    for start in range(0, len(idx), _SCAN_ROWS):
        part = idx[start : start + _SCAN_ROWS]
        chunk = col.take(part)
        if isinstance(chunk, pa.ChunkedArray):
            chunk = chunk.combine_chunks()
        lens = np.asarray(pc.list_value_length(chunk).fill_null(0), dtype=np.int64)
        values = np.asarray(chunk.flatten(), dtype=np.int64)
        row_of = np.repeat(np.arange(len(part)), lens)
        hits = np.ones(len(part), dtype=bool)
        for t in toks:  # a handful of genes, not a hot loop
            has = np.zeros(len(part), dtype=bool)
            has[row_of[values == t]] = True
            hits &= has
        out[start : start + len(part)] = hits
    return out


def select_cells(
    ds: Any,
    *,
    filter_data: Mapping[str, Any] | None = None,
    state_key: str | None = None,
    start_state: Any = None,
    require_tokens: Sequence[int] | None = None,
    anchor_token: int | None = None,
    max_ncells: int | None = None,
    cell_inds_to_perturb: Mapping[str, int] | str = "all",
    cell_id_column: str | None = None,
    gene_names: Mapping[int, str] | None = None,
    seed: int = 42,
) -> CellSelection:
    """Apply the reference's filters and ordering; raise with a clear message when nothing is left.

    ``gene_names`` (token → label) only improves error messages.
    """
    n = len(ds)
    if n == 0:
        raise ValueError("The tokenized dataset has no cells.")
    idx = np.arange(n, dtype=np.int64)
    if filter_data:
        check_columns(ds, list(filter_data), what="filter_data")
        for col, values in filter_data.items():
            allowed = set(_as_list(values))
            keep = np.fromiter((v in allowed for v in _column(ds, col, idx)), dtype=bool, count=len(idx))
            idx = idx[keep]
        if len(idx) == 0:
            raise ValueError(f"No cells are left after filter_data={dict(filter_data)}; check the column values.")

    if state_key is not None:
        check_columns(ds, [state_key], what="state_key (cell_states_to_model)")
        values = _column(ds, state_key, idx)
        present = set(values)
        if start_state not in present:
            shown = sorted(map(str, present))[:20]
            raise ValueError(
                f"start_state {start_state!r} does not occur in column {state_key!r} of the cells "
                f"{'left after filter_data ' if filter_data else ''}(values: {shown})."
            )
        idx = idx[np.fromiter((v == start_state for v in values), dtype=bool, count=len(values))]

    def _names(tokens: Iterable[int]) -> str:
        return ", ".join(f"{gene_names.get(int(t), t) if gene_names else t}" for t in tokens)

    if require_tokens is not None and len(require_tokens):
        keep = _contains(ds, idx, require_tokens)
        if not keep.any():
            per_gene = {int(t): int(_contains(ds, idx, [t]).sum()) for t in require_tokens}
            detail = ", ".join(f"{_names([t])}: {c} cells" for t, c in per_gene.items())
            raise ValueError(
                f"No cell expresses all of the genes to perturb ({detail}). Deletion and "
                "inhibition/activation need the genes in the cell; perturb fewer genes together, or use "
                "perturb_type='overexpress', which inserts absent genes."
            )
        idx = idx[keep]

    if anchor_token is not None:
        keep = _contains(ds, idx, [anchor_token])
        if not keep.any():
            raise ValueError(
                f"The anchor gene {_names([anchor_token])} is not expressed in any of the {len(idx)} selected cells; "
                "choose an anchor gene that the cells express."
            )
        idx = idx[keep]

    if max_ncells is not None and len(idx) > int(max_ncells):
        # Dataset.shuffle(seed) == default_rng(seed).permutation(N) over the filtered rows
        idx = idx[np.random.default_rng(seed).permutation(len(idx))[: int(max_ncells)]]
    lengths = lengths_of(ds)[idx] if "length" in ds.column_names else None
    seqs_all = as_sequences(ds.select(idx, keep_in_memory=True)) if len(idx) else None
    if lengths is None and seqs_all is not None:
        lengths = seqs_all.lengths
    order = np.argsort(-lengths, kind="stable")
    idx = idx[order]

    if cell_inds_to_perturb != "all":
        if not isinstance(cell_inds_to_perturb, Mapping) or set(cell_inds_to_perturb) != {"start", "end"}:
            raise ValueError('cell_inds_to_perturb must be "all" or {"start": i, "end": j}.')
        start, end = int(cell_inds_to_perturb["start"]), int(cell_inds_to_perturb["end"])
        if start < 0 or end <= start:
            raise ValueError(f"cell_inds_to_perturb needs 0 <= start < end, got {dict(cell_inds_to_perturb)}.")
        if start >= len(idx):
            raise ValueError(f"cell_inds_to_perturb start={start} is beyond the {len(idx)} selected cells.")
        order = order[start : min(end, len(idx))]
        idx = idx[start : min(end, len(idx))]

    seqs = seqs_all.take(order)
    id_col = find_cell_id_column(ds.column_names, cell_id_column)
    cell_ids = np.asarray(_column(ds, id_col, idx), dtype=object) if id_col else None
    logger.info("Selected %d of %d cells to perturb.", len(idx), n)
    return CellSelection(idx, seqs, cell_ids, id_col)
