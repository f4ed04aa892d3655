"""Resumable, atomic output of a perturbation run: parquet parts, then tidy parquet and raw pickles.

Layout under the output folder (``opp`` = ``in_silico_{perturb_type}_{output_prefix}``)::

    {opp}_parts/run.json            fingerprint of the run, how it is cut into parts, batch sizes
    {opp}_parts/part-000000.parquet one file per part, written to a temporary name and renamed
    {opp}_parts/manifest.json       completed parts and the cells they cover (rewritten atomically)
    {opp}.parquet                   the tidy table (all parts), fingerprint in its metadata
    {opp}_*_raw.pickle              the reference's dictionaries (see :mod:`.results`); our own
                                    front ends name group runs without the list's brackets

A part file exists only when it is complete, so a rerun with the same fingerprint skips exactly the
finished parts; a rerun of a finished run finds the final table and does nothing.

Tidy columns: ``perturbed`` (list of tokens), ``perturbed_gene`` / ``perturbed_symbol`` (its
Ensembl ID(s) and symbol(s), "+"-joined for groups), ``affected`` (token of the gene whose embedding
shift is measured; null for the cell-level value), ``affected_gene`` / ``affected_symbol``,
``state`` (the state a goal-state shift is measured towards; null otherwise), ``cell`` (position of
the cell in processing order, as the reference orders its lists), ``row`` (the cell's row in the
input dataset), ``cell_id`` (when the data has a cell-identifier column), then the value, float32,
in a column named for what it is: ``cosine_similarity`` (original vs perturbed embedding) and, in
goal-state runs, ``shift_toward_state`` for the cell-level rows (the change of the cosine similarity
to ``state``'s embedding; gene-level rows of such runs stay cosine similarities). Tables written
before these names hold one ``value`` column; :func:`value_array` reads both.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .._utils import (
    atomic_path,
    fingerprint,  # re-exported: the one run fingerprint of the package
    write_json,
    write_parquet,
)
from ._results import CELL_EMB, COSINE_COLUMN, RAW_SUFFIX, SHIFT_COLUMN, save_raw

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = b"geneformer.perturb.fingerprint"
LEGACY_VALUE_COLUMN = "value"  # the one value column of tables written before the two names
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"

__all__ = [
    "COSINE_COLUMN",
    "LEGACY_VALUE_COLUMN",
    "SHIFT_COLUMN",
    "GeneLabels",
    "RunStore",
    "fingerprint",
    "part_table",
    "raw_file_names",
    "value_array",
    "value_columns",
]


# ---------------------------------------------------------------------------------------------
# gene names and value columns
# ---------------------------------------------------------------------------------------------
class GeneLabels:
    """Ensembl IDs and symbols of tokens, as Arrow string columns (from a ``GeneVocab`` or a
    token dictionary, which has no symbols: its IDs stand in for them)."""

    def __init__(self, vocab: Any):
        if isinstance(vocab, dict):
            self.ids = {int(v): str(k) for k, v in vocab.items()}
            self.symbols: dict = {}
        else:
            self.ids = vocab.id_to_token
            self.symbols = vocab.ensembl_to_symbol

    def _names(self, key_rows: np.ndarray) -> tuple[list, list]:
        ens = [self.ids.get(int(t), str(int(t))) for t in key_rows]
        return ens, [self.symbols.get(e, e) for e in ens]

    def columns(self, keys: np.ndarray):
        """``(ids, symbols)`` string arrays for rows of tokens (n,) or token groups (n, width)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        mat = keys.reshape(len(keys), -1)
        uniq, inv = np.unique(mat, axis=0, return_inverse=True)
        ids, syms = [], []
        for row in uniq:
            e, s = self._names(row)
            ids.append("+".join(e))
            syms.append("+".join(s))
        idx = pa.array(np.asarray(inv).reshape(-1).astype(np.int64))
        return pc.take(pa.array(ids, pa.string()), idx), pc.take(pa.array(syms, pa.string()), idx)


def value_columns(has_states: bool) -> list[str]:
    """The value columns of a run's table: the shift towards a state and/or the cosine similarity."""
    return [SHIFT_COLUMN, COSINE_COLUMN] if has_states else [COSINE_COLUMN]


def value_array(table) -> np.ndarray:
    """Every row's value (float64) from an Arrow table with our value columns or the legacy ``value``."""
    import pyarrow.compute as pc

    names = table.column_names
    if LEGACY_VALUE_COLUMN in names:
        return np.asarray(table.column(LEGACY_VALUE_COLUMN).to_numpy(), dtype=np.float64)
    present = [c for c in (SHIFT_COLUMN, COSINE_COLUMN) if c in names]
    if not present:
        raise KeyError(f"The table has no value column ({SHIFT_COLUMN!r}, {COSINE_COLUMN!r} or "
                       f"{LEGACY_VALUE_COLUMN!r}); columns: {names}.")
    col = pc.coalesce(*[table.column(c) for c in present]) if len(present) > 1 else table.column(present[0])
    return np.asarray(pc.fill_null(col, np.nan).to_numpy(), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# one part as an Arrow table
# ---------------------------------------------------------------------------------------------
def _list_column(keys: np.ndarray):
    import pyarrow as pa

    n, width = keys.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(keys.reshape(-1).astype(np.int64), pa.int64()))


