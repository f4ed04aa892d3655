"""Gene classes: the genes of each class as tokens, per-token labels, gene balancing and the folds
that hold genes (not cells) out for validation and test."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterable, Mapping

import numpy as np

from .._constants import IGNORE_INDEX
from .._utils import ClassifierDataError
from ..data import as_sequences
from ._classification_data import SEED, downsample, select_rows

logger = logging.getLogger(__name__)


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


def token_classes(class_tokens: Mapping[Any, Iterable[int]],
                  id_class_dict: Mapping[int, Any] | None = None) -> dict[int, int]:
    """``{token: class id}`` for every class gene; class ids follow ``id_class_dict``, else the
    order of ``class_tokens``."""
    classes = list(class_tokens)
    if id_class_dict is not None:
        name_id = {v: k for k, v in id_class_dict.items()}
        missing = [c for c in classes if c not in name_id]
        if missing:
            raise ClassifierDataError(f"Classes {missing} are not in the id_class_dict {id_class_dict}.")
    else:
        name_id = {c: i for i, c in enumerate(classes)}
    return {t: name_id[c] for c, toks in class_tokens.items() for t in toks}


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
               seed: int = 0, id_class_dict: Mapping[int, Any] | None = None,
               ) -> list[tuple[list[int], list[int], list[int]]]:
    """Partition class genes into ``n_splits`` stratified folds: ``[(train, valid, test)]`` token lists.

    Each held-out fold is divided into validation and test genes (stratified when possible) in the
    proportion ``valid_frac : test_frac``; with ``test_frac == 0`` the test list is empty.
    ``id_class_dict`` names the classes in errors.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    tokens = np.asarray(sorted(token_class), dtype=np.int64)
    labels = np.asarray([token_class[int(t)] for t in tokens])
    counts = Counter(labels.tolist())
    small = {(id_class_dict or {}).get(c, c): n for c, n in counts.items() if n < n_splits}
    if small:
        raise ClassifierDataError(
            f"Gene classes {small} (class: genes in the vocabulary) have fewer genes than the {n_splits} "
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


def prepare_gene_split(ds: Any, token_class: Mapping[int, int], vocab_size: int, *, balance: bool = False,
                       max_ncells: int | None = None, seed: int = SEED, what: str = "this split") -> Any:
    """The cells holding a gene of ``token_class`` (its classes balanced first with ``balance``),
    shuffled and capped at ``max_ncells``, with per-token ``labels`` for those genes only."""
    keep = cells_with_tokens(ds, token_class)
    if not keep.any():
        raise ClassifierDataError(f"No cell contains a gene of {what}; check the gene IDs and the vocabulary "
                                  "version of the data, or add cells.")
    sub = select_rows(ds, np.flatnonzero(keep))
    if balance:
        token_class = balance_gene_classes(sub, dict(token_class))
        sub = select_rows(sub, np.flatnonzero(cells_with_tokens(sub, token_class)))
    sub = downsample(sub, None, max_ncells, None, seed=seed)
    return label_gene_tokens(sub, token_class, vocab_size)


def fold_datasets(ds: Any, token_class: Mapping[int, int], fold: tuple[list[int], list[int], list[int]],
                  vocab_size: int, *, balance: bool = False, max_ncells: int | None = None,
                  seed: int = SEED) -> tuple[Any, Any, Any | None]:
    """The train / validation / test datasets of one gene fold (test None when it holds no gene);
    only the training genes are balanced."""
    train, valid, test = ({t: token_class[t] for t in genes} for genes in fold)
    kw = dict(vocab_size=vocab_size, max_ncells=max_ncells, seed=seed)
    return (prepare_gene_split(ds, train, balance=balance, what="the training genes", **kw),
            prepare_gene_split(ds, valid, what="the validation genes", **kw),
            prepare_gene_split(ds, test, what="the test genes", **kw) if test else None)
