"""Perturbation results: the reference's ``*_raw.pickle`` dictionaries and a tidy columnar form.

Raw format (what the reference perturber writes and its stats class reads)
--------------------------------------------------------------------------
- cell level, no states: ``{(perturbed, "cell_emb"): [value, ...]}``
- cell level, states:    ``{state: {(perturbed, "cell_emb"): [shift, ...]}}``
- gene level:            ``{(perturbed, affected_token): [cosine, ...]}`` (never state-nested)

``perturbed`` is a token (int) or a tuple of tokens (group perturbation of several genes). The
reference stores numpy ints (e.g. ``np.int16``) in some keys; they are read back as Python ints.
A folder may hold many such files (one per cell and batch); they merge by concatenating the lists
of equal keys, in file-name order.

Tidy format
-----------
One row per value, columns:

============  ==========================================================================
perturbed     int token, or tuple of tokens (object column)
affected      nullable Int64: the affected gene's token; <NA> for the cell-level value
state         the cell state the shift is measured towards; None without states
cell          position of the value in its key's list (the reference keeps no cell ids)
value         float64 cosine similarity (or shift towards ``state``)
============  ==========================================================================

In parquet ``perturbed`` is stored as ``list<int64>`` (a one-element list for a single token).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np
import pandas as pd

from .._utils import InputFileError, load_plain_file, write_parquet, write_pickle

logger = logging.getLogger(__name__)

CELL_EMB = "cell_emb"
RAW_SUFFIX = "_raw.pickle"
TIDY_COLUMNS = ["perturbed", "affected", "state", "cell", "value"]
# the value columns of a perturber's run table (``_store``), named for what they hold
COSINE_COLUMN = "cosine_similarity"
SHIFT_COLUMN = "shift_toward_state"
RawKind = Literal["cell", "gene", "mixed", "state", "empty"]

__all__ = [
    "CELL_EMB",
    "RAW_SUFFIX",
    "RawShifts",
    "iter_raw_dir",
    "list_raw_files",
    "load_raw",
    "merge_raw",
    "normalize_key",
    "raw_kind",
    "raw_to_tidy",
    "read_raw_dir",
    "read_tidy",
    "save_raw",
    "tidy_to_raw",
    "write_tidy",
]


# ---------------------------------------------------------------------------------------------
# raw pickles
# ---------------------------------------------------------------------------------------------
def load_raw(path: str | os.PathLike) -> dict:
    """Load one raw result pickle (a dictionary; see the module docstring)."""
    p = Path(path)
    obj = load_plain_file(p, "perturbation results")
    if not isinstance(obj, dict):
        raise InputFileError(f"{p} holds a {type(obj).__name__}, expected a dictionary of perturbation results.")
    return obj


def save_raw(obj: dict, path: str | os.PathLike) -> Path:
    """Write a raw result dictionary as the reference does (atomically: temp name + rename)."""
    return write_pickle(path, obj, protocol=pickle.HIGHEST_PROTOCOL)


def normalize_key(key):
    """A perturbed key as Python ints: ``int`` or ``tuple[int, ...]`` (numpy scalars converted)."""
    if isinstance(key, (tuple, list)):
        return tuple(int(k) for k in key)
    return int(key)


def raw_kind(obj: dict, full: bool = False) -> RawKind:
    """``"state"`` (state-nested), ``"cell"`` / ``"gene"`` / ``"mixed"`` by key type, or ``"empty"``.

    By default only the first and last keys are inspected (the reference never mixes cell- and
    gene-level keys in one file); ``full=True`` checks every key.
    """
    if not obj:
        return "empty"
    first = next(iter(obj.values()))
    if isinstance(first, dict):
        return "state"
    keys = obj.keys() if full else (next(iter(obj)), next(reversed(obj)))
    n_keys = len(obj) if full else 2
    n_cell = sum(1 for k in keys if isinstance(k, tuple) and len(k) == 2 and isinstance(k[1], str))
    if n_cell == n_keys:
        return "cell"
    return "gene" if n_cell == 0 else "mixed"


def list_raw_files(directory: str | os.PathLike, suffix: str = RAW_SUFFIX) -> list[Path]:
    """Files of ``directory`` ending in ``suffix``, sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"Perturbation result folder {d} does not exist.")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(suffix))
    if not files:
        raise FileNotFoundError(f"No files ending in {suffix!r} in {d}; is this the perturber's output folder?")
    return files


def _looks_gene_level(name: str) -> bool:
    # the reference names gene-level files "..._dict_gene_embs_..." / "..._gene_embs_dict_..."
    return "gene_embs" in name


