"""Which vocabulary a perturbation run's results use: written by the run, checked by the statistics.

Raw results hold bare token ids, so statistics computed with another vocabulary than the run's give
wrong gene names (or NaN beyond its size) without a word. A run writes
``{output_dir}/in_silico_{type}_{prefix}_vocab.json`` (``model_version``, ``vocab_size``) beside its
results; the statistics refuse a vocabulary that disagrees with that file, or one that is too small
for the token ids the results hold (results of older runs have no such file).
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import numpy as np

from .._utils import VocabularyError, write_json

VOCAB_META_SUFFIX = "_vocab.json"

#: Size of each published vocabulary (the same table as ``geneformer.models``' zoo).
_SIZES = {"V1": 25426, "V2": 20275}


def write_run_vocab(out_dir: str | os.PathLike, opp: str, vocab_size: int, version: str | None) -> Path:
    """Record the vocabulary of the run ``opp`` (``in_silico_{type}_{prefix}``) in ``out_dir``."""
    return write_json(Path(out_dir) / f"{opp}{VOCAB_META_SUFFIX}",
                      {"model_version": version, "vocab_size": int(vocab_size)}, indent=None)


def _recorded(directory: Path) -> list[tuple[Path, dict]]:
    out = []
    for p in sorted(directory.glob(f"in_silico_*{VOCAB_META_SUFFIX}")):
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # only a safety check: an unreadable record is no worse than none
        if isinstance(meta, dict):
            out.append((p, meta))
    return out


def _max_token(keys: list, affected: np.ndarray) -> int:
    ids = [int(affected.max())] if affected.size else []
    for k in keys:
        for t in (k if isinstance(k, tuple) else (k,)):
            if isinstance(t, numbers.Integral):
                ids.append(int(t))
    return max(ids, default=-1)


def check_results_vocab(directory: str | os.PathLike, keys: list, affected: np.ndarray, version: str,
                        vocab_size: int) -> None:
    """Raise :class:`VocabularyError` when the results in ``directory`` were not made with the
    vocabulary ``version`` (``vocab_size`` tokens) the statistics are about to name genes with."""
    directory = Path(directory)
    hint_of = {v: f" Pass --model-version {v} (model_version={v!r})." for v in _SIZES}
    for p, meta in _recorded(directory) if directory.is_dir() else []:
        rec_version, rec_size = meta.get("model_version"), meta.get("vocab_size")
        if (rec_version and rec_version != version) or (rec_size is not None and int(rec_size) != vocab_size):
            raise VocabularyError(
                f"The results in {directory} were made with the {rec_version or 'custom'} vocabulary "
                f"({rec_size} tokens, recorded in {p.name}), but the statistics would name genes with the "
                f"{version} vocabulary ({vocab_size} tokens).{hint_of.get(rec_version, ' Pass that vocabulary.')}"
            )
    top = _max_token(keys, affected)
    if top >= vocab_size:
        fits = [v for v, n in _SIZES.items() if v != version and top < n]
        raise VocabularyError(
            f"The results in {directory} hold token id {top}, beyond the {version} vocabulary ({vocab_size} "
            f"tokens): they were made with another vocabulary.{hint_of[fits[0]] if fits else ''}"
        )


__all__ = ["VOCAB_META_SUFFIX", "check_results_vocab", "write_run_vocab"]
