"""Batch collators: masked-gene modelling for pretraining, and the reference classification collators.

All collators right-pad ``input_ids`` with ``<pad>`` to the longest cell of the batch and return an
``attention_mask`` (1 = gene, 0 = padding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._constants import IGNORE_INDEX, MASK, PAD, SPECIAL_TOKENS
from ..data import pad_sequences
from ..vocab import GeneVocab, as_vocab


def _token_dict(token_dictionary: Mapping[str, int] | GeneVocab | str | None) -> dict[str, int]:
    if isinstance(token_dictionary, GeneVocab):
        return token_dictionary.token_dict
    if isinstance(token_dictionary, Mapping):
        return {str(k): int(v) for k, v in token_dictionary.items()}
    return as_vocab(token_dictionary).token_dict


def _as_int_array(ids: Any) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        return ids.detach().cpu().numpy().astype(np.int64, copy=False)
    return np.asarray(ids, dtype=np.int64)


def pad_input_ids(seqs: Sequence[np.ndarray], pad_id: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad integer sequences (to the longest, or ``width``): ``(input_ids, attention_mask)`` as int64."""
    ids, lens = pad_sequences(seqs, pad_id, width=width, dtype=np.int64)
    return ids, (np.arange(ids.shape[1])[None, :] < lens[:, None]).astype(np.int64)


