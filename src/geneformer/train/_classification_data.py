"""Data preparation for cell and gene classifiers: labels, filters, downsampling and splits.

Everything here is deterministic given the seed (42, as the reference): class ids follow the
*sorted* labels, so they are the same in every process whatever ``PYTHONHASHSEED`` is; rare classes
are removed by their fraction of cells; train/test splits are stratified by class; splits by a
column such as the patient pick the *best* trial of the balance search.

Datasets are handled through Arrow/numpy (no per-cell Python loops where it matters) and kept in
memory, so that read-only input folders never need a cache file beside them.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import IGNORE_INDEX
from .._utils import ClassifierDataError
from ..data import as_sequences, check_columns

logger = logging.getLogger(__name__)

SEED = 42


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def save_pickle(obj: Any, path: str | os.PathLike) -> Path:
    """Pickle ``obj`` to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump(obj, fh)
    os.replace(tmp, path)
    return path


def load_pickle(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    with open(path, "rb") as fh:
        return pickle.load(fh)


def save_dataset(ds: Any, path: str | os.PathLike) -> Path:
    """``save_to_disk`` under a temporary name, then rename (an existing folder is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_csv(tmp, **kwargs)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------
# Labels
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


def load_id_class_dict(path: str | os.PathLike) -> dict[int, Any]:
    """Read a ``{prefix}_id_class_dict.pkl`` file (ids 0..C-1)."""
    obj = load_pickle(path)
    if not isinstance(obj, Mapping) or not obj:
        raise ClassifierDataError(f"{path} does not hold a non-empty {{class id: label}} dictionary.")
    ids = sorted(int(k) for k in obj)
    if ids != list(range(len(ids))):
        raise ClassifierDataError(f"{path}: class ids must be 0..{len(ids) - 1}, got {ids}.")
    return {int(k): v for k, v in obj.items()}


def column(ds: Any, name: str) -> list:
    """One column as a Python list (Arrow path, no other columns read)."""
    return ds.with_format("arrow")[name].to_pylist()


def with_column(ds: Any, name: str, values: Sequence[Any] | np.ndarray) -> Any:
    """``ds`` with column ``name`` set to ``values`` (replacing it), in memory."""
    values = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if name in ds.column_names:
        ds = ds.remove_columns(name)
    return ds.map(lambda _, idx: {name: values[np.asarray(idx)]}, batched=True, with_indices=True,
                  keep_in_memory=True, desc=None)


def select_rows(ds: Any, rows: Sequence[int] | np.ndarray) -> Any:
    return ds.select(np.asarray(rows, dtype=np.int64), keep_in_memory=True)


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


def shuffle_rows(n: int, seed: int = SEED) -> np.ndarray:
    """The permutation of ``Dataset.shuffle(seed)`` (``default_rng(seed).permutation``)."""
    return np.random.default_rng(seed).permutation(n)


def downsample(ds: Any, label: str | None, max_ncells: int | None = None,
               max_ncells_per_class: int | None = None, seed: int = SEED) -> Any:
    """Shuffle (seed 42), keep the first ``max_ncells``, then at most ``max_ncells_per_class`` per class.

    The per-class cap keeps a seeded random subset of each larger class; the shuffled order is kept.
    """
    order = shuffle_rows(len(ds), seed)
    if max_ncells is not None:
        if int(max_ncells) < 1:
            raise ValueError(f"max_ncells must be >= 1, got {max_ncells}.")
        order = order[: int(max_ncells)]
    if max_ncells_per_class is not None and label is not None:
        cap = int(max_ncells_per_class)
        if cap < 1:
            raise ValueError(f"max_ncells_per_class must be >= 1, got {max_ncells_per_class}.")
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


# ------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------
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

    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}.")
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


# ------------------------------------------------------------------------------------------------
# Gene classes
# ------------------------------------------------------------------------------------------------
def gene_class_tokens(gene_class_dict: Mapping[Any, Iterable[str]], token_dict: Mapping[str, int],
                      gene_name_id: Mapping[str, str] | None = None) -> tuple[dict[Any, list[int]], list[str]]:
    """Convert ``{class: [Ensembl IDs or symbols]}`` to ``{class: [token ids]}`` (de-duplicated, ordered).

    Unknown genes are dropped and returned (never kept as ``None``); a class left without any known
    gene, or a gene in two classes, raises.
    """
    if not isinstance(gene_class_dict, Mapping) or not gene_class_dict:
        raise ClassifierDataError("gene_class_dict must be a non-empty dict {class label: [Ensembl IDs]}.")
    if len(gene_class_dict) < 2:
        raise ClassifierDataError(
            f"gene_class_dict has one class ({list(gene_class_dict)}); a gene classifier needs at least two."
        )
    out: dict[Any, list[int]] = {}
    unknown: list[str] = []
    owner: dict[int, Any] = {}
    for cls, genes in gene_class_dict.items():
        if isinstance(genes, str):
            genes = [genes]
        tokens: list[int] = []
        for g in genes:
            t = token_dict.get(str(g))
            if t is None and gene_name_id:
                ens = gene_name_id.get(str(g))
                t = token_dict.get(ens) if ens else None
            if t is None:
                unknown.append(str(g))
                continue
            t = int(t)
            if t in owner and owner[t] != cls:
                raise ClassifierDataError(f"Gene {g} is listed in two classes: {owner[t]!r} and {cls!r}.")
            if t not in owner:
                owner[t] = cls
                tokens.append(t)
        out[cls] = tokens
    if unknown:
        logger.warning("%d gene(s) of gene_class_dict are not in the vocabulary and are ignored: %s",
                       len(unknown), unknown[:50])
    empty = [c for c, t in out.items() if not t]
    if empty:
        raise ClassifierDataError(
            f"Class(es) {empty} of gene_class_dict have no gene in the vocabulary (unknown genes: {unknown[:20]}"
            f"{' ...' if len(unknown) > 20 else ''}). Use Ensembl IDs of the model's vocabulary (V1 vs V2)."
        )
    return out, unknown


def token_lookup(token_class: Mapping[int, int], vocab_size: int) -> np.ndarray:
    """Array ``lut[token] = class id`` (-100 for every other token)."""
    size = max(int(vocab_size), max(token_class, default=0) + 1)
    lut = np.full(size, IGNORE_INDEX, dtype=np.int64)
    for t, c in token_class.items():
        lut[int(t)] = int(c)
    return lut


def cells_with_tokens(ds: Any, tokens: Iterable[int]) -> np.ndarray:
    """Boolean per cell: does it contain at least one of ``tokens``."""
    seqs = as_sequences(ds)
    wanted = np.asarray(sorted(set(int(t) for t in tokens)), dtype=np.int64)
    hits = np.isin(seqs.values, wanted)
    rows = np.repeat(np.arange(len(seqs)), seqs.lengths)
    return np.bincount(rows[hits], minlength=len(seqs)) > 0


def label_gene_tokens(ds: Any, token_class: Mapping[int, int], vocab_size: int) -> Any:
    """Set a per-token ``labels`` column: class id for class genes, -100 elsewhere."""
    lut = token_lookup(token_class, vocab_size)
    if "labels" in ds.column_names:
        ds = ds.remove_columns("labels")

    def _label(batch):
        return {"labels": [lut[np.asarray(x, dtype=np.int64)] for x in batch["input_ids"]]}

    return ds.map(_label, batched=True, keep_in_memory=True, desc=None)


def gene_token_counts(ds: Any, token_class: Mapping[int, int]) -> Counter:
    """Occurrences of each class's tokens over all cells (for gene balancing)."""
    seqs = as_sequences(ds)
    vals = seqs.values
    out: Counter = Counter()
    for t, c in token_class.items():
        out[c] += int(np.count_nonzero(vals == int(t)))
    return out


def balance_gene_classes(ds: Any, token_class: dict[int, int], max_trials: int = 25) -> dict[int, int]:
    """Binary gene tasks: drop random majority-class genes until token occurrences are within 0.8-1.25."""
    classes = sorted(set(token_class.values()))
    if len(classes) != 2:
        raise ClassifierDataError("gene_balance is only for binary gene classes.")
    seqs = as_sequences(ds)
    occ = Counter(seqs.values.tolist())
    current = dict(token_class)
    boost = 1.0
    for trial in range(max_trials):
        counts = {c: sum(occ.get(t, 0) for t, k in current.items() if k == c) for c in classes}
        if min(counts.values()) == 0:
            break
        ratio = counts[classes[0]] / counts[classes[1]]
        if 0.8 <= ratio <= 1.25:
            break
        major = classes[0] if ratio > 1 else classes[1]
        r = ratio if ratio > 1 else 1 / ratio
        genes = sorted(t for t, k in current.items() if k == major)
        if len(genes) <= 1:
            break
        n_drop = max(1, int(np.floor(len(genes) - len(genes) / (r * boost))))
        n_drop = min(n_drop, len(genes) - 1)
        rng = np.random.default_rng(trial)
        drop = set(rng.choice(genes, n_drop, replace=False).tolist())
        trial_map = {t: k for t, k in current.items() if t not in drop}
        new_counts = {c: sum(occ.get(t, 0) for t, k in trial_map.items() if k == c) for c in classes}
        new_ratio = new_counts[classes[0]] / max(new_counts[classes[1]], 1)
        if (ratio > 1) != (new_ratio > 1) and not 0.8 <= new_ratio <= 1.25:
            boost *= 1.1  # overshot: drop fewer next time
            continue
        boost *= 0.9 if not 0.8 <= new_ratio <= 1.25 else 1.0
        current = trial_map
    return current


def gene_folds(token_class: Mapping[int, int], n_splits: int, valid_frac: float, test_frac: float,
               seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """Partition class genes into ``n_splits`` stratified folds: ``[(train, valid, test)]`` token lists.

    Each held-out fold is divided into validation and test genes (stratified when possible) in the
    proportion ``valid_frac : test_frac``; with ``test_frac == 0`` the test list is empty.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    tokens = np.asarray(sorted(token_class), dtype=np.int64)
    labels = np.asarray([token_class[int(t)] for t in tokens])
    counts = Counter(labels.tolist())
    small = {c: n for c, n in counts.items() if n < n_splits}
    if small:
        raise ClassifierDataError(
            f"Gene classes {small} (class id: genes in the vocabulary) have fewer genes than the {n_splits} "
            f"folds; each class needs at least {n_splits} genes."
        )
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    out = []
    for tr, held in skf.split(tokens, labels):
        valid, test = tokens[held], np.asarray([], dtype=np.int64)
        if test_frac > 0 and len(held) > 1:
            frac = test_frac / (valid_frac + test_frac)
            try:
                valid, test = train_test_split(tokens[held], test_size=frac, random_state=seed,
                                               stratify=labels[held])
            except ValueError:
                logger.warning("Held-out genes too few to stratify validation/test; splitting them at random.")
                valid, test = train_test_split(tokens[held], test_size=frac, random_state=seed)
        out.append((sorted(tokens[tr].tolist()), sorted(np.asarray(valid).tolist()),
                    sorted(np.asarray(test).tolist())))
    return out


def class_weights_for(labels: np.ndarray, num_classes: int, spec: Any) -> list[float] | None:
    """Per-class loss weights: None, "balanced" (n / (C * count)), or an explicit list/dict."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"class_weights must be None, 'balanced', a list or a dict; got {spec!r}.")
        labels = labels[labels != IGNORE_INDEX]
        counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(float)
        w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
        return w.tolist()
    if isinstance(spec, Mapping):
        return [float(spec.get(i, 1.0)) for i in range(num_classes)]
    w = [float(x) for x in spec]
    if len(w) != num_classes:
        raise ValueError(f"class_weights has {len(w)} values but there are {num_classes} classes.")
    return w
