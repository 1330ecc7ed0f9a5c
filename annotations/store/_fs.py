"""Filesystem access of the label store: local folders and any pyarrow or fsspec URL, with atomic writes.

A store lives at a local path (the default) or at a URL. ``file://``, ``s3://``, ``gs://``, ``hdfs://``
and ``abfs://`` go through pyarrow's own filesystems (``pyarrow.fs.FileSystem.from_uri``); every other
protocol that fsspec knows (``memory://``, ``sftp://``, ...) goes through fsspec, wrapped as a pyarrow
filesystem with ``PyFileSystem(FSSpecHandler(fs))`` (pyarrow docs, "Using fsspec-compatible
filesystems with Arrow").

Every write is atomic for readers: the bytes go to a temporary name in the target folder, starting
with ``_tmp-`` (pyarrow datasets and our readers skip names starting with ``_`` or ``.``), and are then
renamed onto the final name. Locally the temporary file is fsync'ed before the rename and the folder
after it (POSIX ``rename(2)`` is atomic; the fsyncs make the result survive a power cut, not only a
crash of the process). On object stores a "rename" is a server-side copy; the final object still
appears whole or not at all, since an object PUT is atomic.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from annotations.store.errors import StoreError

__all__ = ["PAUSE_ENV", "TMP_PREFIX", "StoreFS", "is_hidden", "unique_name"]

TMP_PREFIX = "_tmp-"
# Test hook: seconds to sleep between writing a temporary file and renaming it (see _pause_before_commit).
PAUSE_ENV = "PIPSTC_STORE_PAUSE_BEFORE_COMMIT"
# Protocols pyarrow implements natively; everything else is tried through fsspec.
_NATIVE = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")
# Parquet row groups of 128k rows (~90 MB of 68-landmark labels): large enough for fast scans
# (docs/store.md section 3.5), small enough that a reader decodes several groups of one file in parallel.
ROW_GROUP_SIZE = 131_072
# Columns unique (or nearly) per row: a dictionary only costs time there.
_UNIQUE = frozenset({"label_id", "sample_id", "image_uri", "parent_label_id"})


def unique_name(prefix: str = "part-", suffix: str = ".parquet") -> str:
    """A file name that sorts by creation time (UTC, microseconds) and never collides (random suffix)."""
    return f"{prefix}{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}{suffix}"


def is_hidden(name: str) -> bool:
    """Names that readers skip: temporary files and dot files."""
    return name.startswith(("_", "."))


def _pause_before_commit(tmp: str) -> None:
    """Test hook: with ``PIPSTC_STORE_PAUSE_BEFORE_COMMIT=<seconds>`` in the environment, announce the
    finished temporary file on stdout and sleep before the rename, so that a reliability test can kill
    the writer at exactly this point (tests/integration/test_store_reliability.py)."""
    delay = os.environ.get(PAUSE_ENV)
    if delay:
        print(f"PIPSTC_PAUSED {tmp}", flush=True)
        time.sleep(float(delay))


def _parquet_options(schema: pa.Schema) -> dict:
    """Writer options: zstd, dictionaries for repetitive columns, byte-stream-split for floats.

    BYTE_STREAM_SPLIT (Parquet format spec, Encodings) groups the bytes of each float by position,
    which zstd then compresses far better than raw IEEE floats: measured ~8% fewer bytes on random
    landmarks, more on real ones, at the same write speed.
    """
    dictionary, split = [], []
    for field in schema:
        path, leaf = field.name, field.type
        while pa.types.is_fixed_size_list(leaf):  # Parquet column path of a list leaf: <name>.list.element
            path, leaf = path + ".list.element", leaf.value_type
        if pa.types.is_floating(leaf):
            split.append(path)
        elif path == field.name and field.name not in _UNIQUE:
            dictionary.append(field.name)
    return {
        "compression": "zstd",
        "use_dictionary": dictionary,
        "use_byte_stream_split": split,
        "row_group_size": ROW_GROUP_SIZE,
        "write_statistics": True,
    }


@dataclass
class StoreFS:
    """A store's root on one filesystem.

    Attributes:
        fs: The pyarrow filesystem.
        root: The store's root folder as a path inside ``fs`` (no trailing slash).
        url: The store's address as the user gave it (local paths made absolute).
        local: True on the local filesystem (atomic rename, fsync and a real lock file are available).
        protocol: URL protocol for messages (``""`` for local).
    """

    fs: pafs.FileSystem
    root: str
    url: str
    local: bool
    protocol: str = ""

    @classmethod
    def from_url(cls, url: str | os.PathLike) -> StoreFS:
        """Resolve a local path or a filesystem URL.

        Raises:
            StoreError: the URL's filesystem cannot be opened; the message says which package is missing.
        """
        text = os.fspath(url)
        if "://" not in text:
            url = os.path.abspath(os.path.expanduser(text))
            # The root is the real path: a store reached through a symlink is the same store, so it
            # shares one process-wide writer lock (annotations.store._lock) instead of waiting on itself.
            return cls(pafs.LocalFileSystem(), os.path.realpath(url), url, True)
        protocol = text.split("://", 1)[0].lower()
        clean = text.rstrip("/")
        if protocol in _NATIVE:
            try:
                fs, path = pafs.FileSystem.from_uri(clean)
            except (pa.ArrowException, ValueError, OSError) as e:
                raise StoreError(f"cannot open the filesystem of {text!r}: {e}") from e
            local = isinstance(fs, pafs.LocalFileSystem)
            root = os.path.realpath(path) if local else path.rstrip("/") or "/"
            return cls(fs, root, clean, local, "" if local else protocol)
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            ffs, path = fsspec.core.url_to_fs(clean)
        except (ImportError, ValueError) as e:
            raise StoreError(
                f"cannot open the filesystem of {text!r}: {e}; install the fsspec implementation for "
                f"{protocol!r} (see the fsspec docs, 'Built-in' and 'Other known implementations')"
            ) from e
        return cls(PyFileSystem(FSSpecHandler(ffs)), path.rstrip("/") or "/", clean, False, protocol)

    # ----------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        """The path inside ``fs`` of ``root/parts...``."""
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def show(self, path: str) -> str:
        """A path for messages: a local path, or a URL a person can paste."""
        if self.local:
            return path
        return f"{self.protocol}://{path.lstrip('/')}"

    def relative(self, path: str) -> str:
        """``path`` relative to the store root."""
        return path[len(self.root.rstrip("/")) + 1 :] if path.startswith(self.root) else path

    # ------------------------------------------------------------------ reads
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_file(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def list(self, path: str, recursive: bool = True) -> list[pafs.FileInfo]:
        """Entries under ``path`` (files and folders), sorted by path; empty when ``path`` is missing."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(infos, key=lambda i: i.path)

    def read_bytes(self, path: str) -> bytes:
        """The whole file. Raises FileNotFoundError when missing."""
        if not self.is_file(path):
            raise FileNotFoundError(path)
        with self.fs.open_input_stream(path) as f:
            return f.read()

    # ----------------------------------------------------------------- writes
    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def remove(self, path: str) -> None:
        """Delete a file; a missing file is fine (another cleaner got there first)."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomically create or replace ``path`` with ``data``."""
        tmp = self._tmp_for(path)
        try:
            if self.local:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
            self._commit(tmp, path)
        except BaseException:
            self._discard(tmp)
            raise

    def put_bytes(self, path: str, data: bytes) -> None:
        """Write ``path`` in one go, without a temporary name (an object store's PUT is whole or absent).

        For files that must never be swept as a crashed writer's leftovers: the lock objects that
        waiting writers put while another writer, holding the lock, removes ``_tmp-*`` files.
        """
        with self.fs.open_output_stream(path) as out:
            out.write(data)

    def write_parquet(self, folder: str, table: pa.Table) -> str:
        """Write ``table`` as a new ``part-*.parquet`` in ``folder``, atomically; returns the final path."""
        final = f"{folder.rstrip('/')}/{unique_name()}"
        tmp = self._tmp_for(final)
        options = _parquet_options(table.schema)
        try:
            if self.local:
                pq.write_table(table, tmp, **options)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                with self.fs.open_output_stream(tmp) as out:
                    pq.write_table(table, out, **options)
            self._commit(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise
        return final

    def clean_temps(self, path: str, recursive: bool = True) -> list[str]:
        """Delete leftover ``_tmp-*`` files of interrupted writes under ``path``; returns what was removed.

        Only call this holding the writer lock: every writer writes its temporary files under the lock,
        so any temporary file seen then belongs to a writer that died.
        """
        removed = []
        for info in self.list(path, recursive=recursive):
            if info.type == pafs.FileType.File and info.base_name.startswith(TMP_PREFIX):
                self.remove(info.path)
                removed.append(info.path)
        return removed

    def _tmp_for(self, final: str) -> str:
        folder, _, name = final.rpartition("/")
        self.makedirs(folder)
        return f"{folder}/{TMP_PREFIX}{secrets.token_hex(6)}-{name}"

    def _commit(self, tmp: str, final: str) -> None:
        _pause_before_commit(tmp)
        if self.local:
            os.replace(tmp, final)
            _fsync_dir(os.path.dirname(final))
        else:
            self.fs.move(tmp, final)

    def _discard(self, tmp: str) -> None:
        try:
            self.remove(tmp)
        except OSError:
            pass  # the next writer's clean_temps removes it


def _fsync_dir(folder: str) -> None:
    """Persist a rename (POSIX: the directory entry lives in the folder). Not possible on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
