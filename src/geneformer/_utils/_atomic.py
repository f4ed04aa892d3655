"""Writing outputs atomically: every file or folder appears complete or not at all.

Each writer works under a hidden temporary name beside the target (``.NAME.tmp-PID``, the target's
suffix kept so that libraries which choose a format by extension still see it) and renames it onto
the target when complete; a failure removes the temporary. :func:`refuse_existing` is the one rule
for outputs that already exist.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ._errors import OptionError


def temp_path(path: str | os.PathLike) -> Path:
    """The hidden temporary name used while ``path`` is written (same folder, same suffix)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


def refuse_existing(path: str | os.PathLike, overwrite: bool, flag: str = "--overwrite") -> Path:
    """Raise unless ``path`` is free or ``overwrite`` is set; the message names the flag."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"Output {path} already exists. Choose another output, or pass overwrite=True ({flag}) to replace it."
        )
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, *, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike, *, mkdir: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``path`` (an existing folder is
    removed first), on failure it is removed."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            _remove(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on the temporary name, then move it onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` to ``path``, atomically."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` to ``path``, atomically."""
    return write_with(path, lambda tmp: tmp.write_text(text))


def json_default(obj: Any) -> Any:
    """JSON for numpy scalars and arrays (plain numbers and lists); anything else as its text."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, default: Callable | None = json_default,
               **kwargs: Any) -> Path:
    """JSON (numpy scalars and arrays as plain numbers and lists, anything else as text)."""
    return write_text(path, json.dumps(obj, indent=indent, default=default, **kwargs))


def write_pickle(path: str | os.PathLike, obj: Any, protocol: int | None = None) -> Path:
    """A pickle, for the reference's file formats (our own outputs use JSON, parquet or safetensors)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=protocol)

    return write_with(path, write)


def write_csv(path: str | os.PathLike, df: Any, **kwargs: Any) -> Path:
    """``DataFrame.to_csv``."""
    return write_with(path, lambda tmp: df.to_csv(tmp, **kwargs))


def write_parquet(path: str | os.PathLike, data: Any, **kwargs: Any) -> Path:
    """A pandas DataFrame (``to_parquet``) or an Arrow table (``pyarrow.parquet.write_table``)."""

    def write(tmp: Path) -> None:
        if hasattr(data, "to_parquet"):
            data.to_parquet(tmp, **kwargs)
        else:
            import pyarrow.parquet as pq

            pq.write_table(data, tmp, **kwargs)

    return write_with(path, write)


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``Figure.savefig``: PNG, PDF or SVG by extension."""
    if Path(path).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise OptionError(f"Plot file {path} must end in .png, .pdf or .svg.")
    return write_with(path, lambda tmp: fig.savefig(tmp, **kwargs))


def save_dataset(ds: Any, path: str | os.PathLike) -> Path:
    """``Dataset.save_to_disk`` into a temporary folder, then renamed (an existing folder is replaced)."""
    with atomic_folder(path) as tmp:
        tmp.rmdir()  # save_to_disk creates the folder itself
        ds.save_to_disk(str(tmp))
    return Path(path)


def move_contents(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move every entry of ``src`` into ``dst`` (replacing same-named entries), then remove ``src``."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    src.rmdir()
