"""The Hugging Face hub: one reachability probe and one way to load a dataset from it.

A hub id that cannot be fetched is an :class:`~lightreasoner.utils.InputError` naming the flag and the id, found in
seconds (one TCP probe of ``HF_ENDPOINT``) rather than after the hub client's retries. ``HF_HUB_OFFLINE=1`` skips
the probe and uses the local caches.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any
from urllib.parse import urlparse

from .utils import InputError


def offline() -> bool:
    """Whether the user asked for the local caches only (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host (``HF_ENDPOINT`` respected) answers a TCP connection within ``timeout`` s; each
    host is probed once per process."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _answers(url.hostname or "huggingface.co", url.port or 443, timeout)


@functools.lru_cache(maxsize=None)
def _answers(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def require(flag: str, hub_id: str, fix: str) -> None:
    """Stop at once when ``hub_id`` would have to come from an unreachable hub (unless offline caches are asked
    for)."""
    if not offline() and not reachable():
        raise InputError(f"{flag} {hub_id!r}: the Hugging Face hub is unreachable; {fix} (or set HF_HUB_OFFLINE=1 "
                         f"to use a copy in the local cache)")


def load_dataset(flag: str, dataset_id: str, config: str | None, split: str, fix: str) -> Any:
    """``datasets.load_dataset(dataset_id, config, split=split)``, its failures one :class:`InputError`."""
    require(flag, dataset_id, fix)
    import datasets

    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # offline, unknown id, gated, bad split: one clear message
        raise InputError(f"{flag} {dataset_id!r}: could not load it from the hub (split {split!r}; "
                         f"{type(e).__name__}: {e}); {fix}") from None
