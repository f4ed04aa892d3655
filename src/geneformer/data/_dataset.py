"""Selecting cells of a tokenized dataset: load, filter by attribute values, downsample, sort by length.

These reproduce the reference's row selection (``shuffle(seed=42)``, keep the first ``max_ncells``,
then a stable sort by length, longest first) so that outputs line up with reference outputs, and fix
its substring bug: a scalar filter value is matched by equality, never with Python's ``in`` on strings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .._utils import InputFileError, check_positive_int


def load_dataset_folder(path: str | os.PathLike) -> Any:
    """``datasets.load_from_disk`` (memory-mapped) with clear errors; a Dataset or a DatasetDict."""
    import datasets

    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Tokenized dataset {path} does not exist.")
    try:
        return datasets.load_from_disk(str(path))
    except IndexError as exc:  # datasets cannot reopen a saved dataset of zero rows
        raise InputFileError(f"Dataset {path} has no cells; nothing to run on.") from exc
    except (FileNotFoundError, ValueError, OSError, KeyError, TypeError) as exc:
        raise InputFileError(
            f"{path} is not a Hugging Face dataset folder (save_to_disk output) ({exc}). "
            "Tokenize the cells first with `geneformer tokenize`."
        ) from exc


def load_tokenized(data: Any) -> "datasets.Dataset":  # noqa: F821
    """A tokenized dataset from a ``save_to_disk`` folder (or a Dataset, passed through)."""
    import datasets

    where = "The dataset"
    if isinstance(data, datasets.Dataset):
        ds = data
    else:
        where = f"Dataset {data}"
        path = Path(os.fspath(data)).expanduser()
        ds = load_dataset_folder(path)
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise ValueError(f"{path} holds several splits {list(ds)}; pass one split's folder.")
            ds = next(iter(ds.values()))
    if "input_ids" not in ds.column_names:
        raise KeyError(f"{where} has no 'input_ids' column (columns: {ds.column_names}); tokenize it first.")
    if len(ds) == 0 and where != "The dataset":
        raise InputFileError(f"{where} has no cells; nothing to run on (was it tokenized from an empty file?).")
    return ds


def check_columns(ds: Any, columns: Iterable[str] | None, what: str = "label") -> list[str]:
    """Raise a KeyError naming missing columns and the available ones."""
    columns = [] if columns is None else ([columns] if isinstance(columns, str) else list(columns))
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise KeyError(
            f"{what} column(s) {missing} are not in the dataset; available columns: {ds.column_names}. "
            "Carry them through tokenization with custom_attr_name_dict."
        )
    return columns


def _as_list(values: Any) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return [values]
    return list(values)


def filter_by_dict(ds: Any, filters: Mapping[str, Any] | None, nproc: int | None = None) -> Any:
    """Keep rows whose column value equals one of the given values, for every column in ``filters``.

    A scalar value is a one-element list (equality), fixing the reference's substring match where
    ``"cm"`` would also select ``"dcm"``. Raises when a column is missing or nothing is left.
    """
    if not filters:
        return ds
    check_columns(ds, list(filters), what="filter")
    keep = np.ones(len(ds), dtype=bool)
    for col, values in filters.items():
        allowed = set(_as_list(values))
        column = ds.with_format("arrow")[col].to_pylist()
        keep &= np.fromiter((v in allowed for v in column), dtype=bool, count=len(column))
    if not keep.any():
        raise ValueError(f"No cells are left after filtering by {dict(filters)}; check the values.")
    if keep.all():
        return ds
    return ds.select(np.flatnonzero(keep), keep_in_memory=True)


def lengths_of(ds: Any) -> np.ndarray:
    """Token counts per cell: the ``length`` column when present, else counted from ``input_ids``."""
    if "length" in ds.column_names:
        return np.asarray(ds.with_format("numpy")["length"], dtype=np.int64)
    import pyarrow.compute as pc

    col = ds.with_format("arrow")["input_ids"]
    return np.asarray(pc.list_value_length(col), dtype=np.int64)


def downsample_and_sort(ds: Any, max_ncells: int | None, seed: int = 42) -> Any:
    """Reference row selection: shuffle(seed) and keep ``max_ncells`` when over it, then sort by length descending.

    ``Dataset.shuffle(seed)`` is ``np.random.default_rng(seed).permutation(N)``; Arrow's sort is
    stable, so equal lengths keep their shuffled order. Computed with numpy so nothing is written
    beside a read-only dataset.
    """
    check_positive_int("max_ncells", max_ncells, allow_none=True)
    n = len(ds)
    if n == 0:
        raise ValueError("The dataset has no cells.")
    idx = np.arange(n)
    if max_ncells is not None and n > int(max_ncells):
        idx = np.random.default_rng(seed).permutation(n)[: int(max_ncells)]
    lengths = lengths_of(ds)[idx]
    order = idx[np.argsort(-lengths, kind="stable")]
    return ds.select(order, keep_in_memory=True)


def column_values(ds: Any, column: str) -> list:
    """A column as a Python list (fast Arrow path)."""
    return ds.with_format("arrow")[column].to_pylist()
