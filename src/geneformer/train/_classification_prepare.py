"""Preparing a tokenized dataset for a classifier: filter, label, drop rare classes, downsample,
split, and write the datasets and ``{prefix}_id_class_dict.pkl`` (SPEC 5.2)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._utils import doc_params, save_dataset, write_pickle
from .._utils._docs import doc_filter_data
from ..data import filter_by_dict
from ._classification_data import (
    SEED,
    as_id_class_dict,
    check_data_options,
    check_free_column,
    check_label_column,
    downsample,
    encode_labels,
    load_labelled,
    remove_rare,
    select_rows,
)
from ._classification_genes import prepare_gene_split
from ._classification_splits import two_way_split
from ._classification_task import DOCS, ClassifierTask


@dataclass
class PreparedData:
    """What :func:`prepare_classifier_data` wrote: ``paths`` (``id_class_dict`` and ``train``/``test``,
    or ``labeled``) and the ``{class id: label}`` dictionary."""

    paths: dict[str, Path] = field(default_factory=dict)
    id_class_dict: dict[int, Any] = field(default_factory=dict)


@doc_params(**DOCS, filter_data=doc_filter_data)
def prepare_classifier_data(
    data: Any,
    output_directory: str | os.PathLike,
    output_prefix: str,
    task: ClassifierTask,
    *,
    filter_data: Mapping[str, Any] | None = None,
    rare_threshold: float = 0,
    max_ncells: int | None = None,
    max_ncells_per_class: int | None = None,
    seed: int = SEED,
    test_size: float = 0.1,
    split_id_dict: Mapping[str, Any] | None = None,
    attr_to_split: str | None = None,
    attr_to_balance: Sequence[str] | None = None,
    max_trials: int = 100,
    pval_threshold: float = 0.1,
    id_class_dict: Mapping[int, Any] | str | os.PathLike | None = None,
    stratify_column: str | None = None,
) -> PreparedData:
    """Filter, label and split a tokenized dataset; write the datasets and ``{prefix}_id_class_dict.pkl``.

    Cell classifiers: the ``task.state_key`` column becomes an integer ``label`` (ids follow the
    sorted labels); classes with at most ``rare_threshold`` of the cells are dropped. Gene
    classifiers: cells holding a class gene are kept and get per-token ``labels``. The cells are
    shuffled with ``seed`` and capped. Then ``{prefix}_labeled_train.dataset`` and
    ``{prefix}_labeled_test.dataset`` are written (split by ``split_id_dict`` {attr_key, train, test};
    or, for cells with 0 < ``test_size`` < 1, by ``attr_to_split`` with balanced ``attr_to_balance``
    (trials in ``{prefix}_train_test_balance_df.csv``) or stratified by ``stratify_column``), else
    one ``{prefix}_labeled.dataset``.

    Args:
        data: tokenized cells (a ``save_to_disk`` folder or Dataset).
        {output_directory}
        output_prefix: prefix of the written files.
        {task}
        {filter_data}
        rare_threshold: cell classifiers: drop classes with at most this fraction of the cells.
        max_ncells: keep at most this many cells (after shuffling).
        max_ncells_per_class: cell classifiers: at most this many cells per class.
        seed: the shuffle and split seed.
        test_size: the held-out fraction of cells.
        split_id_dict: ``{"attr_key": column, "train": [ids], "test": [ids]}``.
        attr_to_split, attr_to_balance, max_trials, pval_threshold: the split by attribute.
        {id_class_dict} None: new ids.
        stratify_column: the column a stratified split keeps balanced (None: the label).
    """
    filter_data = check_data_options(filter_data, rare_threshold, max_ncells, max_ncells_per_class)
    out_dir = Path(output_directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load_labelled(data)
    check_free_column(ds, task.label_column, task.kind)
    key = task.state_key
    if task.kind == "cell":
        check_label_column(ds, key, what=f"dataset {data}")
    ds = filter_by_dict(ds, filter_data, nproc=None)
    given = as_id_class_dict(id_class_dict) if id_class_dict is not None else None
    if task.kind == "cell":
        check_label_column(ds, key, what="filtered dataset")
        ds = remove_rare(ds, key, rare_threshold)
        ds = downsample(ds, key, max_ncells, max_ncells_per_class, seed=seed)
        check_label_column(ds, key, what="filtered and downsampled dataset")
        ds, id_class_dict = encode_labels(ds, key, given)
    else:
        ds = prepare_gene_split(ds, task.token_class(given), task.vocab_size, max_ncells=max_ncells, seed=seed,
                                what="gene_class_dict")
        id_class_dict = given or task.default_id_class_dict()
    prepared = PreparedData(id_class_dict=id_class_dict)
    paths = prepared.paths
    paths["id_class_dict"] = write_pickle(out_dir / f"{output_prefix}_id_class_dict.pkl", id_class_dict)
    if split_id_dict is None and not (task.kind == "cell" and 0 < test_size < 1):
        paths["labeled"] = save_dataset(ds, out_dir / f"{output_prefix}_labeled.dataset")
        return prepared
    strat_col = stratify_column or "label"
    by_label = strat_col in ("label", key)
    tr, te = two_way_split(ds, test_size, seed=seed, split_id_dict=split_id_dict, attr_to_split=attr_to_split,
                           attr_to_balance=attr_to_balance, max_trials=max_trials, pval_threshold=pval_threshold,
                           balance_csv=out_dir / f"{output_prefix}_train_test_balance_df.csv",
                           stratify_column="label" if by_label else strat_col,
                           id_class_dict=id_class_dict if by_label else None)
    paths["train"] = save_dataset(select_rows(ds, tr), out_dir / f"{output_prefix}_labeled_train.dataset")
    paths["test"] = save_dataset(select_rows(ds, te), out_dir / f"{output_prefix}_labeled_test.dataset")
    return prepared
