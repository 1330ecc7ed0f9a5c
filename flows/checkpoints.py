"""Where a round's model lives and what it is called.

A local store keeps ``model.pt`` (and, under STLD, the pretraining checkpoint ``pretrain.pt``) in the
round folder and the model is used from there. For an object-store store the checkpoint is
downloaded to a local cache before use.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from annotations.store import Store

__all__ = ["checkpoint_path", "has_checkpoint", "is_local", "model_version"]


def model_version(k: int) -> str:
    """The model version written with round k's pseudo-labels and shown in Label Studio."""
    return f"round-{k}"


def is_local(store: Store) -> bool:
    """True when the store is a folder on this machine (a plain path or a file:// URL)."""
    return "://" not in str(store.url) or str(store.url).startswith("file://")


def checkpoint_path(store: Store, k: int, name: str = "model.pt") -> str:
    """Local path of round k's checkpoint ``name`` (downloaded to a temp file for remote stores)."""
    if is_local(store):
        return os.path.join(str(store.round_path(k)).removeprefix("file://"), name)
    local = Path(tempfile.gettempdir()) / "pipstc-checkpoints" / hashlib.sha1(str(store.url).encode()).hexdigest()
    local.mkdir(parents=True, exist_ok=True)
    path = local / f"round-{k}-{name}"
    if not path.exists():
        path.write_bytes(store.read_round_file(k, name))
    return str(path)


def has_checkpoint(store: Store, k: int, name: str = "model.pt") -> bool:
    """Whether round k's folder holds the checkpoint ``name``."""
    if k < 0:
        return False
    if is_local(store):
        return os.path.isfile(checkpoint_path(store, k, name))
    try:
        checkpoint_path(store, k, name)
    except FileNotFoundError:
        return False
    return True
