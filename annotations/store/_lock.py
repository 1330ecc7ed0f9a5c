"""The store's writer lock: one writer at a time, and a crashed writer does not hold it forever.

Local stores use a lock file created with ``O_CREAT | O_EXCL`` (atomic on POSIX filesystems, NFSv3+
included) holding the owner's pid, host, process start time, the time it was taken and a random
token. A waiting writer breaks the lock when it is stale:

* same host (and pid namespace): the owner pid is gone, a zombie, or now belongs to another process
  (its start time in ``/proc/<pid>/stat`` differs from the recorded one: pids are reused), or the
  machine rebooted since (``/proc/sys/kernel/random/boot_id`` differs);
* another host or pid namespace (its pid cannot be checked from here): the lock is older than
  ``stale_after``;
* an unreadable lock file (its writer died between creating and filling it) older than 10 s.

Breaking happens under an ``flock`` on a guard file and re-reads the lock first, so two waiters
cannot both break it and one of them delete the other's fresh lock.

Other filesystems (object stores, fsspec) cannot create-if-absent atomically through pyarrow, so
there the lock is best-effort: write the lock object, wait a moment, read it back and own it only if
our token is still there. It narrows the window of a race between two hosts but does not close it;
teams that write from several machines at once to an object store should also serialise writers
(e.g. a Prefect concurrency limit). Within one process a re-entrant thread lock always serialises.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from annotations.store._fs import StoreFS
from annotations.store.errors import StoreLocked

__all__ = ["LOCK_NAME", "REVIEW_LOCK_NAME", "WriterLock", "writer_lock"]

log = logging.getLogger(__name__)

LOCK_NAME = "_writer.lock"
# A second lock of the same kind that serialises Label Studio pushers (annotations.review.push), so the
# store's writer lock is never held across HTTP calls while two pushers still cannot both import a face.
REVIEW_LOCK_NAME = "_review.lock"
GUARD_SUFFIX = ".guard"
# How long a writer waits for the lock: a 1M-label write holds it for ~10 s; a whole flow step can
# hold it longer. Override with PIPSTC_LOCK_TIMEOUT_S.
DEFAULT_TIMEOUT_S = 600.0
# When a lock of another host counts as abandoned (its pid cannot be checked). Generous, because a
# live writer whose lock is broken would race the next one. Override with PIPSTC_LOCK_STALE_S.
DEFAULT_STALE_S = 3600.0
# A lock file is filled microseconds after its creation; one still unreadable after this is a crash.
_UNREADABLE_STALE_S = 10.0

_REGISTRY: dict[tuple[str, str], WriterLock] = {}
_REGISTRY_LOCK = threading.Lock()


def writer_lock(sfs: StoreFS, name: str = LOCK_NAME) -> WriterLock:
    """The process-wide lock object of a store (shared by every Store instance of the same store).

    Args:
        sfs: The store's filesystem.
        name: The lock file at the store root: the writer lock, or :data:`REVIEW_LOCK_NAME`.
    """
    key = (sfs.protocol or "local", sfs.path(name))
    with _REGISTRY_LOCK:
        lock = _REGISTRY.get(key)
        if lock is None:
            lock = _REGISTRY[key] = WriterLock(sfs, name)
        return lock


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a pid from /proc (Linux, proc(5)), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may contain spaces and ')'
    # fields[0] is field 3 of proc(5) (state); start time is field 22.
    return fields[0], int(fields[19])


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# Linux: changes at every boot (proc(5), /proc/sys/kernel/random/boot_id); None elsewhere.
_BOOT_ID = _read_text("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str | None:
    """The pid namespace of this process ("pid:[4026531836]"): pids are only comparable within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return not os.path.isdir("/proc")  # with /proc present a missing entry means gone
    state, started = stat
    if state in ("Z", "X"):  # killed but not reaped yet
        return False
    return start is None or started == start


