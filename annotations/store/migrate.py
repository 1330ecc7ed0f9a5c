"""Migrating a store written by an older pipstc to this schema version, copy-on-write.

Driven by :data:`MIGRATED_COLUMNS`: one entry per column a schema version added, saying how rows written
before it get a value (a filler function, or None for nulls). Nullable columns that older parts of
the same version may lack (``annotations.store.schema.ADDED_COLUMNS``) need no entry: they are kept
where a part has them and null elsewhere, as the reader does. A later column is one more entry (and
``SCHEMA_VERSION`` one higher in :mod:`annotations.store.schema`); nothing else here changes.

A migration (:func:`migrate_store`, run by ``Store.open`` and by ``pipstc migrate STORE``):

1. takes the writer lock;
2. for every Parquet part of an older version: copies it to ``_migrations/v<old>/`` under the store
   (a hidden folder that readers skip: the backup), rewrites it in the current schema to a temporary
   name and renames it over the original (readers see the old file or the new one, never half);
3. records what it did in store.json (``migrations``: versions, time, backup folder, notes) and only
   then sets store.json's schema version.

A migration that dies on the way leaves store.json at the old version; the next open migrates the
parts still old (parts already rewritten are recognised by their footer) and finishes. The store is
never read in the old schema by the new code: every part's footer names its version and the reader
refuses any other.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from annotations.store._fs import StoreFS, _parquet_options
from annotations.store._lock import writer_lock
from annotations.store._meta import META_NAME, StoreNeedsMigration, read_meta
from annotations.store._parts import TABLES, PartReader
from annotations.store.errors import SchemaVersionError, StoreError
from annotations.store.ids import image_digest, sample_id_from_digest
from annotations.store.schema import SCHEMA_VERSION, table_schema

__all__ = ["MIGRATED_COLUMNS", "AddedColumn", "MigrationReport", "migrate", "migrate_store", "read_or_migrate"]

log = logging.getLogger(__name__)
BACKUP_DIR = "_migrations"
OLDEST_MIGRATABLE = 1  # the first schema pipstc released


@dataclass
class _Notes:
    """What a filler could not do, per reason, with a few examples."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(example)


Filler = Callable[[pa.Table, _Notes], pa.Array]


@dataclass(frozen=True)
class AddedColumn:
    """A column that schema ``version`` added to ``table``; ``fill`` makes it for older rows (None: nulls)."""

    version: int
    table: str
    column: str
    fill: Filler | None = None
    note: str = ""  # said in the migration record when the filler could not fill every row


def _digest_of(uri: str, sid: str, box: list[float]) -> tuple[str | None, str | None]:
    """(digest, None) when the image at ``uri`` is the one the sample id was made from, else (None, why)."""
    path = uri.removeprefix("file://")
    if "://" in path:
        return None, "image is not a local file"
    try:
        with open(path, "rb") as f:
            digest = image_digest(f.read())
    except OSError:
        return None, "image unreadable"
    if sample_id_from_digest(digest, box) != sid:
        return None, "image changed since import"
    return digest, None


def fill_image_digest(table: pa.Table, notes: _Notes) -> pa.Array:
    """samples.image_digest of older rows: the digest of the image, checked against the sample id."""
    uris, ids = table["image_uri"].to_pylist(), table["sample_id"].to_pylist()
    boxes = table["box"].to_pylist()
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:  # hashing releases the GIL
        found = list(pool.map(_digest_of, uris, ids, boxes))
    for (digest, why), uri in zip(found, uris, strict=True):
        if digest is None:
            notes.add(str(why), uri)
    return pa.array([d for d, _ in found], pa.string())


# Every column added since version 1, oldest first: the one place a new column's migration goes.
MIGRATED_COLUMNS: tuple[AddedColumn, ...] = (
    AddedColumn(2, "samples", "image_digest", fill_image_digest,
                note="the holdout guard by image content does not cover these samples"),  # fmt: skip
)


def upgrade_table(table: pa.Table, name: str, version: int, num_landmarks: int, notes: dict[str, _Notes]) -> pa.Table:
    """A table of schema ``version`` in the current schema: kept columns cast, added ones filled.

    Raises:
        StoreError: a column the current schema requires is neither there nor in :data:`MIGRATED_COLUMNS`.
    """
    schema = table_schema(name, num_landmarks if name == "labels" else None)
    added = {c.column: c for c in MIGRATED_COLUMNS if c.table == name and c.version > version}
    arrays = []
    for f in schema:
        if f.name in table.column_names:  # kept (also a column a later version declared that this file has)
            col = table[f.name].combine_chunks()
            arrays.append(col if col.type.equals(f.type) else col.cast(f.type))
        elif f.name in added and added[f.name].fill is not None:
            arrays.append(added[f.name].fill(table, notes.setdefault(f"{name}.{f.name}", _Notes())))
        elif f.nullable:
            arrays.append(pa.nulls(table.num_rows, f.type))
        else:
            raise StoreError(f"{name}: no migration from schema version {version} gives the required column {f.name!r}")
    return pa.Table.from_arrays(arrays, schema=schema)


@dataclass
class MigrationReport:
    """What :func:`migrate_store` did."""

    from_version: int
    to_version: int
    parts: int = 0
    backup: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.from_version == self.to_version:
            return f"store is at schema version {self.to_version}: nothing to migrate"
        text = (f"migrated from schema version {self.from_version} to {self.to_version}: {self.parts} part(s) "
                f"rewritten; the old files are in {self.backup}")  # fmt: skip
        return text + "".join(f"\n  note: {n}" for n in self.notes)


