"""The Hugging Face hub: fail fast and in one line when it cannot be reached (one 5-second probe,
not the libraries' retries), use the local cache when it holds what is asked for, and push."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .cli import UserError

PROBE_TIMEOUT_S = 5.0


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def require_hub(what: str) -> None:
    """Before a hub download: a clear error now instead of a minute of retries."""
    if not offline() and not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise UserError(f"{what}: the hub ({endpoint}) cannot be reached; check the "
                        "network (HF_TOKEN for gated models), or set HF_HUB_OFFLINE=1 to use the local cache only")


def cached_model(repo_id: str) -> str | None:
    """The local snapshot folder of a hub model when the cache holds one, else None."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): the caller decides
        return None


def push_dataset_to_hub(folder, repo_id: str) -> None:
    """Push a saved DatasetDict with the token from $HF_TOKEN (never from code or flags)."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise UserError("--push_to_hub needs a token in $HF_TOKEN (the dataset was written locally)")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError("--push_to_hub: HF_HUB_OFFLINE=1 is set (the dataset was written locally)")
    if not hub_reachable():
        raise UserError(f"--push_to_hub: the hub cannot be reached from here (no network within "
                        f"{PROBE_TIMEOUT_S:.0f} s); the dataset was written locally")
    from datasets import load_from_disk

    try:
        load_from_disk(str(folder)).push_to_hub(repo_id, token=token)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one line
        raise UserError(f"--push_to_hub {repo_id} failed: {str(err).splitlines()[0][:200]}") from None