def iter_raw_dir(
    directory: str | os.PathLike,
    suffix: str = RAW_SUFFIX,
    kinds: Iterable[RawKind] | None = None,
) -> Iterator[tuple[Path, dict]]:
    """Yield ``(path, dict)`` for the raw result files of a folder whose :func:`raw_kind` is in ``kinds``.

    One file at a time, so a large folder need not fit in memory as dictionaries. Files named like
    the reference's gene-level outputs are not even opened when ``kinds`` rules gene-level results
    out (they are by far the largest). Empty files are skipped.
    """
    wanted = set(kinds) if kinds is not None else None
    for path in list_raw_files(directory, suffix):
        if wanted is not None and not wanted & {"gene", "mixed"} and _looks_gene_level(path.name):
            continue
        obj = load_raw(path)
        kind = raw_kind(obj)
        if kind == "empty" or (wanted is not None and kind not in wanted):
            continue
        yield path, obj


def read_raw_dir(
    directory: str | os.PathLike,
    suffix: str = RAW_SUFFIX,
    kinds: Iterable[RawKind] | None = None,
) -> list[tuple[Path, dict]]:
    """Load the raw result files of a folder (see :func:`iter_raw_dir`) into a list."""
    return list(iter_raw_dir(directory, suffix, kinds))


def merge_raw(dicts: Sequence[dict]) -> dict:
    """Merge raw dictionaries (state-nested or not) by concatenating the lists of equal keys."""
    nested = any(raw_kind(d) == "state" for d in dicts)
    if nested:
        merged: dict = {}
        for d in dicts:
            if raw_kind(d) not in ("state", "empty"):
                raise ValueError("Cannot merge state-nested results with results without states.")
            for state, inner in d.items():
                target = merged.setdefault(state, defaultdict(list))
                for k, v in inner.items():
                    target[normalize_key(k[0]), k[1] if isinstance(k[1], str) else int(k[1])].extend(v)
        return merged
    out: defaultdict = defaultdict(list)
    for d in dicts:
        for k, v in d.items():
            out[normalize_key(k[0]), k[1] if isinstance(k[1], str) else int(k[1])].extend(v)
    return out


# ---------------------------------------------------------------------------------------------
# columnar form
# ---------------------------------------------------------------------------------------------
def _object_array(items: Sequence) -> np.ndarray:
    # np.fromiter keeps tuples as single objects (np.array would make a 2-D array of them)
    return np.fromiter(items, dtype=object, count=len(items))


