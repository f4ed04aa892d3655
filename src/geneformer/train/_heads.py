"""Training the task-head models (multi-task, model-card fine-tuning) on the Hugging Face ``Trainer``.

One training loop for every head: :class:`HeadTrainer` is a ``Trainer`` (so ``torchrun``,
``accelerate launch`` and DeepSpeed work unchanged) fed with row indices of tokenized cells;
:class:`RowCollator` pads each batch with the package's one collate (``inference.collate``) and adds
the labels and, for cell pooling, the gene-position mask (``embeddings.gene_position_mask``).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from .._utils import show_progress, trainer_device_args
from ..embeddings import gene_position_mask
from ..inference import collate
from ._console import quiet_trainer_console
from ._dropout_attention import use_fused_attention_dropout
from ._trainer import training_arguments


class RowDataset(torch.utils.data.Dataset):
    """The row indices ``0..n-1`` of a split (the collator looks the cells up)."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return int(i)


class RowCollator:
    """Right-pads the cells of a batch of rows (``inference.collate``); adds ``labels`` (one row of
    ``labels`` per cell) and, given the ``(has_cls, has_eos)`` flags, the ``gene_mask``."""

    def __init__(self, seqs: Any, pad_id: int = 0, labels: Any = None,
                 flags: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.seqs = seqs
        self.pad_id = int(pad_id)
        self.labels = None if labels is None else torch.as_tensor(labels)
        self.flags = flags

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        input_ids, mask, lengths = collate(self.seqs, rows, self.pad_id)
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self.flags is not None:
            has_cls, has_eos = (torch.from_numpy(f[rows]) for f in self.flags)
            batch["gene_mask"] = gene_position_mask(lengths, input_ids.shape[1], has_cls, has_eos)
        if self.labels is not None:
            batch["labels"] = self.labels[torch.from_numpy(rows)]
        return batch


class _Hooks(TrainerCallback):
    def __init__(self, trainer: HeadTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.on_step is not None:
            self.trainer.on_step(state.global_step, self.trainer.mean_loss())

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.trainer.on_epoch_end is not None:
            self.trainer.on_epoch_end(round(state.epoch or 0), self.trainer.take_epoch_loss())


class HeadTrainer(Trainer):
    """``Trainer`` for the head models.

    ``loss_function(outputs, labels)``: the loss (None: the model's own, given ``labels``).
    ``warmup_ratio``: warm-up steps ``int(total_steps * warmup_ratio)``, rounded down as the
    reference does (the ``Trainer`` rounds up). ``on_step(step, mean_loss)`` runs after every
    optimizer step, ``on_epoch_end(epoch, epoch_loss)`` after every epoch; the losses are means over
    cells of the micro-batch losses (of the run so far, or of the epoch).
    """

    def __init__(self, *args: Any, loss_function: Callable | None = None, warmup_ratio: float | None = None,
                 on_step: Callable[[int, float], None] | None = None,
                 on_epoch_end: Callable[[int, float], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_loss_function = loss_function
        self.warmup_ratio = warmup_ratio
        self.on_step, self.on_epoch_end = on_step, on_epoch_end
        self._run = [0.0, 0]  # loss x cells, cells
        self._epoch = [0.0, 0]
        self.add_callback(_Hooks(self))
        quiet_trainer_console(self)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        n = int(inputs["input_ids"].shape[0])
        if self.head_loss_function is None:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        else:
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = self.head_loss_function(outputs, labels)
        if model.training:
            value = float(loss.detach().float().mean()) * n
            for acc in (self._run, self._epoch):
                acc[0] += value
                acc[1] += n
        return (loss, outputs) if return_outputs else loss

    def mean_loss(self) -> float:
        return self._run[0] / max(1, self._run[1])

    def take_epoch_loss(self) -> float:
        value = self._epoch[0] / max(1, self._epoch[1])
        self._epoch = [0.0, 0]
        return value

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None):
        if self.lr_scheduler is None and self.warmup_ratio is not None:
            from transformers import get_scheduler

            self.lr_scheduler = get_scheduler(self.args.lr_scheduler_type, optimizer=optimizer or self.optimizer,
                                              num_warmup_steps=int(num_training_steps * float(self.warmup_ratio)),
                                              num_training_steps=num_training_steps)
        return super().create_scheduler(num_training_steps, optimizer)


def head_training_arguments(output_dir: str, *, progress: bool | None = None, use_cpu: bool | None = None,
                            **kw: Any):
    """``TrainingArguments`` for a head run: nothing saved or reported, the rows collated as given,
    device fields from the machine (``use_cpu`` forces the CPU)."""
    args = {**trainer_device_args(), "output_dir": str(output_dir), "report_to": "none", "save_strategy": "no",
            "logging_strategy": "no", "remove_unused_columns": False, "disable_tqdm": not show_progress(progress)}
    if use_cpu:
        args.update(use_cpu=True, dataloader_pin_memory=False)
    args.update(kw)
    return training_arguments(**args)


@contextmanager
def training_run(model: Any) -> Iterator[str]:
    """A scratch output folder for the ``Trainer`` and, on CPU, the exact fused attention dropout
    while training (the model goes back to plain ``sdpa`` afterwards)."""
    fused = use_fused_attention_dropout(model)
    try:
        with tempfile.TemporaryDirectory(prefix="geneformer-train-") as tmp:
            yield tmp
    finally:
        if fused:
            use_fused_attention_dropout(model, False)


__all__ = ["HeadTrainer", "RowCollator", "RowDataset", "head_training_arguments", "training_run"]
