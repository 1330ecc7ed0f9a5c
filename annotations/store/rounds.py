"""Round bookkeeping of the store: ``rounds/round=<k>/`` with steps.json, config, checkpoint, metrics, report.

A flow marks each step of round k done (:meth:`RoundBook.mark_step`) only after the step's outputs
are committed, so a rerun of the round asks :meth:`RoundBook.completed_steps` and resumes after the
last completed step (docs/store.md section 9). Every file is written atomically under the writer lock;
names may contain sub-folders (``"shards/plan.json"``) but no ``..`` and no hidden parts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from annotations.store._fs import StoreFS, is_hidden
from annotations.store.errors import CorruptFile, RoundFileMissing, StoreError

__all__ = ["STEPS_NAME", "RoundBook"]

STEPS_NAME = "steps.json"
_ROUND_DIR = re.compile(r"^round=(0|[1-9][0-9]*)$")


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays, datetimes and paths as plain JSON."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, datetime):
        return obj.isoformat()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


class RoundBook:
    """Mixin of :class:`annotations.store.Store` for the files of each round."""

    _fs: StoreFS

    def lock(self) -> AbstractContextManager[None]:  # provided by Store
        raise NotImplementedError

    def _writing(self, folder: str | None = None) -> AbstractContextManager[None]:  # provided by Store
        raise NotImplementedError

    def _round_dir(self, k: int) -> str:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
            raise StoreError(f"round must be an integer >= 0, got {k!r}")
        return self._fs.path("rounds", f"round={int(k)}")

    def _round_file(self, k: int, name: str) -> str:
        parts = name.replace("\\", "/").split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") or is_hidden(p) for p in parts):
            raise StoreError(
                f"round file name {name!r}: use a relative name like 'metrics.json' or 'shards/plan.json' "
                "(no '..', no empty or hidden parts)"
            )
        return f"{self._round_dir(k)}/{'/'.join(parts)}"

    def round_path(self, k: int) -> str:
        """The folder of round ``k`` (created): a local path, or a URL for other filesystems."""
        folder = self._round_dir(k)
        self._fs.makedirs(folder)
        return self._fs.show(folder)

    def write_round_file(self, k: int, name: str, data: bytes) -> str:
        """Atomically write (or replace) a file of round ``k``; returns its path or URL."""
        path = self._round_file(k, name)
        with self._writing(path.rsplit("/", 1)[0]):
            self._fs.write_bytes(path, bytes(data))
        return self._fs.show(path)

    def read_round_file(self, k: int, name: str) -> bytes:
        """The bytes of a file of round ``k``.

        Raises:
            RoundFileMissing: no such file (also a FileNotFoundError).
        """
        path = self._round_file(k, name)
        try:
            return self._fs.read_bytes(path)
        except FileNotFoundError:
            raise RoundFileMissing(
                f"{self._fs.show(path)}: round {k} has no file {name!r} (yet); the step that writes it has not run"
            ) from None

    def round_file_info(self, k: int, name: str) -> tuple[int, str]:
        """(size in bytes, version tag) of a file of round ``k``: a new version of the file changes them.

        The tag is the object's ETag where the filesystem gives one (S3: a hash of the content),
        else its modification time.

        Raises:
            RoundFileMissing: no such file.
        """
        path = self._round_file(k, name)
        info = self._fs.fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise RoundFileMissing(f"{self._fs.show(path)}: round {k} has no file {name!r} (yet)")
        tag = f"mtime:{info.mtime_ns}"
        if not self._fs.local:
            try:
                with self._fs.fs.open_input_file(path) as f:  # a HEAD request on object stores
                    etag = (f.metadata() or {}).get(b"ETag") or (f.metadata() or {}).get("ETag")
                if etag:
                    tag = f"etag:{etag.decode() if isinstance(etag, bytes) else etag}"
            except (OSError, NotImplementedError):
                pass
        return int(info.size or 0), tag

    def write_round_json(self, k: int, name: str, obj: Any) -> None:
        """Write ``obj`` as JSON (numpy values become plain numbers/lists)."""
        try:
            text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True)
        except (TypeError, ValueError) as e:
            raise StoreError(f"round {k} {name}: cannot write as JSON ({e}); pass plain data") from None
        self.write_round_file(k, name, text.encode())

    def read_round_json(self, k: int, name: str, default: Any = None) -> Any:
        """A JSON file of round ``k``, or ``default`` when it does not exist.

        Raises:
            CorruptFile: the file exists but is not JSON.
        """
        try:
            raw = self.read_round_file(k, name)
        except RoundFileMissing:
            return default
        try:
            return json.loads(raw)
        except ValueError as e:
            where = self._fs.show(self._round_file(k, name))
            raise CorruptFile(where, f"{where}: not valid JSON ({e}); delete it to redo the step that wrote it") from e

    def mark_step(self, k: int, step: str, info: dict[str, Any] | None = None) -> None:
        """Record that ``step`` of round ``k`` completed (steps.json), with its small result ``info``."""
        if not step or not isinstance(step, str):
            raise StoreError(f"step name must be a non-empty string, got {step!r}")
        with self.lock():
            steps = self.completed_steps(k)
            steps[step] = {"completed_at": datetime.now(UTC).isoformat(), **(info or {})}
            self.write_round_json(k, STEPS_NAME, steps)

    def completed_steps(self, k: int) -> dict[str, dict[str, Any]]:
        """Steps of round ``k`` marked completed, in the order they completed: name -> info."""
        steps = self.read_round_json(k, STEPS_NAME, default={})
        if not isinstance(steps, dict):
            where = self._fs.show(self._round_file(k, STEPS_NAME))
            raise CorruptFile(where, f"{where}: expected a JSON object of steps; delete it to rerun the round")
        return steps

    def _round_entries(self) -> Iterator[tuple[pafs.FileInfo, re.Match | None]]:
        for info in self._fs.list(self._fs.path("rounds"), recursive=False):
            if not is_hidden(info.base_name):
                yield info, _ROUND_DIR.match(info.base_name) if info.type == pafs.FileType.Directory else None

    def rounds(self) -> list[int]:
        """Rounds with any bookkeeping file, ascending."""
        out = []
        for info, match in self._round_entries():
            if match and any(
                f.type == pafs.FileType.File and not is_hidden(f.base_name) for f in self._fs.list(info.path)
            ):
                out.append(int(match.group(1)))
        return sorted(out)

    def _check_rounds(self) -> list[str]:
        problems = []
        for info, match in self._round_entries():
            if match is None:
                problems.append(f"{self._fs.show(info.path)}: unexpected entry in rounds/ (expected round=<k>/)")
                continue
            try:
                self.completed_steps(int(match.group(1)))
            except CorruptFile as e:
                problems.append(str(e))
        return problems
