"""Where the reference's folder-based entry point finds its inputs and writes its output."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from .._utils import InputFileError

#: File name extension of each format, where it differs from the format's name.
_EXTENSIONS = {"10x_h5": "h5", "10x_mtx": "mtx"}


def find_input_files(data_directory: str | os.PathLike, file_format: str = "loom",
                     input_identifier: str = "") -> list[str]:
    """The ``*{input_identifier}*.{extension}`` files of a folder, sorted by name (the reference's rule)."""
    data_directory = Path(data_directory)
    if not data_directory.is_dir():
        raise InputFileError(f"data_directory {data_directory} is not a folder.")
    ext = _EXTENSIONS.get(file_format, file_format)
    pattern = f"*{input_identifier}*.{ext}" if input_identifier else f"*.{ext}"
    files = sorted(glob.glob(str(data_directory / pattern)))
    if not files:
        raise InputFileError(f"No {pattern} files in {data_directory}. Check file_format={file_format!r}.")
    return files


def dataset_path(output_directory: str | os.PathLike, prefix: str) -> Path:
    """``{output_directory}/{prefix}.dataset`` (a prefix already ending in ``.dataset`` is kept)."""
    return Path(output_directory) / (prefix if prefix.endswith(".dataset") else f"{prefix}.dataset")