@dataclass
class RawShifts:
    """All values of one or more raw dictionaries as flat arrays (one entry per value).

    ``keys[perturbed[i]]`` is the perturbed key of value ``i``; ``affected[i]`` is its affected
    token or -1 for the cell-level value; ``state[i]`` its state (``None`` without states).
    Rows keep file order and list order, so merged lists are recovered by a stable group-by.
    """

    keys: list
    perturbed: np.ndarray
    affected: np.ndarray
    value: np.ndarray
    state: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.value.shape[0])

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_dicts(
        cls, dicts: Iterable[dict] | dict, states: Sequence[str] | None = None, source: str = "results"
    ) -> "RawShifts":
        """Flatten raw dictionaries (any iterable, consumed once); state-nested ones contribute the
        listed ``states`` (default all)."""
        if isinstance(dicts, dict):
            dicts = [dicts]
        key_index: dict = {}
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, object]] = []
        for i, d in enumerate(dicts):
            name = f"{source}[{i}]"
            if raw_kind(d) == "state":
                wanted = list(d) if states is None else list(states)
                for s in wanted:
                    if s not in d:
                        raise KeyError(f"State {s!r} is not in {name}; it holds states {sorted(map(str, d))}.")
                    parts.append((*_flatten(d[s], key_index, name), s))
            else:
                parts.append((*_flatten(d, key_index, name), None))
        keys = list(key_index)
        if not parts:
            return cls(keys, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), None)
        perturbed = np.concatenate([p[0] for p in parts])
        affected = np.concatenate([p[1] for p in parts])
        value = np.concatenate([p[2] for p in parts])
        state = None
        if any(p[3] is not None for p in parts):
            state = np.concatenate([np.full(p[2].shape[0], p[3], dtype=object) for p in parts])
        return cls(keys, perturbed, affected, value, state)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "RawShifts":
        """From a tidy DataFrame (see the module docstring), or a perturber's table (``read_results``),
        whose values are in ``shift_toward_state`` / ``cosine_similarity``."""
        if "value" not in df.columns and {SHIFT_COLUMN, COSINE_COLUMN} & set(df.columns):
            named = [df[c] for c in (SHIFT_COLUMN, COSINE_COLUMN) if c in df.columns]
            value = named[0] if len(named) == 1 else named[0].fillna(named[1])
            df = df.assign(value=value)
        missing = [c for c in ("perturbed", "affected", "value") if c not in df.columns]
        if missing:
            raise KeyError(f"Tidy perturbation results lack column(s) {missing}; expected {TIDY_COLUMNS}.")
        codes, uniq = pd.factorize(_object_array(list(df["perturbed"])) if len(df) else np.zeros(0, object))
        keys = [normalize_key(k) for k in uniq]
        aff = df["affected"]
        affected = aff.astype("Int64").fillna(-1).to_numpy(dtype=np.int64) if len(df) else np.zeros(0, np.int64)
        state = None
        if "state" in df.columns and df["state"].notna().any():
            state = df["state"].astype(object).where(df["state"].notna(), None).to_numpy()
        return cls(keys, codes.astype(np.int64), affected, df["value"].to_numpy(dtype=np.float64), state)

    # ---- views ---------------------------------------------------------------------------------
    def cell_positions(self) -> np.ndarray:
        """Position of each value in its (state, perturbed, affected) list."""
        if len(self) == 0:
            return np.zeros(0, np.int64)
        frame = {"p": self.perturbed, "a": self.affected}
        if self.state is not None:
            frame["s"] = pd.Series(self.state).fillna("\0").to_numpy()
        return pd.DataFrame(frame).groupby(list(frame), sort=False).cumcount().to_numpy(np.int64)

    def key_array(self) -> np.ndarray:
        """The distinct perturbed keys as an object array (index = code)."""
        return _object_array(self.keys)

    def to_frame(self) -> pd.DataFrame:
        """The tidy DataFrame (one row per value)."""
        perturbed = self.key_array()[self.perturbed] if len(self) else np.zeros(0, object)
        affected = pd.array(np.where(self.affected < 0, 0, self.affected), dtype="Int64")
        affected[self.affected < 0] = pd.NA
        state = self.state if self.state is not None else np.full(len(self), None, dtype=object)
        return pd.DataFrame(
            {
                "perturbed": perturbed,
                "affected": affected,
                "state": state,
                "cell": self.cell_positions(),
                "value": self.value,
            }
        )

    def to_raw(self) -> dict:
        """Back to the reference's dictionary (state-nested when states are present)."""
        n = len(self)
        # group rows by (state, perturbed, affected), groups in order of first appearance
        cols = {"p": self.perturbed, "a": self.affected}
        if self.state is not None:
            cols["s"] = pd.Series(self.state).fillna("\0").to_numpy()
        frame = pd.DataFrame(cols)
        gid = frame.groupby(list(cols), sort=False).ngroup().to_numpy() if n else np.zeros(0, np.int64)
        order = np.argsort(gid, kind="stable")
        counts = np.bincount(gid, minlength=int(gid.max()) + 1 if n else 0)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        first = order[bounds[:-1]]
        values = self.value[order].tolist()
        keys = self.key_array()
        nested: dict = {}
        flat: defaultdict = defaultdict(list)
        for g, row in enumerate(first):
            a = int(self.affected[row])
            key = (keys[self.perturbed[row]], CELL_EMB if a < 0 else a)
            vals = values[bounds[g]: bounds[g + 1]]
            s = None if self.state is None else self.state[row]
            if s is None:
                flat[key] = vals
            else:
                nested.setdefault(s, defaultdict(list))[key] = vals
        if nested and flat:
            raise ValueError("Results mix rows with and without a state; they cannot form one raw dictionary.")
        return nested if nested else flat