class WriterLock:
    """Re-entrant (per thread) writer lock of one store; see the module docstring."""

    def __init__(self, sfs: StoreFS, name: str = LOCK_NAME) -> None:
        self.sfs = sfs
        self.name = name
        self.path = sfs.path(name)
        # None: read PIPSTC_LOCK_TIMEOUT_S / PIPSTC_LOCK_STALE_S (or the defaults) at each acquire.
        self.timeout_s: float | None = None
        self.stale_after_s: float | None = None
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._token: str | None = None
        self.host = socket.gethostname()

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock for the ``with`` block (re-entrant: nested holds by one thread are free).

        Args:
            timeout: Seconds to wait (default :attr:`timeout`).
        """
        self.acquire(timeout)
        try:
            yield
        finally:
            self.release()

    @property
    def timeout(self) -> float:
        """Seconds a writer waits for the lock before StoreLocked."""
        return self.timeout_s if self.timeout_s is not None else _env_float("PIPSTC_LOCK_TIMEOUT_S", DEFAULT_TIMEOUT_S)

    @property
    def stale_after(self) -> float:
        """Age after which a lock of another host counts as abandoned."""
        if self.stale_after_s is not None:
            return self.stale_after_s
        return _env_float("PIPSTC_LOCK_STALE_S", DEFAULT_STALE_S)

    @property
    def held(self) -> bool:
        """Whether this process holds the file lock now."""
        return self._depth > 0

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (default :attr:`timeout`).

        Raises:
            StoreLocked: another live writer held it for the whole timeout; names it and the fix.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=timeout):
            raise StoreLocked(
                f"{self.sfs.show(self.path)}: another thread of this process held the writer lock for "
                f"{timeout:.0f} s; set PIPSTC_LOCK_TIMEOUT_S to wait longer"
            )
        try:
            if self._depth == 0:
                if self.sfs.local:
                    self._acquire_local(deadline)
                else:
                    self._acquire_remote(deadline)
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        """Release one hold; the file lock goes when the outermost hold ends."""
        try:
            self._depth -= 1
            if self._depth == 0:
                self._release_file()
        finally:
            self._thread_lock.release()

    # ------------------------------------------------------------------ internals
    def _info(self) -> dict[str, Any]:
        stat = _proc_stat(os.getpid())
        return {
            "pid": os.getpid(),
            "host": self.host,
            "pid_start": stat[1] if stat else None,
            "pid_ns": _pid_namespace(),
            "boot_id": _BOOT_ID,
            "since": time.time(),
            "since_utc": datetime.now(UTC).isoformat(),
            "token": secrets.token_hex(8),
        }

    def _read_holder(self) -> dict[str, Any] | None:
        """The lock file's content (plus ``mtime``), ``{"unreadable": True, ...}``, or None when absent."""
        try:
            if self.sfs.local:
                mtime = os.stat(self.path).st_mtime
                with open(self.path) as f:
                    text = f.read()
            else:
                info = self.sfs.fs.get_file_info(self.path)
                if info.type == pafs.FileType.NotFound:
                    return None
                mtime = info.mtime.timestamp() if info.mtime else time.time()
                text = self.sfs.read_bytes(self.path).decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            if not isinstance(holder, dict) or "token" not in holder:
                raise ValueError
        except ValueError:
            return {"unreadable": True, "mtime": mtime}
        holder["mtime"] = mtime
        return holder

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        now = time.time()
        if holder.get("unreadable"):
            return now - holder["mtime"] > _UNREADABLE_STALE_S
        pid = holder.get("pid")
        if holder.get("host") == self.host and isinstance(pid, int):
            if _BOOT_ID and holder.get("boot_id") not in (None, _BOOT_ID):
                return True  # the machine rebooted since: its holder is gone
            if holder.get("pid_ns") in (None, _pid_namespace()):
                return not _pid_alive(pid, holder.get("pid_start"))
            # same host name, other pid namespace (containers sharing the host name): pid not checkable
        return now - float(holder.get("since", holder["mtime"])) > self.stale_after

    def _describe(self, holder: dict[str, Any]) -> str:
        if holder.get("unreadable"):
            return "an unreadable lock file"
        age = time.time() - float(holder.get("since", holder["mtime"]))
        return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since_utc')} ({age:.0f} s ago)"

    def _locked_error(self, holder: dict[str, Any]) -> StoreLocked:
        where = self.sfs.show(self.path)
        return StoreLocked(
            f"{where}: the store's writer lock is held by {self._describe(holder)}; waited {self.timeout:.0f} s. "
            f"Wait for that writer to finish (or raise PIPSTC_LOCK_TIMEOUT_S); if it is gone for good (a machine "
            f"that died), delete {where} by hand"
        )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Serialise lock breaking between processes of this host (flock on a guard file)."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; breaking stays check-then-delete
            yield
            return
        fd = os.open(self.sfs.path(self.name + GUARD_SUFFIX), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _break_local(self, seen: dict[str, Any]) -> None:
        with self._guard():
            now = self._read_holder()
            if now is None:
                return
            same = now.get("token") == seen.get("token") and now.get("mtime") == seen.get("mtime")
            if same and self._is_stale(now):
                log.warning("breaking the stale writer lock %s of %s", self.path, self._describe(now))
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass

    def _acquire_local(self, deadline: float) -> None:
        self.sfs.makedirs(self.sfs.root)
        delay = 0.005
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:
                    continue  # released between our open and read: try again at once
                if self._is_stale(holder):
                    self._break_local(holder)
                    continue
                if time.monotonic() >= deadline:
                    raise self._locked_error(holder) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
                continue
            info = self._info()
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
                f.flush()
                os.fsync(f.fileno())
            self._token = info["token"]
            return

    def _acquire_remote(self, deadline: float) -> None:
        delay = 0.02
        while True:
            holder = self._read_holder()
            if holder is None or self._is_stale(holder):
                info = self._info()
                # One PUT, no _tmp- name: the holder's sweep of crashed writers' temporary files runs
                # while waiters write here, and must not delete a waiter's lock attempt mid-write.
                self.sfs.put_bytes(self.path, json.dumps(info).encode())
                time.sleep(0.05)  # let a racing writer's lock land, then see whose token survived
                now = self._read_holder()
                if now is not None and now.get("token") == info["token"]:
                    self._token = info["token"]
                    return
                holder = now or holder
            if time.monotonic() >= deadline:
                raise self._locked_error(holder or {"unreadable": True, "mtime": time.time()})
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _release_file(self) -> None:
        holder = self._read_holder()
        token, self._token = self._token, None
        if holder is None or holder.get("token") != token:
            log.warning("%s: the writer lock was taken from this process while it held it", self.path)
            return
        if self.sfs.local:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        else:
            self.sfs.remove(self.path)