class DataCollatorForMaskedGenes:
    """BERT-style masked-gene modelling over rank-value encoded cells.

    Each *gene* position is selected with probability ``mlm_probability`` (0.15). Of the selected
    positions 80% become ``<mask>``, 10% a random *gene* token and 10% stay unchanged; ``labels``
    hold the original token there and -100 everywhere else.

    Unlike the reference collator (Hugging Face ``DataCollatorForLanguageModeling``, which treats
    only ``<pad>`` and ``<mask>`` as special), the special tokens ``<pad>``, ``<mask>``, ``<cls>`` and
    ``<eos>`` are **never** masked, and random replacements are drawn only from gene tokens: the
    model is never asked to predict a ``<cls>``/``<eos>`` that is always at a fixed position.

    Randomness, in order of precedence:

    - ``generator``: a ``torch.Generator`` drawn from batch after batch;
    - ``seed``: every cell's mask is a function of ``(seed, epoch, the cell's tokens)``, so it does
      not depend on batch composition, process count, data-loader workers or where a resumed run
      restarted. The pretrainer calls :meth:`set_epoch` at each epoch so that a cell gets a new
      mask every epoch;
    - neither: the global torch random state, as the reference collator.
    """

    def __init__(
        self,
        token_dictionary: Mapping[str, int] | GeneVocab | str | None = None,
        mlm_probability: float = 0.15,
        *,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}.")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ValueError("mask_replace_prob and random_replace_prob must be >= 0 and sum to at most 1.")
        tok = _token_dict(token_dictionary)
        if PAD not in tok or MASK not in tok:
            raise KeyError("The token dictionary needs '<pad>' and '<mask>' entries.")
        self.token_dictionary = tok
        self.pad_id = tok[PAD]
        self.mask_id = tok[MASK]
        self.special_ids = np.array(sorted(tok[t] for t in SPECIAL_TOKENS if t in tok), dtype=np.int64)
        self.gene_ids = np.array(sorted(v for k, v in tok.items() if k not in SPECIAL_TOKENS), dtype=np.int64)
        if len(self.gene_ids) == 0:
            raise ValueError("The token dictionary has no gene tokens.")
        self.vocab_size = max(tok.values()) + 1
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.seed = seed
        self.generator = generator
        self.pad_to_multiple_of = pad_to_multiple_of
        self.epoch = 0
        self._salt = 0  # 0 for training, 1 for the fixed evaluation masks

    # ---- configuration -----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Give cells new masks in each epoch (seeded mode)."""
        self.epoch = int(epoch)

    def for_evaluation(self) -> "DataCollatorForMaskedGenes":
        """A copy whose masks depend only on the seed and each cell: identical at every evaluation."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.epoch, other._salt = 0, 1
        if other.seed is None and other.generator is None:
            other.seed = 0
        other.generator = None
        return other

    # ---- collation ---------------------------------------------------------------------------
    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [_as_int_array(f["input_ids"]) for f in features]
        ids, att = pad_input_ids(seqs, self.pad_id)
        if self.pad_to_multiple_of and ids.shape[1] % self.pad_to_multiple_of:
            extra = self.pad_to_multiple_of - ids.shape[1] % self.pad_to_multiple_of
            ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=self.pad_id)
            att = np.pad(att, ((0, 0), (0, extra)))
        select_u, action_u, gene_u = self._uniforms(seqs, ids.shape)
        input_ids, labels = self.mask_tokens(ids, select_u, action_u, gene_u)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(att),
            "labels": torch.from_numpy(labels),
        }

    def mask_tokens(
        self, ids: np.ndarray, select_u: np.ndarray, action_u: np.ndarray, gene_u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply masking to padded ``ids`` given three uniform [0, 1) arrays of the same shape."""
        candidate = ~np.isin(ids, self.special_ids)
        selected = candidate & (select_u < self.mlm_probability)
        labels = np.where(selected, ids, IGNORE_INDEX)
        out = ids.copy()
        to_mask = selected & (action_u < self.mask_replace_prob)
        to_random = selected & ~to_mask & (action_u < self.mask_replace_prob + self.random_replace_prob)
        out[to_mask] = self.mask_id
        n_genes = len(self.gene_ids)
        picks = np.minimum((gene_u[to_random] * n_genes).astype(np.int64), n_genes - 1)
        out[to_random] = self.gene_ids[picks]
        return out, labels

    def _uniforms(self, seqs: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
        if self.generator is None and self.seed is not None:
            # one small generator per cell, keyed by its content: batch-independent and resumable
            u = np.ones((3,) + tuple(shape), dtype=np.float64)
            for i, s in enumerate(seqs):
                digest = hashlib.blake2b(s.astype(np.int64).tobytes(), digest_size=8).digest()
                key = [int(self.seed) & 0xFFFFFFFF, self.epoch & 0xFFFFFFFF, self._salt,
                       int.from_bytes(digest, "little")]
                u[:, i, : len(s)] = np.random.default_rng(key).random((3, len(s)))
            return u[0], u[1], u[2]
        rand = torch.rand((3,) + tuple(shape), generator=self.generator, dtype=torch.float64)
        return tuple(rand.numpy())


# ------------------------------------------------------------------------------------------------
# Reference-compatible classification collators (SPEC 3)
# ------------------------------------------------------------------------------------------------
class _ClassificationCollator:
    """Right-pads ``input_ids`` (and per-gene ``labels`` for gene tasks), builds ``attention_mask``,
    passes every other key through and returns int64 tensors, as the reference collators do."""

    class_type = "cell"

    def __init__(
        self,
        token_dictionary: Mapping[str, int] | GeneVocab | str | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        label_pad_token_id: int = IGNORE_INDEX,
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> None:
        tok = _token_dict(token_dictionary)
        self.token_dictionary = tok
        self.pad_token_id = tok[PAD]
        self.mask_token_id = tok[MASK]
        self.all_special_ids = [tok[MASK], tok[PAD]]
        self.padding = padding
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_token_id = label_pad_token_id
        self.return_tensors = return_tensors

    def _width(self, lengths: list[int]) -> int:
        width = max(lengths, default=0)
        if self.padding == "max_length" and self.max_length:
            width = self.max_length
        if self.pad_to_multiple_of and width % self.pad_to_multiple_of:
            width += self.pad_to_multiple_of - width % self.pad_to_multiple_of
        return width

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [_as_int_array(f["input_ids"]) for f in features]
        width = self._width([len(s) for s in seqs])
        ids, att = pad_input_ids(seqs, self.pad_token_id, width)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": att}
        self._add_labels(batch, features, width)
        out = {k: torch.as_tensor(np.asarray(v)).to(torch.int64) for k, v in batch.items()}
        skip = set(out) | {"label"}
        for key in features[0].keys() if features else ():
            if key in skip:
                continue
            try:  # numeric extras (e.g. ``length``) pass through; text or ragged columns cannot
                out[key] = torch.as_tensor(np.asarray([f[key] for f in features])).to(torch.int64)
            except (TypeError, ValueError):
                continue
        return out

    def _add_labels(self, batch: dict, features: Sequence[Mapping[str, Any]], width: int) -> None:
        key = "label" if features and "label" in features[0] else "labels" if features and "labels" in features[0] else None
        if key is not None:
            batch["labels"] = [f[key] for f in features]


class DataCollatorForCellClassification(_ClassificationCollator):
    """Pads cells and returns ``labels`` = the per-cell ``label`` (reference-compatible, SPEC 3)."""

    class_type = "cell"


class DataCollatorForGeneClassification(_ClassificationCollator):
    """Pads cells and their per-gene ``labels`` (padding with -100) (reference-compatible, SPEC 3)."""

    class_type = "gene"

    def _add_labels(self, batch: dict, features: Sequence[Mapping[str, Any]], width: int) -> None:
        if not features or "labels" not in features[0]:
            return
        batch["labels"], _ = pad_sequences([_as_int_array(f["labels"]) for f in features], self.label_pad_token_id,
                                           width=width, dtype=np.int64)


__all__ = [
    "DataCollatorForMaskedGenes",
    "DataCollatorForCellClassification",
    "DataCollatorForGeneClassification",
    "IGNORE_INDEX",
    "pad_input_ids",
]
