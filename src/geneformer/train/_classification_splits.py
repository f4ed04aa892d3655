"""Splitting labelled cells: stratified, by listed ids, by an attribute with balanced sides, k folds.

Train/test splits are stratified by class; splits by a column such as the patient pick the *best*
trial of the balance search (the reference used the last); cross-validation folds are stratified
(by groups of the split attribute when there is one).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .._utils import ClassifierDataError, check_fraction, write_csv
from ..data import check_columns
from ._classification_data import SEED, column, sorted_labels

logger = logging.getLogger(__name__)


def check_split_counts(labels: Sequence[Any], test_size: float, what: str = "split",
                       id_class_dict: Mapping[int, Any] | None = None) -> None:
    """Raise when a stratified split cannot put every class on both sides."""
    counts = Counter(labels)
    names = (lambda k: id_class_dict.get(k, k)) if id_class_dict else (lambda k: k)
    small = {names(k): c for k, c in counts.items() if c < 2}
    if small:
        raise ClassifierDataError(
            f"Too few cells per class for the {what}: {small} (each class needs at least 2 cells, one on each "
            "side). Remove rare classes (rare_threshold=..., filter_data=...) or add cells."
        )
    n = len(labels)
    n_test = int(np.ceil(test_size * n))
    if n_test < len(counts) or n - n_test < len(counts):
        raise ClassifierDataError(
            f"The {what} of {n} cells with test fraction {test_size} gives {n_test} held-out cells, fewer than "
            f"the {len(counts)} classes; use a larger test fraction or fewer classes."
        )


def stratified_split(labels: Sequence[Any], test_size: float, seed: int = SEED,
                     stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)``, stratified by ``labels``, each sorted ascending."""
    from sklearn.model_selection import train_test_split

    check_fraction("test_size", test_size)
    idx = np.arange(len(labels))
    strat = np.asarray(labels, dtype=object).astype(str) if stratify else None
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, shuffle=True, stratify=strat)
    return np.sort(tr), np.sort(te)


