"""Pretraining corpora: opening a tokenized corpus (with its ``length`` column) and checking that it
fits the model and vocabulary before any training step runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._utils import CorpusError
from ..data import load_dataset_folder


# ------------------------------------------------------------------------------------------------
# Dataset helpers
# ------------------------------------------------------------------------------------------------
def column_array(dataset: Any, column: str) -> np.ndarray:
    """One scalar column as a numpy array, read through Arrow without loading other columns."""
    return np.asarray(dataset.with_format("numpy", columns=[column])[:][column])


def add_length_column(dataset: Any, num_proc: int | None = None) -> Any:
    """Return ``dataset`` with a ``length`` column (number of tokens of each cell)."""
    kwargs: dict[str, Any] = {"batched": True, "num_proc": num_proc}
    if not _cache_writable(dataset):
        kwargs["keep_in_memory"] = True
    return dataset.map(lambda b: {"length": [len(x) for x in b["input_ids"]]}, **kwargs)


def _cache_writable(dataset: Any) -> bool:
    files = getattr(dataset, "cache_files", None) or []
    return all(os.access(Path(f["filename"]).parent, os.W_OK) for f in files)


def load_corpus(data: Any, *, compute_length: bool = False) -> tuple[Any, Any]:
    """Open a tokenized corpus: a path (``load_from_disk``, memory-mapped), a ``Dataset`` or a
    ``DatasetDict``. Returns ``(train, eval_or_None)``."""
    import datasets

    if isinstance(data, (str, os.PathLike)):
        data = load_dataset_folder(data)
    eval_ds = None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise ValueError(f"The DatasetDict has splits {list(data)}; it needs a 'train' split.")
        eval_ds = next((data[k] for k in ("validation", "test", "eval") if k in data), None)
        data = data["train"]
    if not isinstance(data, datasets.Dataset):
        raise TypeError(f"Expected a dataset path, Dataset or DatasetDict, got {type(data).__name__}.")
    out = []
    for ds in (data, eval_ds):
        if ds is None:
            out.append(None)
            continue
        if "input_ids" not in ds.column_names:
            raise ValueError(f"The dataset has no 'input_ids' column (columns: {ds.column_names}).")
        if "length" not in ds.column_names:
            if not compute_length:
                raise ValueError(
                    "The dataset has no 'length' column, which length-grouped batching needs. Add it with "
                    "geneformer.train.add_length_column(dataset) (or pass compute_length=True / --compute-length)."
                )
            ds = add_length_column(ds)
        out.append(ds)
    if len(out[0]) == 0:
        raise ValueError("The training dataset is empty.")
    return out[0], out[1]


def check_corpus(dataset: Any, *, vocab_size: int, has_cls_eos: bool, cls_id: int | None, eos_id: int | None,
                 max_positions: int, n_check: int = 2000, seed: int = 0, what: str = "corpus") -> None:
    """Fail early and clearly when a corpus cannot feed the model.

    Checks every cell's ``length`` against ``max_positions``, and on up to ``n_check`` random
    cells: token ids below ``vocab_size``, ``length`` equal to the number of tokens, and the
    presence of ``<cls>``/``<eos>`` matching the vocabulary (V2 corpora start with ``<cls>`` and
    end with ``<eos>``; V1 corpora have neither).
    """
    lengths = column_array(dataset, "length")
    if lengths.size and int(lengths.max()) > max_positions:
        n_long = int((lengths > max_positions).sum())
        raise CorpusError(
            f"{n_long} cells of the {what} are longer than the model's max_position_embeddings "
            f"({int(lengths.max())} > {max_positions} tokens). Tokenize with model_input_size={max_positions} "
            "or choose an architecture with more positions."
        )
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(dataset), size=min(n_check, len(dataset)), replace=False))
    sample = dataset.select(idx, keep_in_memory=True)["input_ids"]
    max_id, starts_cls, ends_eos = -1, 0, 0
    for i, ids in zip(idx, sample):
        ids = np.asarray(ids)
        if len(ids) != lengths[i]:
            raise CorpusError(
                f"Cell {int(i)} of the {what} has {len(ids)} tokens but its 'length' says {int(lengths[i])}; "
                "recompute the column with geneformer.train.add_length_column."
            )
        if len(ids):
            max_id = max(max_id, int(ids.max()))
            starts_cls += int(ids[0] == (cls_id if cls_id is not None else 2))
            ends_eos += int(ids[-1] == (eos_id if eos_id is not None else 3))
    if max_id >= vocab_size:
        raise CorpusError(
            f"The {what} holds token id {max_id} but the model's vocabulary has {vocab_size} tokens: it was "
            "tokenized with another gene vocabulary. Use the matching vocabulary/model (V1 vs V2) or re-tokenize."
        )
    n = len(sample)
    with_specials = starts_cls == n and ends_eos == n
    if has_cls_eos and not with_specials:
        raise CorpusError(
            f"The model's vocabulary uses <cls>/<eos> (V2) but {n - min(starts_cls, ends_eos)} of {n} sampled cells "
            f"of the {what} do not start with <cls> and end with <eos>: the corpus was tokenized for V1 or "
            "without special tokens. Re-tokenize with the V2 vocabulary (special_token=True) or use a V1 model."
        )
    if not has_cls_eos and n and starts_cls >= 0.9 * n and ends_eos >= 0.9 * n:
        raise CorpusError(
            f"The model's vocabulary has no <cls>/<eos> (V1) but the {what} cells start with token 2 and end with "
            "token 3, as V2 corpora tokenized with <cls>/<eos> do. Use a V2 model/vocabulary or re-tokenize for V1."
        )
