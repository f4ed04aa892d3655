"""Hugging Face hub access, decided at call time (``huggingface_hub`` reads its variables once, at import)."""

from __future__ import annotations


def hub_offline() -> bool:
    """True when the hub must not be contacted (``settings.hub_offline``, default ``HF_HUB_OFFLINE``)."""
    from .._settings import settings

    return settings.hub_offline
