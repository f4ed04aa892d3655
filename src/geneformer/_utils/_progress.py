"""Progress bars: our own tqdm bars, shown unless the call or ``settings.progress`` turns them off; and
the third-party console output kept out of them."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


def show_progress(progress: bool | None = None) -> bool:
    """``progress`` when given, else ``settings.progress``."""
    if progress is None:
        from .._settings import settings

        return settings.progress
    return bool(progress)


def progress_bar(iterable: Any = None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
                 progress: bool | None = None, leave: bool = False, **kwargs: Any) -> Any:
    """A ``tqdm`` bar (disabled when progress is off)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not show_progress(progress), leave=leave,
                **kwargs)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """A block without transformers' own console output: its "Loading weights" bar and its warnings
    (the LOAD REPORT table of unexpected/missing weights). ``settings.verbosity = "debug"`` (``-v``)
    keeps them."""
    from .._settings import settings

    if settings.verbosity == "debug":
        yield
        return
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
