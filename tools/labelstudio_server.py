"""Start and stop a local Label Studio server for tests, benchmarks and a one-person review setup.

The recipe follows docs/review.md section 10 (measured on label-studio
1.23.2): the server lives in its own virtual environment (it must not share one with prefect), binds
127.0.0.1 on a port we pick ourselves (``label-studio start`` silently moves to the next port when
the asked one is busy), gets a preset legacy token (which 1.23 honours only when
``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`` is set on the first start), serves local files from a
document root, and makes no outbound calls (version check and Sentry off). Stray plain ``USERNAME``,
``PASSWORD``, ``HOST``, ``PORT`` and ``DEBUG`` variables are removed because Label Studio reads them
as fallbacks of its own settings.

A fresh data directory needs 32-67 s of Django migrations on two busy cores; a copy of an already
migrated data directory (a *template*, including the ``.env`` that holds the SECRET_KEY) starts in
about 5 s. :func:`start_label_studio` makes such a template from its first healthy fresh start when
``template_dir`` is given, and uses it afterwards.

Example (a local review server for a store whose images lie in ``/data/photos/<folder>/``)::

    from tools.labelstudio_server import start_label_studio
    server = start_label_studio("/tmp/ls", document_root="/data/photos")
    # export PIPSTC_LABEL_STUDIO_URL=<server.url> PIPSTC_LABEL_STUDIO_TOKEN=<server.token>
    #        PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT=/data/photos, then `pipstc review push|pull`
    ...
    server.stop()
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_STARTUP_BUDGET_S",
    "LabelStudioServer",
    "ServerStartError",
    "find_label_studio_binary",
    "free_port",
    "label_studio_version",
    "start_label_studio",
]

log = logging.getLogger(__name__)

# Fresh data dirs took up to 67 s under CPU contention (docs/review.md section 10); 240 s leaves room for a
# machine that is busier still without letting a dead start hang a test session forever.
DEFAULT_STARTUP_BUDGET_S = 240.0
_REPO_ROOT = Path(__file__).resolve().parents[1]
_STRAY_ENV = ("USERNAME", "PASSWORD", "HOST", "PORT", "DEBUG")  # docs/review.md section 10
_DB_NAME = "label_studio.sqlite3"


class ServerStartError(RuntimeError):
    """The Label Studio server could not be started; the message says why and where the log is."""


def find_label_studio_binary(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The ``label-studio`` executable: ``explicit``, ``$PIPSTC_LABEL_STUDIO_BIN``, the repository's
    ``.venv-labelstudio``, or ``label-studio`` on PATH; None when none exists."""
    candidates: list[str | os.PathLike[str] | None] = [
        explicit,
        os.environ.get("PIPSTC_LABEL_STUDIO_BIN") or None,
        _REPO_ROOT / ".venv-labelstudio" / "bin" / "label-studio",
        shutil.which("label-studio"),
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def label_studio_version(binary: Path) -> str:
    """The installed label-studio version, read from the dist-info beside the binary (no import, which
    would take seconds and write under ``~/.local/share``)."""
    venv = binary.resolve().parent.parent
    for dist in sorted(venv.glob("lib/python*/site-packages/label_studio-*.dist-info")):
        return dist.name[len("label_studio-") : -len(".dist-info")]
    return f"unknown-{int(binary.stat().st_mtime)}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (bind port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LabelStudioServer:
    """A running Label Studio process we started.

    Attributes:
        url: Base URL, e.g. ``http://127.0.0.1:43127``.
        token: The legacy API token of the admin user (send as ``Authorization: Token ...``).
        username: The admin user's e-mail (the login of the web UI).
        password: Its password.
        document_root: Local files are served from under this folder.
        data_dir: ``LABEL_STUDIO_BASE_DATA_DIR`` (SQLite DB, media, ``.env``).
        log_path: The server's stdout and stderr.
    """

    url: str
    token: str = field(repr=False)
    document_root: Path
    data_dir: Path
    log_path: Path
    port: int
    binary: Path
    env: dict[str, str] = field(repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def username(self) -> str:
        """The admin user's e-mail."""
        return self.env["LABEL_STUDIO_USERNAME"]

    @property
    def password(self) -> str:
        """The admin user's password (kept out of ``repr``)."""
        return self.env["LABEL_STUDIO_PASSWORD"]

    @property
    def pid(self) -> int:
        """Process id of the server (``runserver --noreload``: a single process, no children)."""
        if self.process is None:
            raise ServerStartError("the Label Studio server is not running")
        return self.process.pid

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (it exits in ~1.5 s), SIGKILL after ``timeout`` seconds."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests use it to check recovery)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, budget_s: float = DEFAULT_STARTUP_BUDGET_S) -> None:
        """Start the server again on the same data dir and port (about 6 s on an existing DB)."""
        self.stop()
        _launch(self)
        _wait_healthy(self, budget_s)

    def __enter__(self) -> LabelStudioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server_env(
    data_dir: Path, document_root: Path, xdg: Path, username: str, password: str, token: str
) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _STRAY_ENV and not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",  # else the port-change notice sits in a buffer (docs/review.md section 10)
            "XDG_CONFIG_HOME": str(xdg / "config"),  # not ~/.config/label-studio/user_id (docs/review.md section 10)
            "XDG_DATA_HOME": str(xdg / "data"),
            "XDG_CACHE_HOME": str(xdg / "cache"),
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": username,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # 1.23: preset tokens are refused otherwise
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # no version look-up at start (docs/review.md section 10)
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",  # loopback webhooks (docs/review.md section 10)
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
    )
    return env


def _launch(server: LabelStudioServer) -> None:
    cmd = [
        str(server.binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(server.port),
    ]  # fmt: skip
    with open(server.log_path, "ab") as logf:
        server.process = subprocess.Popen(
            cmd, env=server.env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=server.data_dir
        )


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _http_status(url: str, token: str | None = None, timeout: float = 5.0) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return 0


def _wait_healthy(server: LabelStudioServer, budget_s: float) -> None:
    t0 = time.monotonic()
    while True:
        if not server.alive():
            code = server.process.returncode if server.process is not None else None
            server.process = None
            raise ServerStartError(
                f"Label Studio exited (code {code}) before answering on {server.url}; log {server.log_path}:\n"
                + _log_tail(server.log_path)
            )
        if _http_status(server.url + "/health") == 200:
            break
        if time.monotonic() - t0 > budget_s:
            server.stop()
            raise ServerStartError(
                f"Label Studio did not answer {server.url}/health within {budget_s:.0f} s; log {server.log_path}:\n"
                + _log_tail(server.log_path)
            )
        time.sleep(0.25)
    status = _http_status(server.url + "/api/current-user/whoami", server.token, timeout=30)
    if status != 200:
        server.stop()
        raise ServerStartError(
            f"Label Studio at {server.url} is up but refuses the preset token (HTTP {status}); a data dir created"
            " without LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true keeps legacy tokens disabled: use a fresh data dir"
        )
    log.info("Label Studio healthy at %s after %.1f s", server.url, time.monotonic() - t0)


def _set_token(db: Path, token: str) -> bool:
    """Give the template's admin user a fresh token (the token is otherwise fixed at user creation)."""
    try:
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            cur = con.execute("UPDATE authtoken_token SET key = ?", (token,))
            return cur.rowcount == 1
    except sqlite3.Error:
        return False


def _django_password_hash(password: str, iterations: int = 100_000) -> str:
    """A Django ``pbkdf2_sha256`` password hash (django.contrib.auth.hashers.PBKDF2PasswordHasher format:
    ``algorithm$iterations$salt$base64(pbkdf2_hmac)``). Django checks a hash with the iterations it
    names, so fewer than its default (1,000,000) only make the test logins cheaper."""
    salt = secrets.token_hex(11)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def _set_password(db: Path, email: str, password: str) -> bool:
    """Give the template's admin user this run's password (like the token, fixed at user creation)."""
    try:
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            hashed = _django_password_hash(password)
            cur = con.execute("UPDATE htx_user SET password = ? WHERE email = ?", (hashed, email))
            return cur.rowcount == 1
    except sqlite3.Error:
        return False


def _save_template(data_dir: Path, template: Path) -> None:
    """Copy a freshly migrated data dir to ``template`` (atomically: a temp dir renamed in place).

    The DB is copied with SQLite's online backup API, which is consistent even while the server runs.
    """
    if template.exists():
        return
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = template.parent / f".{template.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        shutil.copytree(data_dir, tmp, ignore=shutil.ignore_patterns(_DB_NAME + "*", "export", "media"))
        with contextlib.closing(sqlite3.connect(data_dir / _DB_NAME)) as src:
            with contextlib.closing(sqlite3.connect(tmp / _DB_NAME)) as dst:
                src.backup(dst)
        os.rename(tmp, template)
    except OSError as e:  # another process made it first, or the disk is full: the template is optional
        log.info("Label Studio template not saved (%s)", e)
        shutil.rmtree(tmp, ignore_errors=True)


def start_label_studio(
    work_dir: str | os.PathLike[str],
    *,
    binary: str | os.PathLike[str] | None = None,
    port: int | None = None,
    token: str | None = None,
    username: str = "admin@example.com",
    password: str | None = None,
    document_root: str | os.PathLike[str] | None = None,
    template_dir: str | os.PathLike[str] | None = None,
    startup_budget_s: float = DEFAULT_STARTUP_BUDGET_S,
) -> LabelStudioServer:
    """Start Label Studio headless on 127.0.0.1 and wait until it answers with the preset token.

    Args:
        work_dir: Folder for the data dir (``<work_dir>/data``), XDG dirs and the log; created.
        binary: The ``label-studio`` executable (default: :func:`find_label_studio_binary`).
        port: TCP port (default: a free one).
        token: 40-hex legacy token to preset (default: a fresh random one).
        username: Admin e-mail.
        password: Admin password (default: random; the API needs only the token).
        document_root: Local files root (default ``<work_dir>/files``); task images must lie in a
            subfolder of it.
        template_dir: Folder that caches migrated data dirs, one per label-studio version. Used when
            present, filled after the first fresh start otherwise. None: always migrate afresh.
        startup_budget_s: Seconds to wait for ``/health`` before giving up.

    Raises:
        ServerStartError: no binary, the process died, or no answer within the budget (with the log tail).
    """
    exe = find_label_studio_binary(binary)
    if exe is None:
        raise ServerStartError(
            "no label-studio executable: set PIPSTC_LABEL_STUDIO_BIN or install the server in its own venv"
            " (bash scripts/setup.sh --labelstudio creates .venv-labelstudio)"
        )
    work = Path(work_dir).resolve()
    data_dir, xdg = work / "data", work / "xdg"
    root = Path(document_root).resolve() if document_root is not None else work / "files"
    for d in (work, xdg, root):
        d.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_hex(20)
    template = Path(template_dir) / label_studio_version(exe) if template_dir is not None else None
    from_template = False
    password = password or secrets.token_urlsafe(16)
    if template is not None and (template / _DB_NAME).is_file() and not data_dir.exists():
        shutil.copytree(template, data_dir)
        db = data_dir / _DB_NAME
        from_template = _set_token(db, token) and _set_password(db, username, password)
        if not from_template:  # unexpected DB layout: fall back to a fresh, slow start
            shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server = LabelStudioServer(
        url=f"http://127.0.0.1:{port}",
        token=token,
        document_root=root,
        data_dir=data_dir,
        log_path=work / "label-studio.log",
        port=port,
        binary=exe,
        env=_server_env(data_dir, root, xdg, username, password, token),
    )
    _launch(server)
    _wait_healthy(server, startup_budget_s)
    if template is not None and not from_template:
        _save_template(data_dir, template)
    return server
