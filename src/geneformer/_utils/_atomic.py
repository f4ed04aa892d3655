"""Writing outputs atomically: every file or folder appears complete or not at all.

Each writer works under a hidden temporary name beside the target (``.NAME.tmp-PID``, the target's
suffix kept so that libraries which choose a format by extension still see it) and renames it onto
the target when complete; a failure removes the temporary. A process killed outright (SIGKILL, the
OOM killer) cannot remove its temporary: the next writer of the same target removes the temporaries
of processes that are no longer alive (:func:`remove_stale_temporaries`). :func:`refuse_existing` is
the one rule for outputs that already exist, and :func:`output_lock` keeps a second run off an output
that one run is writing.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ._errors import OptionError, OutputExistsError, OutputLockedError

_TMP_PID = re.compile(r"\.tmp-(\d+)")


def temp_path(path: str | os.PathLike) -> Path:
    """The hidden temporary name used while ``path`` is written (same folder, same suffix)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


def refuse_existing(path: str | os.PathLike | Iterable[str | os.PathLike], overwrite: bool,
                   flag: str = "--overwrite") -> Path | list[Path]:
    """Raise unless ``path`` (or every path of a list) is free or ``overwrite`` is set; the message
    names the flag. Returns the path(s) as ``Path``."""
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    taken = [p for p in paths if p.exists()]
    if taken and not overwrite:
        what = f"Output {taken[0]} already exists" if len(taken) == 1 else (
            f"Outputs {', '.join(map(str, taken[:5]))}{' ...' if len(taken) > 5 else ''} already exist")
        raise OutputExistsError(
            f"{what}. Choose another output, or pass {flag} (overwrite=True) to replace it."
        )
    return paths[0] if isinstance(path, (str, os.PathLike)) else paths


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the hidden temporaries of ``path`` (``.NAME.tmp-PID...``) left by processes that are
    no longer alive; returns what was removed. Temporaries of live processes are left alone."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    removed = []
    for cand in parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        m = _TMP_PID.match(cand.name[len(path.name) + 1:])
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        _remove(cand)
        removed.append(cand)
    return removed


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output (hidden, beside it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def output_lock(path: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` for the ``with`` block (a lock file beside it).

    A second run on the same output fails at once with :class:`OutputLockedError` instead of
    waiting or racing the first to the final rename. The lock is the kernel's (``flock``), so a
    killed holder releases it; the lock file is removed on exit.
    """
    import fcntl

    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputLockedError(
                f"Output {path} is being written by another {what} (process {holder}, lock {lock}); wait "
                "for it to finish or choose another output."
            ) from None
        try:  # the holder before us may have removed the file we locked: lock the current one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield lock
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


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
    remove_stale_temporaries(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike, *, mkdir: bool = True, replace: bool = True,
                  merge: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``path`` (an existing folder is
    removed first; with ``replace=False`` an output that appeared meanwhile is refused instead),
    or with ``merge`` its entries are moved into ``path`` (replacing same-named ones, keeping the
    rest); on failure it is removed."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if merge:
            move_contents(tmp, path)
            return
        if path.exists():
            refuse_existing(path, replace)
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
