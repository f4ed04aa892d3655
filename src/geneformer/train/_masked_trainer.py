"""The ``Trainer`` of masked-gene pretraining: length-grouped sampling, fresh masks every epoch,
fixed masks and masked-gene accuracy in evaluation, and exact attention dropout at fused speed."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from .._constants import IGNORE_INDEX
from ._collators import DataCollatorForMaskedGenes
from ._console import quiet_trainer_console
from ._corpus import column_array
from ._dropout_attention import use_fused_attention_dropout
from ._sampler import LengthGroupedSampler

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------
class _CollatorEpochCallback(TrainerCallback):
    """Tells the masking collator which epoch starts, so cells get new masks every epoch."""

    def __init__(self, collator: DataCollatorForMaskedGenes) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.set_epoch(int(math.floor(state.epoch or 0.0)))


def masked_gene_metrics(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for :class:`MaskedGeneTrainer`: accuracy over masked genes."""
    stats = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 3)
    total = stats[:, 1].sum()
    return {
        "masked_accuracy": float(stats[:, 0].sum() / total) if total else float("nan"),
        "masked_gene_loss": float(stats[:, 2].sum() / total) if total else float("nan"),
        "masked_genes": float(total),
    }


class MaskedGeneTrainer(Trainer):
    """``Trainer`` for masked-gene modelling.

    ``lengths``: the training cells' lengths for length grouping (default: the dataset's ``length``
    column, else the cells are measured). With length grouping on (``group_by_length=True`` on
    transformers 4, ``train_sampling_strategy="group_by_length"`` on 5) the sampler is a seeded
    :class:`LengthGroupedSampler`. Evaluation reports ``eval_masked_accuracy`` and
    ``eval_masked_gene_loss`` on fixed masks.

    ``fused_attention_dropout`` (default True): a model on ``sdpa`` attention trains with
    :mod:`._dropout_attention`, exact attention dropout at the speed of PyTorch's fused CPU kernel
    (plain ``sdpa`` falls back to a ~3x slower path on CPU when attention dropout is on; GPUs
    and evaluation are unaffected). Saved checkpoints stay plain BERT.
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 *rest, lengths: Sequence[int] | np.ndarray | None = None, fused_attention_dropout: bool = True,
                 **kwargs: Any) -> None:
        if kwargs.get("compute_metrics") is None and isinstance(data_collator, DataCollatorForMaskedGenes):
            kwargs["compute_metrics"] = masked_gene_metrics
        if model is not None:
            use_fused_attention_dropout(model, fused_attention_dropout)
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, *rest, **kwargs)
        quiet_trainer_console(self)
        self._example_lengths = None
        if lengths is not None:
            self._example_lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
            if train_dataset is not None and len(self._example_lengths) != len(train_dataset):
                raise ValueError(
                    f"{len(self._example_lengths)} cell lengths were given but the training dataset has "
                    f"{len(train_dataset)} cells."
                )
        if isinstance(self.data_collator, DataCollatorForMaskedGenes):
            self.add_callback(_CollatorEpochCallback(self.data_collator))

    # ---- sampling ----------------------------------------------------------------------------
    def _group_by_length(self) -> bool:
        return bool(getattr(self.args, "group_by_length", False)) or (
            getattr(self.args, "train_sampling_strategy", None) == "group_by_length"
        )

    def _lengths(self, dataset) -> np.ndarray:
        col = getattr(self.args, "length_column_name", "length")
        if col in getattr(dataset, "column_names", ()):
            return column_array(dataset, col)
        logger.warning("No %r column: measuring every cell for length grouping (slow on large corpora).", col)
        return np.asarray([len(x["input_ids"]) for x in dataset], dtype=np.int64)

    def _get_train_sampler(self, *args: Any, **kwargs: Any):
        ds = self.train_dataset
        if not self._group_by_length() or ds is None or not hasattr(ds, "__len__"):
            return super()._get_train_sampler(*args, **kwargs)
        # self.train_dataset still has the length column the Trainer strips before sampling
        lengths = self._example_lengths if self._example_lengths is not None else self._lengths(ds)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    seed=seed)

    def _get_eval_sampler(self, eval_dataset):
        source = self.eval_dataset if self.eval_dataset is not None and len(self.eval_dataset) == len(eval_dataset) \
            else eval_dataset
        if not hasattr(source, "column_names") or "length" not in source.column_names:
            return super()._get_eval_sampler(eval_dataset)
        # longest first: little padding, deterministic order
        return np.argsort(-column_array(source, "length"), kind="stable").tolist()

    # ---- evaluation ----------------------------------------------------------------------------
    def get_eval_dataloader(self, eval_dataset=None):
        collator = self.data_collator
        if isinstance(collator, DataCollatorForMaskedGenes):
            self.data_collator = collator.for_evaluation()  # the same masks at every evaluation
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        labels = inputs.get("labels")
        if labels is None or not isinstance(self.data_collator, DataCollatorForMaskedGenes):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        with torch.no_grad():
            with self.compute_loss_context_manager():
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[1]
        selected = labels != IGNORE_INDEX
        if logits.dim() == 3:
            logits = logits[selected]
        total = selected.sum()
        correct = (logits.argmax(-1) == labels[selected]).sum()
        loss = loss.detach().float()
        stats = torch.stack([correct.float(), total.float(), loss * total.float()]).reshape(1, 3)
        # the per-batch statistics travel as "predictions"; labels as their counts (tiny)
        return loss, stats, total.reshape(1, 1)