def part_table(
    plan: Any,
    result: Any,
    *,
    rows: np.ndarray,
    cell_ids: np.ndarray | None,
    state_labels: Sequence[str] | None,
    labels: GeneLabels | None = None,
):
    """The tidy rows of one part: cell-level values first, then gene-level values (gene names
    from ``labels`` when given)."""
    import pyarrow as pa

    n_rows = plan.n_rows
    cell_of_row = plan.cells[plan.row_cell]  # global cell index per perturbation row
    S = len(state_labels) if state_labels else 1
    # cell level: one value per perturbation row (and state)
    r_cell = np.repeat(np.arange(n_rows), S)
    cols_cell = {
        "perturbed": _list_column(plan.keys[r_cell]),
        "affected": pa.nulls(len(r_cell), pa.int64()),
        "state": (pa.array(np.tile(np.asarray(state_labels, dtype=object), n_rows).tolist(), pa.string())
                  if state_labels else pa.nulls(len(r_cell), pa.string())),
        "cell": pa.array(cell_of_row[r_cell], pa.int64()),
    }
    values = [result.cell_values.reshape(-1)]
    tables_idx = [r_cell]
    tables = [cols_cell]
    if result.gene_values is not None:
        counts = np.diff(plan.cmp_offsets)
        r_gene = np.repeat(np.arange(n_rows), counts)
        tables.append({
            "perturbed": _list_column(plan.keys[r_gene]),
            "affected": pa.array(plan.cmp_affected, pa.int64()),
            "state": pa.nulls(len(r_gene), pa.string()),
            "cell": pa.array(cell_of_row[r_gene], pa.int64()),
        })
        values.append(result.gene_values)
        tables_idx.append(r_gene)
    out = []
    value_cols = value_columns(bool(state_labels))
    for level, (cols, idx, vals) in enumerate(zip(tables, tables_idx, values)):
        cells = cell_of_row[idx]
        if labels is not None:
            cols = _with_names(cols, labels, plan.keys[idx],
                               plan.cmp_affected if level else None)
        cols["row"] = pa.array(rows[cells], pa.int64())
        if cell_ids is not None:
            cols["cell_id"] = pa.array([str(x) for x in cell_ids[cells]] if len(cells) < 4096 else
                                       _str_take(cell_ids, cells), pa.string())
        v = pa.array(np.asarray(vals, dtype=np.float32), pa.float32())
        nulls = pa.nulls(len(v), pa.float32())
        # cell-level rows of a goal-state run hold shifts; every other row a cosine similarity
        is_shift = bool(state_labels) and level == 0
        for name in value_cols:
            cols[name] = v if (name == SHIFT_COLUMN) == is_shift else nulls
        out.append(pa.table(cols))
    return pa.concat_tables(out) if len(out) > 1 else out[0]


def _with_names(cols: dict, labels: GeneLabels, keys: np.ndarray, affected: np.ndarray | None) -> dict:
    """``cols`` with the perturbed (and affected) genes' IDs and symbols after their token columns."""
    import pyarrow as pa

    p_ids, p_syms = labels.columns(keys)
    if affected is None:
        a_ids = a_syms = pa.nulls(len(keys), pa.string())
    else:
        a_ids, a_syms = labels.columns(np.asarray(affected))
    out = {}
    for name, col in cols.items():
        out[name] = col
        if name == "perturbed":
            out["perturbed_gene"], out["perturbed_symbol"] = p_ids, p_syms
        elif name == "affected":
            out["affected_gene"], out["affected_symbol"] = a_ids, a_syms
    return out


def _str_take(cell_ids: np.ndarray, cells: np.ndarray) -> list:
    uniq, inv = np.unique(cells, return_inverse=True)
    labels = np.asarray([str(x) for x in cell_ids[uniq]], dtype=object)
    return labels[inv].tolist()


