"""The Trainer's console: its progress bar stays, its printed log dicts go to the ``geneformer`` logger."""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

logger = logging.getLogger("geneformer.train")


class _QuietProgressCallback(ProgressCallback):
    """``ProgressCallback`` without ``{'loss': ...}`` lines written under the bar."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        return None


class _LogToLogger(TrainerCallback):
    """Each Trainer log (loss, learning rate, evaluation metrics) as one DEBUG line (shown with ``-v``)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items() if k != "total_flos"]
        logger.debug("step %d: %s", state.global_step, ", ".join(parts))


def quiet_trainer_console(trainer: Any) -> None:
    """Replace the Trainer's printing callbacks: its bar without log dicts, the logs to the logger."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_QuietProgressCallback)
    trainer.add_callback(_LogToLogger)
