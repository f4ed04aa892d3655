"""Labelled data for cell and gene classifiers: rows, labels, rare classes and downsampling.

Everything here is deterministic given the seed (42, as the reference): class ids follow the
*sorted* labels, so they are the same in every process whatever ``PYTHONHASHSEED`` is; rare classes
are removed by their fraction of cells.

Datasets are handled through Arrow/numpy (no per-cell Python loops where it matters) and kept in
memory, so that read-only input folders never need a cache file beside them.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .._utils import ClassifierDataError, check_filter_data, check_fraction, check_positive_int, load_plain_file
from ..data import as_sequences, load_tokenized
from ..data import column_values as column
from ..vocab import load_dict_file

logger = logging.getLogger(__name__)

SEED = 42


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
#: Data-only classes of the classifier's pickles: the ``PredictionOutput`` of ``predictions.pkl``.
_PICKLE_CLASSES = (("transformers.trainer_utils", "PredictionOutput"),)


def load_pickle(path: str | os.PathLike, what: str = "classifier file") -> Any:
    """A classifier pickle, through the restricted loader (plain data, arrays, ``PredictionOutput``)."""
    return load_plain_file(path, what, allow=_PICKLE_CLASSES, error=ClassifierDataError)


def load_id_class_dict(path: str | os.PathLike) -> dict[int, Any]:
    """Read a ``{prefix}_id_class_dict.pkl`` file (ids 0..C-1), or the same dictionary as JSON."""
    obj = load_dict_file(path)  # JSON by extension, else the restricted unpickler
    if not obj:
        raise ClassifierDataError(f"{path} does not hold a non-empty {{class id: label}} dictionary.")
    try:
        ids = sorted(int(k) for k in obj)
    except (TypeError, ValueError):
        raise ClassifierDataError(f"{path}: class ids must be integers 0..C-1, got {list(obj)[:5]}.") from None
    if ids != list(range(len(ids))):
        raise ClassifierDataError(f"{path}: class ids must be 0..{len(ids) - 1}, got {ids}.")
    return {int(k): v for k, v in obj.items()}


def as_id_class_dict(id_class_dict: Mapping[int, Any] | str | os.PathLike) -> dict[int, Any]:
    """``{class id: label}`` given as a mapping or as the path of its pickle."""
    if isinstance(id_class_dict, Mapping):
        return {int(k): v for k, v in id_class_dict.items()}
    return load_id_class_dict(id_class_dict)


def load_labelled(data: Any) -> Any:
    """A tokenized dataset (folder or Dataset) with a ``length`` column."""
    ds = load_tokenized(data)
    if "length" not in ds.column_names:
        ds = with_column(ds, "length", as_sequences(ds).lengths)
    return ds


# ------------------------------------------------------------------------------------------------
# Rows and labels
# ------------------------------------------------------------------------------------------------
def sorted_labels(values: Iterable[Any]) -> list:
    """Distinct labels in a stable order: sorted, or sorted by text when types are mixed."""
    distinct = set(v for v in values)
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=lambda v: (type(v).__name__, str(v)))


def make_id_class_dict(values: Iterable[Any]) -> dict[int, Any]:
    """``{class id: label}`` over the sorted distinct labels (reproducible across processes)."""
    return {i: label for i, label in enumerate(sorted_labels(values))}


def with_column(ds: Any, name: str, values: Sequence[Any] | np.ndarray) -> Any:
    """``ds`` with column ``name`` set to ``values`` (replacing it), in memory."""
    values = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if name in ds.column_names:
        ds = ds.remove_columns(name)
    return ds.map(lambda _, idx: {name: values[np.asarray(idx)]}, batched=True, with_indices=True,
                  keep_in_memory=True, desc=None)


def select_rows(ds: Any, rows: Sequence[int] | np.ndarray) -> Any:
    return ds.select(np.asarray(rows, dtype=np.int64), keep_in_memory=True)


def shuffle_rows(n: int, seed: int = SEED) -> np.ndarray:
    """The permutation of ``Dataset.shuffle(seed)`` (``default_rng(seed).permutation``)."""
    return np.random.default_rng(seed).permutation(n)


def shuffled(ds: Any, seed: int = SEED) -> Any:
    """``ds`` in the order of ``Dataset.shuffle(seed)``, in memory."""
    return select_rows(ds, shuffle_rows(len(ds), seed))


def check_label_column(ds: Any, label: str, what: str = "dataset") -> list:
    """The label values of ``ds``; raises for a missing column or fewer than two classes."""
    if label not in ds.column_names:
        raise KeyError(
            f"The label column {label!r} is not in the {what}; available columns: {ds.column_names}. "
            "Carry it through tokenization with custom_attr_name_dict={...: ...}."
        )
    values = column(ds, label)
    if any(v is None for v in values):
        n = sum(v is None for v in values)
        raise ClassifierDataError(
            f"{n} cells of the {what} have no value in {label!r}; filter them out (filter_data) first."
        )
    classes = sorted_labels(values)
    if len(classes) < 2:
        raise ClassifierDataError(
            f"The label column {label!r} of the {what} has a single class ({classes!r}) after filtering; "
            "classification needs at least two classes. Check filter_data / cell_state_dict['states']."
        )
    return values


def check_free_column(ds: Any, name: str, kind: str) -> None:
    """Refuse a dataset that already has the label column a classifier creates."""
    if name in ds.column_names:
        raise ValueError(
            f"The dataset already has a {name!r} column, which the {kind} classifier creates; "
            f"rename or remove it (e.g. dataset.rename_column('{name}', 'orig_{name}'))."
        )


def check_data_options(filter_data: Any = None, rare_threshold: Any = 0, max_ncells: Any = None,
                       max_ncells_per_class: Any = None) -> dict | None:
    """Check the cell-selection options; returns ``filter_data`` with every value a list."""
    check_positive_int("max_ncells", max_ncells, allow_none=True)
    check_positive_int("max_ncells_per_class", max_ncells_per_class, allow_none=True)
    check_fraction("rare_threshold", rare_threshold, closed_low=True)
    return check_filter_data(filter_data)


def remove_rare(ds: Any, label: str, rare_threshold: float) -> Any:
    """Drop classes whose fraction of cells is <= ``rare_threshold`` (the reference's intent)."""
    if not rare_threshold:
        return ds
    values = column(ds, label)
    counts = Counter(values)
    n = len(values)
    rare = {k for k, c in counts.items() if c / n <= rare_threshold}
    if not rare:
        return ds
    logger.info("Removing %d rare class(es) (fraction <= %s): %s", len(rare), rare_threshold,
                sorted_labels(rare))
    keep = np.fromiter((v not in rare for v in values), dtype=bool, count=n)
    if not keep.any():
        raise ClassifierDataError(f"rare_threshold={rare_threshold} removes every class of {label!r}.")
    return select_rows(ds, np.flatnonzero(keep))


def downsample(ds: Any, label: str | None, max_ncells: int | None = None,
               max_ncells_per_class: int | None = None, seed: int = SEED) -> Any:
    """Shuffle (seed 42), keep the first ``max_ncells``, then at most ``max_ncells_per_class`` per class.

    The per-class cap keeps a seeded random subset of each larger class; the shuffled order is kept.
    """
    order = shuffle_rows(len(ds), seed)
    if max_ncells is not None:
        order = order[: check_positive_int("max_ncells", max_ncells)]
    if max_ncells_per_class is not None and label is not None:
        cap = check_positive_int("max_ncells_per_class", max_ncells_per_class)
        labels = np.asarray(column(ds, label), dtype=object)[order]
        rng = np.random.default_rng(seed)
        keep = np.ones(len(order), dtype=bool)
        for cls in sorted_labels(labels):
            pos = np.flatnonzero(labels == cls)
            if len(pos) > cap:
                drop = np.setdiff1d(pos, rng.choice(pos, cap, replace=False))
                keep[drop] = False
        order = order[keep]
    return select_rows(ds, order)


def encode_labels(ds: Any, state_key: str, id_class_dict: Mapping[int, Any] | None = None,
                  out_column: str = "label") -> tuple[Any, dict[int, Any]]:
    """Replace ``state_key`` by an integer ``label`` column; returns ``(dataset, id_class_dict)``.

    With ``id_class_dict`` (e.g. from an earlier run) its ids are reused; labels it does not know raise.
    """
    values = column(ds, state_key)
    if id_class_dict is None:
        id_class_dict = make_id_class_dict(values)
    class_id = {v: k for k, v in id_class_dict.items()}
    unknown = sorted_labels(set(values) - set(class_id))
    if unknown:
        raise ClassifierDataError(
            f"Labels {unknown} of {state_key!r} are not in the given id_class_dict ({list(class_id)}); "
            "prepare the data without id_class_dict_path or extend the dictionary."
        )
    ids = np.fromiter((class_id[v] for v in values), dtype=np.int64, count=len(values))
    ds = ds.remove_columns(state_key)
    ds = with_column(ds, out_column, ids)
    return ds, dict(id_class_dict)