# ---------------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------------
class RunStore:
    """Parts folder, manifest and final outputs of one run (see the module docstring)."""

    def __init__(self, output_directory: str | os.PathLike, output_path_prefix: str, rank: int = 0):
        self.dir = Path(output_directory)
        self.prefix = output_path_prefix  # in_silico_{type}_{prefix}
        self.parts_dir = self.dir / f"{output_path_prefix}_parts"
        self.final = self.dir / f"{output_path_prefix}.parquet"
        self.rank = rank

    # ---- run description ------------------------------------------------------------------------
    def final_fingerprint(self) -> str | None:
        """The fingerprint stored in a finished run's tidy table (None when there is none)."""
        if not self.final.is_file():
            return None
        import pyarrow.parquet as pq

        try:
            meta = pq.read_schema(self.final).metadata or {}
        except Exception:  # noqa: BLE001 - an unreadable file counts as not finished
            return None
        fp = meta.get(FINGERPRINT_KEY)
        return fp.decode() if fp else None

    def open(self, fp: str, parts: list, extra: dict, resume: bool = True) -> dict:
        """Create or reuse the parts folder; returns the run description (with the stored batch sizes).

        A folder from another run (other fingerprint) is an error unless ``resume`` is False, which
        starts afresh.
        """
        run_file = self.parts_dir / RUN_FILE
        stale = False
        if self.parts_dir.is_dir() and run_file.is_file():
            run = json.loads(run_file.read_text())
            if run.get("fingerprint") == fp and resume:
                return run
            if resume:
                raise ValueError(
                    f"{self.parts_dir} holds parts of a different run (other data, model or settings). "
                    "Use another output_prefix or output_directory (--prefix, --output), or pass resume=False "
                    "(--no-resume) to start afresh."
                )
            stale = run.get("fingerprint") != fp
        if self.parts_dir.exists() and self.rank == 0:
            shutil.rmtree(self.parts_dir)
        elif stale:  # a shard starting afresh: the other run's parts must not count as done
            for old in self.parts_dir.glob("part-*.parquet"):
                old.unlink(missing_ok=True)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        run = {"fingerprint": fp, "parts": parts, **extra}
        if self.rank == 0 or stale or not run_file.is_file():
            write_json(run_file, run, indent=None)
        return run

    def part_path(self, i: int) -> Path:
        return self.parts_dir / f"part-{i:06d}.parquet"

    def done_parts(self, n_parts: int) -> set[int]:
        return {i for i in range(n_parts) if self.part_path(i).is_file()}

    def write_part(self, i: int, table, fp: str, segments: list) -> Path:
        """Write part ``i`` atomically (temporary name + rename) and update the manifest."""
        path = self.part_path(i)
        meta = dict(table.schema.metadata or {})
        meta[FINGERPRINT_KEY] = fp.encode()
        meta[b"geneformer.perturb.segments"] = json.dumps(segments).encode()
        write_parquet(path, table.replace_schema_metadata(meta))
        self._update_manifest(i, segments)
        return path

    def _update_manifest(self, i: int, segments: list) -> None:
        name = MANIFEST_FILE if self.rank == 0 else f"manifest-rank{self.rank}.json"
        path = self.parts_dir / name
        manifest = json.loads(path.read_text()) if path.is_file() else {"parts": {}}
        manifest["parts"][str(i)] = {"cells": sorted({int(c) for c, _, _ in segments}),
                                     "segments": [list(map(int, s)) for s in segments]}
        write_json(path, manifest, indent=None, default=None)

    def iter_parts(self, n_parts: int, columns: Sequence[str] | None = None):
        import pyarrow.parquet as pq

        for i in range(n_parts):
            yield pq.read_table(self.part_path(i), columns=columns)

    # ---- final outputs --------------------------------------------------------------------------
    def write_final(self, n_parts: int, fp: str) -> Path:
        """Concatenate the parts into the tidy table: every cell-level row, then every gene-level row."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        first = next(self.iter_parts(1))
        schema = first.schema.remove_metadata().with_metadata({FINGERPRINT_KEY: fp.encode()})
        with atomic_path(self.final) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for level in ("cell", "gene"):
                for table in self.iter_parts(n_parts):
                    is_cell = pc.is_null(table.column("affected"))
                    keep = is_cell if level == "cell" else pc.invert(is_cell)
                    sub = table.filter(keep)
                    if sub.num_rows:
                        writer.write_table(sub.replace_schema_metadata(schema.metadata))
        return self.final

    def iter_final(self, rows_per_batch: int = 1 << 23):
        """The finished tidy table in record batches (as tables)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.final)
        names = pf.schema_arrow.names
        wanted = [c for c in ("perturbed", "affected", "state", SHIFT_COLUMN, COSINE_COLUMN,
                              LEGACY_VALUE_COLUMN) if c in names]
        for batch in pf.iter_batches(batch_size=rows_per_batch, columns=wanted):
            yield pa.Table.from_batches([batch])

    def write_raw(self, names: dict[str, Path], state_objects: dict[str, Any] | None) -> list[Path]:
        """The reference's dictionaries from the finished tidy table (values of each key in cell order)."""
        cell: Any = ({s: defaultdict(list) for s in state_objects.values()} if state_objects
                     else defaultdict(list))
        gene: defaultdict = defaultdict(list)
        has_gene = False
        import pyarrow.compute as pc

        for table in self.iter_final():
            keys, key_objs = _key_codes(table.column("perturbed"))
            aff_col = table.column("affected")
            is_cell = np.asarray(pc.is_null(aff_col), dtype=bool)
            affected = np.asarray(pc.fill_null(aff_col, -1), dtype=np.int64)
            values = value_array(table)
            if state_objects:
                lookup = {label: i for i, label in enumerate(state_objects)}
                labels = table.column("state").to_pylist()
                state_code = np.array([lookup.get(x, -1) for x in labels], dtype=np.int64)
                states = list(state_objects.values())
                sel = np.flatnonzero(is_cell)
                ks, scs, chunks = _grouped(keys[sel], state_code[sel], values[sel])
                for k, sc, vals in zip(ks, scs, chunks):
                    cell[states[sc]][(key_objs[k], CELL_EMB)].extend(vals)
            else:
                sel = np.flatnonzero(is_cell)
                ks, _, chunks = _grouped(keys[sel], np.zeros(len(sel), np.int64), values[sel])
                _extend(cell, [(key_objs[k], CELL_EMB) for k in ks], chunks)
            sel = np.flatnonzero(~is_cell)
            if len(sel):
                has_gene = True
                ks, affs, chunks = _grouped(keys[sel], affected[sel], values[sel])
                _extend(gene, zip(map(key_objs.__getitem__, ks), affs), chunks)
        written = [save_raw(cell, names["cell"])]
        if has_gene:
            written.append(save_raw(gene, names["gene"]))
        return written

    def remove_part_files(self, indices: Iterable[int]) -> None:
        """Delete the given parts (a shard started afresh redoes only its own)."""
        for i in indices:
            self.part_path(i).unlink(missing_ok=True)

    def remove_parts(self) -> None:
        shutil.rmtree(self.parts_dir, ignore_errors=True)


