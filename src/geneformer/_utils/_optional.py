"""Optional packages (flash-attn, bitsandbytes): imported when present, their absence reported once
per process with the fallback that is used instead."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

logger = logging.getLogger("geneformer")
_seen: dict[str, ModuleType | None] = {}


def optional_module(name: str, fallback: str) -> ModuleType | None:
    """``importlib.import_module(name)``, or None when it is not installed (or fails to import, as a
    CUDA extension built for another PyTorch does); the first miss logs a warning naming
    ``fallback``, later calls are silent."""
    if name not in _seen:
        try:
            _seen[name] = importlib.import_module(name)
        except (ImportError, OSError, RuntimeError) as exc:
            _seen[name] = None
            logger.warning("%s is not usable here (%s); %s.", name, exc, fallback)
    return _seen[name]
