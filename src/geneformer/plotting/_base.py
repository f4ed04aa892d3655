"""What every plot shares: a file-only matplotlib backend and atomic saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._utils import check_choice, save_figure

PLOT_FORMATS = ("pdf", "png", "svg")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend unless ``MPLBACKEND`` says otherwise (never needs a display)."""
    import matplotlib

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` (PNG, PDF or SVG by extension) atomically, tightly cropped."""
    return save_figure(fig, path, dpi=dpi, bbox_inches="tight")


def check_plot_format(fmt: str) -> str:
    """"pdf", "png" or "svg" (case and a leading dot ignored)."""
    return check_choice("plot format", str(fmt).lower().lstrip("."), PLOT_FORMATS)
