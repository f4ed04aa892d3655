"""``GeneformerPretrainer``: the reference's pretraining ``Trainer``, translated onto
:class:`geneformer.train.MaskedGeneTrainer` (the masking collator and the cell lengths built from
its arguments)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from .._utils import load_plain_file
from ..train import DataCollatorForMaskedGenes, MaskedGeneTrainer
from ..vocab import GeneVocab


class GeneformerPretrainer(MaskedGeneTrainer):
    """``Trainer`` for masked-gene modelling with the reference's keywords.

    ``token_dictionary`` (dict, ``GeneVocab`` or "V1"/"V2"; builds the masking collator when
    ``data_collator`` is not given), ``mlm`` (must be True), ``mlm_probability`` (0.15) and
    ``example_lengths_file`` (a pickled list of cell lengths; optional here: the dataset's
    ``length`` column is used when absent, or the cells are measured). Everything else is
    :class:`~geneformer.train.MaskedGeneTrainer`'s (``fused_attention_dropout``, ``Trainer`` arguments).
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 *rest, token_dictionary: Mapping[str, int] | GeneVocab | str | None = None, mlm: bool = True,
                 mlm_probability: float = 0.15, example_lengths_file: str | os.PathLike | None = None,
                 **kwargs: Any) -> None:
        if not mlm:
            raise ValueError("GeneformerPretrainer supports masked-gene modelling only (mlm=True).")
        if data_collator is None:
            if token_dictionary is None:
                raise ValueError("Pass token_dictionary= (or a data_collator) to build the masked-gene collator.")
            seed = args.seed if args is not None else 42
            data_collator = DataCollatorForMaskedGenes(token_dictionary, mlm_probability, seed=seed)
        lengths = _load_lengths_file(example_lengths_file) if example_lengths_file else None
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, *rest, lengths=lengths, **kwargs)


def _load_lengths_file(path: str | os.PathLike) -> np.ndarray:
    obj = load_plain_file(path, "example_lengths_file")
    try:
        return np.asarray(obj, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"example_lengths_file {path} must hold a list of integers.") from exc
