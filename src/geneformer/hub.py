"""Hugging Face hub settings read at call time (``huggingface_hub`` reads them once, at import)."""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network access (then only the local cache is used)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