def _key_codes(col) -> tuple[np.ndarray, list]:
    """Integer code per row of a list<int64> column, and the key object (int or tuple) per code."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = np.asarray(arr.offsets)
    flat = np.asarray(arr.values, dtype=np.int64)[offsets[0]: offsets[-1]]
    n = len(offsets) - 1
    width = int(offsets[1] - offsets[0]) if n else 1
    mat = flat.reshape(n, width)
    if width == 1:
        uniq, inv = np.unique(mat[:, 0], return_inverse=True)
        return inv.astype(np.int64), [int(u) for u in uniq]
    uniq, inv = np.unique(mat, axis=0, return_inverse=True)
    return np.asarray(inv).reshape(-1).astype(np.int64), [tuple(int(x) for x in u) for u in uniq]


def _grouped(a: np.ndarray, b: np.ndarray, values: np.ndarray) -> tuple[list, list, list]:
    """Groups of equal (a, b): (a per group, b per group, values per group in row order)."""
    if len(a) == 0:
        return [], [], []
    comp = a.astype(np.int64) * (int(b.max()) + 2) + (b.astype(np.int64) + 1)
    order = np.argsort(comp, kind="stable")  # stable: each group's values stay in row (cell) order
    sorted_comp = comp[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_comp[1:] != sorted_comp[:-1]]))
    bounds = np.append(starts, len(order)).tolist()
    vals = values[order].tolist()
    first = order[starts]
    chunks = list(map(vals.__getitem__, map(slice, bounds[:-1], bounds[1:])))  # C-level loop
    return a[first].tolist(), b[first].tolist(), chunks


def _extend(target: dict, keys: Iterable, chunks: list) -> None:
    if not target:
        target.update(zip(keys, chunks))
        return
    for k, v in zip(keys, chunks):
        target[k].extend(v)


def raw_file_names(directory: Path, output_path_prefix: str, tokens: Sequence[int] | None,
                   reference: bool = True) -> dict[str, Path]:
    """Raw pickle names: group runs embed the token list, "all" runs write one file per kind.

    ``reference``: the list as the reference writes it (``..._dict_[15627, 2635]_raw.pickle``, what
    its tools look for); False: ``..._dict_15627_2635_raw.pickle``, no brackets or spaces to quote.
    """
    if tokens is not None:
        ints = [int(t) for t in tokens]
        tag = str(ints) if reference else "_".join(map(str, ints))
        return {"cell": directory / f"{output_path_prefix}_cell_embs_dict_{tag}{RAW_SUFFIX}",
                "gene": directory / f"{output_path_prefix}_gene_embs_dict_{tag}{RAW_SUFFIX}"}
    return {"cell": directory / f"{output_path_prefix}_dict_cell_embs{RAW_SUFFIX}",
            "gene": directory / f"{output_path_prefix}_dict_gene_embs{RAW_SUFFIX}"}