def _flatten(d: dict, key_index: dict, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(perturbed codes, affected tokens, values) of one non-nested raw dictionary."""
    n_keys = len(d)
    if n_keys == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    keys = list(d.keys())
    lists = list(d.values())
    lens = np.fromiter(map(len, lists), dtype=np.int64, count=n_keys)
    try:
        value = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.float64, count=int(lens.sum()))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} holds values that are not numbers ({exc}); legacy (anchor, token, combo) triples "
            "are only read by the combos=1 statistics."
        ) from exc
    try:
        first = _object_array([k[0] for k in keys])
        second = _object_array([k[1] for k in keys])
    except (TypeError, IndexError) as exc:
        raise ValueError(f"{name} has keys that are not (perturbed, affected) pairs: {exc}") from exc
    # affected: token or "cell_emb" -> -1
    is_cell = second == CELL_EMB
    if not is_cell.all():
        second = second.copy()
        second[is_cell] = -1
        try:
            affected_k = second.astype(np.int64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} has an affected-gene key that is neither a token nor 'cell_emb': {exc}") from exc
    else:
        affected_k = np.full(n_keys, -1, dtype=np.int64)
    # perturbed: factorize distinct keys (ints and tuples hash alike to their numpy originals)
    codes, uniq = pd.factorize(first)
    glob = np.fromiter(
        (key_index.setdefault(normalize_key(u), len(key_index)) for u in uniq), dtype=np.int64, count=len(uniq)
    )
    perturbed_k = glob[codes]
    return np.repeat(perturbed_k, lens), np.repeat(affected_k, lens), value


# ---------------------------------------------------------------------------------------------
# tidy converters and parquet
# ---------------------------------------------------------------------------------------------
def raw_to_tidy(obj: dict | Sequence[dict], states: Sequence[str] | None = None) -> pd.DataFrame:
    """Raw dictionary (or several, merged in order) → tidy DataFrame."""
    return RawShifts.from_dicts(obj, states=states).to_frame()


def tidy_to_raw(df: pd.DataFrame) -> dict:
    """Tidy DataFrame → raw dictionary; values of each key in ``cell`` order."""
    if "cell" in df.columns and len(df):
        df = df.sort_values("cell", kind="stable")
    return RawShifts.from_frame(df).to_raw()


def write_tidy(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a tidy DataFrame to parquet (atomically); ``perturbed`` becomes ``list<int64>``."""
    import pyarrow as pa

    shifts = RawShifts.from_frame(df)
    keys = [k if isinstance(k, tuple) else (k,) for k in shifts.keys]
    ulen = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    uflat = np.fromiter(itertools.chain.from_iterable(keys), dtype=np.int64, count=int(ulen.sum()))
    ustart = np.concatenate([[0], np.cumsum(ulen)[:-1]]).astype(np.int64)
    row_len = ulen[shifts.perturbed]
    offsets = np.concatenate([[0], np.cumsum(row_len)]).astype(np.int32)
    within = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], row_len)
    flat = uflat[np.repeat(ustart[shifts.perturbed], row_len) + within]
    state = df["state"] if "state" in df.columns else pd.Series([None] * len(df))
    cell = df["cell"].to_numpy(np.int64) if "cell" in df.columns else shifts.cell_positions()
    table = pa.table(
        {
            "perturbed": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int64())),
            "affected": pa.array(shifts.affected, pa.int64(), mask=shifts.affected < 0),
            "state": pa.array(state.astype(object).where(state.notna(), None).tolist(), pa.string()),
            "cell": pa.array(cell, pa.int64()),
            "value": pa.array(shifts.value, pa.float64()),
        }
    )
    return write_parquet(path, table)


def read_tidy(path: str | os.PathLike) -> pd.DataFrame:
    """Read a parquet file written by :func:`write_tidy` back into the tidy DataFrame."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Tidy perturbation results {p} do not exist.")
    table = pq.read_table(p)
    missing = [c for c in TIDY_COLUMNS if c not in table.column_names]
    if missing:
        raise KeyError(f"{p} lacks column(s) {missing}; was it written by write_tidy?")
    lists = table.column("perturbed").combine_chunks()
    offsets = np.asarray(lists.offsets)
    flat = np.asarray(lists.values, dtype=np.int64)
    lens = np.diff(offsets)
    n = len(lens)
    width = int(lens.max()) if n else 1
    padded = np.full((n, width), -1, dtype=np.int64)
    padded[np.arange(width)[None, :] < lens[:, None]] = flat
    uniq, inverse = np.unique(padded, axis=0, return_inverse=True) if n else (padded, np.zeros(0, np.int64))
    ukeys = [int(r[0]) if (r[1:] < 0).all() else tuple(int(x) for x in r if x >= 0) for r in uniq]
    affected = table.column("affected").to_pandas().astype("Int64")
    state = table.column("state").to_pandas().astype(object)
    return pd.DataFrame(
        {
            "perturbed": _object_array(ukeys)[np.asarray(inverse).reshape(-1)] if n else np.zeros(0, object),
            "affected": affected.array,
            "state": state.where(state.notna(), None).to_numpy(),
            "cell": table.column("cell").to_numpy(),
            "value": table.column("value").to_numpy(),
        }
    )
