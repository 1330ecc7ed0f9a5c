"""Where a round's model lives, what it is called, and its local copies for object-store stores.

A local store keeps ``model.pt`` (and ``model.onnx``; under STLD also the pretraining checkpoint
``pretrain.pt``) in the round folder and they are used from there. For an object-store store
(``s3://...``, any fsspec URL) a round file is used through a local cache, one file per version of
it: the cache key is the stored file's size and ETag (else its modification time), so a retrained
round's new checkpoint is downloaded again, and every copy is written to a temporary name and
renamed, so a second worker never reads half a file. The cache lives in
``$PIPSTC_CACHE_DIR`` (default ``~/.cache/pipstc``).

The model version written with a round's pseudo-labels (and shown in Label Studio) names the
checkpoint: ``round-<k>-<first 8 hex of the checkpoint's sha256>``. New weights give new label ids;
a retry with the same checkpoint gives the same ones, so it still adds nothing twice.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from annotations.store import Store

__all__ = [
    "cache_dir",
    "cached_round_file",
    "checkpoint_path",
    "export_round_onnx",
    "file_sha256",
    "has_checkpoint",
    "is_local",
    "local_round_file",
    "model_version",
    "round_model_version",
    "round_onnx",
]


def model_version(k: int, checkpoint_sha256: str) -> str:
    """The model version of round k's checkpoint whose content hash is ``checkpoint_sha256``."""
    return f"round-{k}-{checkpoint_sha256[:8]}"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def round_model_version(store: Store, k: int) -> str:
    """Round k's model version: the one its train step recorded, else made from its checkpoint now."""
    recorded = (store.completed_steps(k).get("train") or {}).get("model_version")
    if isinstance(recorded, str) and recorded:
        return recorded
    return model_version(k, file_sha256(checkpoint_path(store, k)))


def is_local(store: Store) -> bool:
    """True when the store is a folder on this machine (a plain path or a file:// URL)."""
    return "://" not in str(store.url) or str(store.url).startswith("file://")


def cache_dir(store: Store) -> Path:
    """This machine's folder for local copies of ``store``'s files (one per store URL)."""
    root = os.environ.get("PIPSTC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pipstc"
    )
    return Path(root) / hashlib.sha1(str(store.url).encode()).hexdigest()[:16]


def local_round_file(store: Store, k: int, name: str) -> str:
    """Path of a round file in a local store's round folder."""
    return os.path.join(str(store.round_path(k)).removeprefix("file://"), name)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers see no file or the whole file
    finally:
        tmp.unlink(missing_ok=True)


def cached_round_file(store: Store, k: int, name: str) -> str:
    """A local copy of a round file of a remote store, downloaded when the stored file changed.

    Raises:
        RoundFileMissing: the round has no such file.
    """
    size, tag = store.round_file_info(k, name)
    folder = cache_dir(store) / f"round-{k}"
    path = folder / f"{size}-{hashlib.sha1(tag.encode()).hexdigest()[:12]}-{name}"
    if path.is_file() and path.stat().st_size == size:
        return str(path)
    _write_atomic(path, store.read_round_file(k, name))
    for old in folder.glob(f"*-{name}"):  # older versions of the same file
        if old != path:
            old.unlink(missing_ok=True)
    return str(path)


def checkpoint_path(store: Store, k: int, name: str = "model.pt") -> str:
    """Local path of round k's checkpoint ``name`` (or another round file), from the cache for remote stores."""
    if is_local(store):
        return local_round_file(store, k, name)
    return cached_round_file(store, k, name)


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


ONNX_NAME = "model.onnx"
_VERSION_KEY = "pipstc.model_version"


def _onnx_version(path: str) -> str | None:
    from pipnet_core.export import onnx_metadata

    try:
        return onnx_metadata(path).get(_VERSION_KEY)
    except Exception:  # a truncated or foreign file: export again
        return None


def export_round_onnx(store: Store, k: int) -> str:
    """Export round k's checkpoint once to ``model.onnx`` beside it (skipped when it is current).

    The file records the model version it was exported from; every pool shard loads it instead of
    exporting the model again (torch.onnx.export cannot run in several threads at once).

    Returns:
        Its local path (a cached copy for remote stores).
    """
    from pipnet_core.export import onnx_bytes, with_metadata
    from pipnet_core.train import load_checkpoint

    version = round_model_version(store, k)
    try:
        path = checkpoint_path(store, k, ONNX_NAME)
        if os.path.isfile(path) and _onnx_version(path) == version:
            return path
    except FileNotFoundError:  # RoundFileMissing of a remote store: not exported yet
        pass
    model, _ = load_checkpoint(checkpoint_path(store, k))
    store.write_round_file(k, ONNX_NAME, with_metadata(onnx_bytes(model), {_VERSION_KEY: version}))
    return checkpoint_path(store, k, ONNX_NAME)


def round_onnx(store: Store, k: int) -> str:
    """Round k's exported ``model.onnx`` (local path), checked against the round's model version.

    Raises:
        FileNotFoundError: not exported yet, or exported from another checkpoint of the round.
    """
    version = round_model_version(store, k)
    path = checkpoint_path(store, k, ONNX_NAME)
    if not os.path.isfile(path) or _onnx_version(path) != version:
        raise FileNotFoundError(
            f"{path}: round {k} has no ONNX export of its model {version}; the pool-labeling flow exports it "
            "before its shards (flows.checkpoints.export_round_onnx)"
        )
    return path