def ids_split(ds: Any, split_id_dict: Mapping[str, Any], sides: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose ``split_id_dict['attr_key']`` value is in the ``sides[0]`` / ``sides[1]`` id lists."""
    for key in ("attr_key", *sides):
        if key not in split_id_dict:
            raise KeyError(f"split_id_dict needs the keys 'attr_key', {sides[0]!r} and {sides[1]!r}; missing {key!r}.")
    attr = split_id_dict["attr_key"]
    check_columns(ds, [attr], what="split_id_dict['attr_key']")
    values = column(ds, attr)
    a, b = set(split_id_dict[sides[0]]), set(split_id_dict[sides[1]])
    if a & b:
        raise ClassifierDataError(f"split_id_dict lists ids in both {sides[0]} and {sides[1]}: {sorted(a & b)[:10]}")
    first = np.flatnonzero([v in a for v in values])
    second = np.flatnonzero([v in b for v in values])
    for side, rows in zip(sides, (first, second)):
        if len(rows) == 0:
            raise ClassifierDataError(f"No cells have a {attr!r} value listed in split_id_dict[{side!r}].")
    return first, second


def _attr_pvalue(train: pd.Series, evals: pd.Series) -> tuple[float, Any, Any]:
    """p-value comparing one attribute between the two sides, plus per-side summaries."""
    from scipy.stats import chi2_contingency, ranksums

    both = pd.concat([train, evals])
    numeric = pd.api.types.is_numeric_dtype(both) and not pd.api.types.is_bool_dtype(both)
    if numeric:
        t, e = train.dropna().astype(float), evals.dropna().astype(float)
        p = float(ranksums(t, e).pvalue) if len(t) and len(e) else float("nan")
        return p, float(t.mean()) if len(t) else float("nan"), float(e.mean()) if len(e) else float("nan")
    kinds = {type(v) for v in both.dropna()}
    if len(kinds) > 1:
        raise ClassifierDataError(
            f"Attribute {train.name!r} mixes types {sorted(k.__name__ for k in kinds)}; "
            "make it all numbers or all text."
        )
    cats = sorted_labels(both.dropna())
    tc = train.value_counts().reindex(cats, fill_value=0)
    ec = evals.value_counts().reindex(cats, fill_value=0)
    p = float("nan")
    if len(cats) > 1 and tc.sum() and ec.sum():
        p = float(chi2_contingency(np.vstack([tc.to_numpy(), ec.to_numpy()]))[1])
    return p, dict(tc), dict(ec)


def balance_attr_splits(
    table: pd.DataFrame,
    attr_to_split: str,
    attr_to_balance: Sequence[str] | None,
    eval_size: float,
    max_trials: int = 100,
    pval_threshold: float = 0.1,
    state_key: str | None = "label",
) -> tuple[list, list, pd.DataFrame]:
    """Split the ids of ``attr_to_split`` (e.g. patients) into train / eval sides, balancing attributes.

    ``table`` has one row per cell with ``attr_to_split``, ``state_key`` and the ``attr_to_balance``
    columns (each constant per id). Each trial draws the eval ids at random (one per class first, when
    every id has a single class); numeric attributes are compared with a rank-sum test, categorical
    ones with a chi-square test. The first trial whose p-values are all >= ``pval_threshold`` and
    whose sides both hold every class is taken; otherwise the **best** trial (most classes covered,
    then highest mean p-value), not the last. Returns ``(train_ids, eval_ids, balance_df)``.
    """
    attrs = list(attr_to_balance or [])
    missing = [c for c in [attr_to_split, *attrs] if c not in table.columns]
    if missing:
        raise KeyError(f"Columns {missing} are not in the dataset; available: {list(table.columns)}.")
    per_id = table[[attr_to_split, *attrs]].drop_duplicates()
    dup = per_id[attr_to_split][per_id[attr_to_split].duplicated()]
    if len(dup):
        raise ClassifierDataError(
            f"attr_to_balance columns {attrs} must be constant within each {attr_to_split!r} value, but "
            f"{attr_to_split}={dup.iloc[0]!r} has several values."
        )
    per_id = per_id.set_index(attr_to_split)
    ids = sorted_labels(per_id.index)
    n_ids = len(ids)
    if n_ids < 2:
        raise ClassifierDataError(f"Splitting by {attr_to_split!r} needs at least 2 distinct values, got {ids}.")
    eval_num = min(max(1, int(round(n_ids * eval_size))), n_ids - 1)
    classes: list = []
    id_class: dict = {}
    if state_key is not None and state_key in table.columns:
        classes = sorted_labels(table[state_key])
        per_id_classes = table.groupby(attr_to_split)[state_key].agg(lambda s: set(s))
        id_class = {k: next(iter(v)) for k, v in per_id_classes.items() if len(v) == 1}
        cell_classes = per_id_classes.to_dict()
    single_class = bool(classes) and len(id_class) == n_ids
    rows, chosen = [], None
    for trial in range(int(max_trials)):
        rng = np.random.default_rng(trial)
        base: list = []
        if single_class:  # one id of each class in the eval side first, so every class is evaluated
            for cls in classes:
                members = [i for i in ids if id_class[i] == cls]
                if members and len(base) < eval_num:
                    base.append(members[int(rng.integers(len(members)))])
        rest = [i for i in ids if i not in set(base)]
        n_extra = eval_num - len(base)
        extra = list(rng.choice(np.array(rest, dtype=object), n_extra, replace=False)) if n_extra > 0 else []
        eval_ids = sorted_labels(base + extra)
        train_ids = [i for i in ids if i not in set(eval_ids)]
        row: dict[str, Any] = {"trial_num": trial, "train_ids": train_ids, "eval_ids": eval_ids}
        pvals = []
        for a in attrs:
            p, tr_sum, ev_sum = _attr_pvalue(per_id.loc[train_ids, a].rename(a), per_id.loc[eval_ids, a].rename(a))
            row[f"{a}_train_mean_or_counts"] = tr_sum
            row[f"{a}_eval_mean_or_counts"] = ev_sum
            row[f"{a}_pval"] = p
            pvals.append(p)
        finite = [p for p in pvals if not np.isnan(p)]
        row["mean_pval"] = float(np.mean(finite)) if finite else float("nan")
        covered = 0
        if classes:
            tr_cls = set().union(*(cell_classes[i] for i in train_ids))
            ev_cls = set().union(*(cell_classes[i] for i in eval_ids))
            covered = len(tr_cls & set(classes)) + len(ev_cls & set(classes))
        row["classes_covered"] = covered
        rows.append(row)
        if all(p >= pval_threshold for p in finite) and covered == 2 * len(classes):
            chosen = trial
            break
    df = pd.DataFrame(rows)
    if chosen is None:
        score = df["mean_pval"].fillna(-1.0)
        chosen = int(df.assign(_s=score).sort_values(["classes_covered", "_s", "trial_num"],
                                                     ascending=[False, False, True]).iloc[0]["trial_num"])
        logger.warning("No trial of %d met pval_threshold=%s with every class on both sides; using the best, "
                       "trial %d.", len(df), pval_threshold, chosen)
    df["chosen"] = df["trial_num"] == chosen
    best = df.loc[df["trial_num"] == chosen].iloc[0]
    return list(best["train_ids"]), list(best["eval_ids"]), df


def rows_for_ids(ds: Any, attr: str, ids: Iterable[Any]) -> np.ndarray:
    wanted = set(ids)
    return np.flatnonzero([v in wanted for v in column(ds, attr)])


def split_table(ds: Any, attr_to_split: str, attr_to_balance: Sequence[str] | None) -> pd.DataFrame:
    """One row per cell: the split attribute, the attributes to balance and the class (``label``)."""
    cols = [attr_to_split, *(attr_to_balance or [])]
    check_columns(ds, cols, what="attr_to_split / attr_to_balance")
    table = pd.DataFrame({c: column(ds, c) for c in cols})
    if "label" in ds.column_names:
        table["label"] = column(ds, "label")
    return table


def two_way_split(
    ds: Any,
    size: float,
    *,
    sides: tuple[str, str] = ("train", "test"),
    seed: int = SEED,
    split_id_dict: Mapping[str, Any] | None = None,
    attr_to_split: str | None = None,
    attr_to_balance: Sequence[str] | None = None,
    max_trials: int = 100,
    pval_threshold: float = 0.1,
    balance_csv: str | os.PathLike | None = None,
    stratify_column: str = "label",
    id_class_dict: Mapping[int, Any] | None = None,
    what: str = "train/test split",
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the two sides: by the ids of ``split_id_dict``, by ``attr_to_split`` values with balanced
    ``attr_to_balance`` (the trials go to ``balance_csv``), or stratified by ``stratify_column``;
    ``size`` is the second side's fraction, ``what`` names the split in errors."""
    if split_id_dict is not None:
        return ids_split(ds, split_id_dict, sides)
    if attr_to_split is not None:
        table = split_table(ds, attr_to_split, attr_to_balance)
        first, second, bdf = balance_attr_splits(table, attr_to_split, attr_to_balance, size, max_trials,
                                                 pval_threshold, "label")
        if balance_csv is not None:
            write_csv(balance_csv, bdf, index=False)
        return rows_for_ids(ds, attr_to_split, first), rows_for_ids(ds, attr_to_split, second)
    strat = column(ds, stratify_column)
    check_split_counts(strat, size, what, id_class_dict)
    return stratified_split(strat, size, seed=seed)


def cell_folds(ds: Any, k: int, *, seed: int = SEED, attr_to_split: str | None = None,
               id_class_dict: Mapping[int, Any] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` stratified folds ``[(train rows, eval rows)]`` by ``label``; grouped by ``attr_to_split``
    values (e.g. patients never on both sides) when given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(column(ds, "label"))
    if attr_to_split is not None:
        groups = np.asarray(column(ds, attr_to_split), dtype=object).astype(str)
        if len(set(groups)) < k:
            raise ClassifierDataError(
                f"{k}-fold cross-validation by {attr_to_split!r} needs at least {k} distinct values; "
                f"found {len(set(groups))}."
            )
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = list(splitter.split(np.zeros(len(y)), y, groups))
    else:
        counts = pd.Series(y).value_counts()
        small = {id_class_dict.get(c, c) if id_class_dict else c: int(n) for c, n in counts.items() if n < k}
        if small:
            raise ClassifierDataError(
                f"Too few cells per class for {k}-fold cross-validation: {small} (each class needs >= {k}). "
                "Use fewer folds, or drop rare classes (rare_threshold / filter_data)."
            )
        folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    return [(np.sort(tr), np.sort(te)) for tr, te in folds]
