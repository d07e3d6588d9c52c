"""The Hugging Face hub as every stage sees it: offline on purpose, reachable or not.

Foundation layer, so featsep.lm (models) and featsep.data (datasets) share one rule for "can
we get there", and a machine without a network fails in seconds, not after the hub
libraries' retries.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}  # huggingface_hub's reading of its boolean variables


def offline() -> bool:
    """The user asked for the local HF cache only (any of OFFLINE_VARIABLES set true)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in OFFLINE_VARIABLES)


def reachable(timeout: float = 3.0) -> bool:
    """One TCP connect: to the proxy when one is set (it decides whether the hub is reachable),
    else to the hub endpoint ($HF_ENDPOINT, default huggingface.co)."""
    proxy = next((os.environ[v] for v in PROXY_VARIABLES if os.environ.get(v)), None)
    if proxy:
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    else:
        url = urlparse(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    if not url.hostname:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
