"""Pushing to the Hugging Face hub, failing fast and clearly when it cannot be reached."""
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
