"""Hugging Face hub access, decided at call time (``huggingface_hub`` reads its variables once, at import).

Offline is detected quickly: the hub's own variables (``settings.hub_offline``: ``HF_HUB_OFFLINE`` or
``TRANSFORMERS_OFFLINE``), else one TCP connection to the hub endpoint (or the configured proxy) with a
short timeout, whose answer is remembered for the process. Without that, ``huggingface_hub`` retries a
dead network for half a minute or more before a first call fails.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from urllib.parse import urlsplit

from .._constants import HUB_ENDPOINT, HUB_PROBE_TIMEOUT_S

logger = logging.getLogger(__name__)

# (host, port) -> reachable; one probe per address and process
_PROBED: dict[tuple[str, int], bool] = {}
_LOCK = threading.Lock()


def hub_endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT`` or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")


def _probe_address() -> tuple[str, int]:
    url = urlsplit(hub_endpoint())
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if url.scheme == "https" and os.environ.get(v)), None)
    if url.scheme == "http":
        proxy = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy") or proxy
    if proxy:
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or 8080
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def _connects(host: str, port: int, timeout: float) -> bool:
    # name resolution ignores socket timeouts, so the whole attempt runs in a thread we stop waiting for
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def hub_reachable() -> bool:
    """Whether one TCP connection to the hub (or the proxy) succeeds; probed once per process."""
    address = _probe_address()
    with _LOCK:
        if address not in _PROBED:
            _PROBED[address] = _connects(*address, HUB_PROBE_TIMEOUT_S) if address[0] else False
            if not _PROBED[address]:
                logger.info("The Hugging Face hub (%s:%d) is unreachable; using local files only.", *address)
        return _PROBED[address]


def forget_hub_probe() -> None:
    """Forget the remembered reachability (after the network changes, and in tests)."""
    with _LOCK:
        _PROBED.clear()


def hub_offline() -> bool:
    """True when the hub must not or cannot be contacted: ``settings.hub_offline``, else a failed probe."""
    from .._settings import settings

    return settings.hub_offline or not hub_reachable()


def hub_offline_reason() -> str:
    """Why the hub is not used, in a few words ("" when it is reachable)."""
    from .._settings import settings

    if settings.hub_offline:
        return "offline mode: HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE or settings.hub_offline"
    if not hub_reachable():
        host, port = _probe_address()
        return f"unreachable at {host}:{port}"
    return ""
