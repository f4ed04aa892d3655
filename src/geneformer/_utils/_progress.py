"""Progress bars: our own tqdm bars, shown unless the call or ``settings.progress`` turns them off."""

from __future__ import annotations

from typing import Any


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