def _part_version(sfs: StoreFS, path: str) -> int:
    meta = pq.read_schema(path, filesystem=sfs.fs).metadata or {}
    return int(meta.get(b"pipstc.schema_version", b"0").decode() or 0)


def _read_old_part(sfs: StoreFS, path: str, name: str, num_landmarks: int) -> pa.Table:
    """An older part's columns that the current schema still has, read as the current types.

    Read through a dataset with the target schema, as the store's reader does: Parquet names a
    list's items ``element`` and pyarrow ``item``, which a plain cast refuses.
    """
    have = set(pq.read_schema(path, filesystem=sfs.fs).names)
    target = table_schema(name, num_landmarks if name == "labels" else None)
    kept = pa.schema([f for f in target if f.name in have])
    return ds.dataset([path], schema=kept, format="parquet", filesystem=sfs.fs).to_table()


def _rewrite_part(sfs: StoreFS, path: str, backup: str, table: pa.Table) -> None:
    sfs.makedirs(backup.rsplit("/", 1)[0])
    sfs.fs.copy_file(path, backup)  # the backup first: a crash after it leaves the original untouched
    tmp = f"{path.rsplit('/', 1)[0]}/_tmp-migrate-{path.rsplit('/', 1)[1]}"
    with sfs.fs.open_output_stream(tmp) as out:
        pq.write_table(table, out, **_parquet_options(table.schema))
    sfs._commit(tmp, path)


def _note_lines(notes: dict[str, _Notes], rows: dict[str, int]) -> list[str]:
    out = []
    for key, n in notes.items():
        if not n.counts:
            continue
        table, column = key.split(".", 1)
        extra = next((c.note for c in MIGRATED_COLUMNS if c.table == table and c.column == column), "")
        why = "; ".join(f"{r}: {c} (e.g. {', '.join(n.examples[r])})" for r, c in n.counts.most_common())
        total = sum(n.counts.values())
        line = f"{key} is null for {total} of {rows.get(table, total)} rows ({why})"
        out.append(line + (f"; {extra}" if extra else ""))
    return out


def migrate_store(sfs: StoreFS) -> MigrationReport:
    """Migrate the store at ``sfs`` to :data:`SCHEMA_VERSION` (see the module docstring).

    Raises:
        SchemaVersionError: the store is newer than this pipstc.
    """
    with writer_lock(sfs).hold():
        meta = json.loads(sfs.read_bytes(sfs.path(META_NAME)))
        version = int(meta.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(f"{sfs.show(sfs.path(META_NAME))}: schema version {version} is newer than "
                                     f"this pipstc ({SCHEMA_VERSION}); upgrade pipstc")  # fmt: skip
        if version < OLDEST_MIGRATABLE:
            raise SchemaVersionError(f"{sfs.show(sfs.path(META_NAME))}: schema version {version} was written by an "
                                     f"older pipstc than any migration starts from ({OLDEST_MIGRATABLE}); open it "
                                     "with the pipstc that wrote it (the store was left untouched)")  # fmt: skip
        report = MigrationReport(version, SCHEMA_VERSION)
        if version == SCHEMA_VERSION:
            return report
        n = int(meta["scheme"]["num_landmarks"])
        backup_root = sfs.path(BACKUP_DIR, f"v{version}")
        report.backup = sfs.show(backup_root)
        sfs.makedirs(backup_root)
        sfs.fs.copy_file(sfs.path(META_NAME), f"{backup_root}/{META_NAME}")
        notes: dict[str, _Notes] = {}
        rows: Counter = Counter()
        reader = PartReader(sfs, n)
        for name in TABLES:
            for part in reader.scan(name)[0]:
                old = _part_version(sfs, part.path)
                if old == SCHEMA_VERSION:
                    continue  # rewritten by an earlier, interrupted migration
                table = _read_old_part(sfs, part.path, name, n)
                rows[name] += table.num_rows
                new = upgrade_table(table, name, old, n, notes)
                _rewrite_part(sfs, part.path, f"{backup_root}/{sfs.relative(part.path)}", new)
                report.parts += 1
        report.notes = _note_lines(notes, dict(rows))
        record = {"from": version, "to": SCHEMA_VERSION, "at": datetime.now(UTC).isoformat(),
                  "backup": report.backup, "parts": report.parts, "notes": report.notes}  # fmt: skip
        meta.setdefault("migrations", []).append(record)
        meta["schema_version"] = SCHEMA_VERSION
        sfs.write_bytes(sfs.path(META_NAME), json.dumps(meta, indent=2).encode())
    for line in report.notes:
        log.warning("%s: %s", sfs.show(sfs.root), line)
    return report


def read_or_migrate(sfs: StoreFS) -> dict[str, Any]:
    """store.json checked (:func:`annotations.store._meta.read_meta`), migrating an older store first.

    PIPSTC_AUTO_MIGRATE=0 refuses an older store instead (the error names ``pipstc migrate``).
    """
    try:
        return read_meta(sfs)
    except StoreNeedsMigration:
        if os.environ.get("PIPSTC_AUTO_MIGRATE", "1") == "0":
            raise
        log.warning("%s: migrating the store to schema version %d", sfs.show(sfs.root), SCHEMA_VERSION)
        migrate_store(sfs)
        return read_meta(sfs)


def migrate(url: str | os.PathLike) -> MigrationReport:
    """Migrate the store at ``url`` (``pipstc migrate STORE``); a store already current is left as it is.

    Raises:
        StoreError: no store at ``url``.
    """
    sfs = StoreFS.from_url(url)
    if not sfs.is_file(sfs.path(META_NAME)):
        read_meta(sfs)  # raises the "no pipstc store here" error
    return migrate_store(sfs)
