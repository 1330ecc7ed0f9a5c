"""store.json: the store's description (format tag, schema version, scheme, holdout fraction, settings).

Opening a store checks the schema version before anything else is read: a newer or unknown version
asks for a newer pipstc; an older one is migrated (:mod:`annotations.store.migrate`), never misread.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from annotations.store._fs import StoreFS
from annotations.store.errors import CorruptFile, SchemaVersionError, StoreError
from annotations.store.schema import SCHEMA_VERSION
from pipnet_core.schemes import Scheme, SchemeError, scheme_from_dict

__all__ = ["FORMAT", "META_NAME", "StoreNeedsMigration", "new_meta", "read_meta", "write_meta"]

META_NAME = "store.json"


class StoreNeedsMigration(SchemaVersionError):
    """The store was written by an older pipstc; :mod:`annotations.store.migrate` brings it up to date."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version
FORMAT = "pipstc-store"


def new_meta(scheme: Scheme, holdout_fraction: float) -> dict[str, Any]:
    """The description of a new store."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "scheme": scheme.to_dict(),
        "holdout_fraction": holdout_fraction,
        "settings": {},
    }


def write_meta(sfs: StoreFS, meta: dict[str, Any]) -> dict[str, Any]:
    """Atomically (re)write store.json; returns ``meta`` with the parsed scheme under ``_scheme``."""
    plain = {k: v for k, v in meta.items() if not k.startswith("_")}
    sfs.write_bytes(sfs.path(META_NAME), json.dumps(plain, indent=2).encode())
    return plain | {"_scheme": scheme_from_dict(plain["scheme"])}


def read_meta(sfs: StoreFS) -> dict[str, Any]:
    """store.json, checked (format, schema version, scheme); the scheme parsed under ``_scheme``.

    Raises:
        StoreError: no store.json.
        CorruptFile: store.json unreadable.
        SchemaVersionError: another schema version.
    """
    path = sfs.path(META_NAME)
    where = sfs.show(path)
    try:
        raw = sfs.read_bytes(path)
    except FileNotFoundError:
        raise StoreError(
            f"{sfs.show(sfs.root)}: no pipstc store here ({META_NAME} missing) — check the path, or create one with "
            f"`pipstc init {sfs.show(sfs.root)} --scheme 300w` (Python: Store.create(url, scheme))"
        ) from None
    try:
        meta = json.loads(raw)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
    except ValueError as e:
        raise CorruptFile(where, f"{where}: unreadable store description ({e}); restore it from a backup") from None
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where}: schema version {version!r} is newer than or unknown to this pipstc (it reads version "
            f"{SCHEMA_VERSION}); upgrade pipstc to open this store"
        )
    if version < SCHEMA_VERSION:
        raise StoreNeedsMigration(
            f"{where}: schema version {version} was written by an older pipstc; this one reads version "
            f"{SCHEMA_VERSION}. Migrate it with `pipstc migrate {sfs.show(sfs.root)}` (the old files are kept in "
            "its _migrations/ folder); the store was left untouched",
            version,
        )
    try:
        meta["_scheme"] = scheme_from_dict(meta["scheme"], source=where)
    except (KeyError, TypeError, SchemeError) as e:
        raise CorruptFile(where, f"{where}: the stored scheme is unreadable ({e}); restore it from a backup") from None
    return meta
