"""Which ``checkpoint-N`` folder a resumed pretraining run may start from.

The Trainer writes a checkpoint in place (weights, then optimizer, scheduler and RNG states, then
``trainer_state.json`` last), so a run killed while saving leaves the highest-numbered folder
incomplete, and resuming from it fails or silently restarts the schedule. A checkpoint counts as
complete when its ``trainer_state.json`` parses, its model folder is readable (weights header) and its
optimizer archive (when there is one) has its central directory; resuming falls back to the newest
complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

from .._utils import InputFileError, ModelLoadError
from ..models import check_model_folder

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be resumed from (None when it is complete)."""
    folder = Path(folder)
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
        if not isinstance(state, dict) or "global_step" not in state:
            return "trainer_state.json holds no global_step"
    except FileNotFoundError:
        return "no trainer_state.json (the save did not finish)"
    except (OSError, ValueError) as exc:
        return f"trainer_state.json is unreadable ({exc})"
    try:
        check_model_folder(folder)
    except ModelLoadError as exc:
        return str(exc)
    for name in ("optimizer.pt", "scheduler.pt"):
        p = folder / name
        if p.is_file():
            try:
                zipfile.ZipFile(p).close()
            except (zipfile.BadZipFile, OSError) as exc:
                return f"{name} is truncated or not a torch archive ({exc})"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of ``output_dir``; incomplete newer ones are skipped with a warning."""
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Skipping incomplete checkpoint %s: %s.", folder, problem)
    return None


def check_checkpoint(folder: str | os.PathLike) -> Path:
    """An explicitly named checkpoint folder, which must be complete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"Checkpoint folder {folder} does not exist.")
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise InputFileError(f"Checkpoint {folder} cannot be resumed from: {problem}. Resume from an earlier "
                             "checkpoint, or pass --resume to pick the newest complete one.")
    return folder


__all__ = ["check_checkpoint", "checkpoint_folders", "checkpoint_problem", "last_complete_checkpoint"]
