"""A small Label Studio REST client with bounded retries and errors that never show the token.

Why not the SDK's generated client for the data path: its retry loop also re-sends non-idempotent
POSTs (a task import retried after a read timeout can duplicate every task: the server has no dedupe,
docs/review.md section 5.3), its error bodies are raw, and pydantic serialisation costs ~2.5 s per 1,000
68-point tasks (docs/review.md section 9). This client speaks the same REST API (docs/review.md section 8) with
httpx, which the SDK already depends on; :meth:`LabelStudioClient.sdk` returns the official SDK
client on the same server and token for everything else.

Tokens (docs/review.md section 2): a legacy token is sent as ``Authorization: Token <key>``; a personal
access token (a JWT refresh token) is exchanged at ``/api/token/refresh/`` for a 5-minute access token
sent as ``Bearer``. The token is read from ``PIPSTC_LABEL_STUDIO_TOKEN`` (or passed in) and kept in a
private attribute: it is never logged, never in ``repr`` and never in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "ENV_DOCUMENT_ROOT",
    "ENV_TOKEN",
    "ENV_URL",
    "LabelStudioClient",
    "RetryPolicy",
    "ReviewAuthError",
    "ReviewConfigError",
    "ReviewError",
    "ReviewRequestError",
    "ReviewUnavailable",
    "connect",
    "configured",
]

log = logging.getLogger(__name__)

ENV_URL = "PIPSTC_LABEL_STUDIO_URL"
ENV_TOKEN = "PIPSTC_LABEL_STUDIO_TOKEN"
# The server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, as seen from this machine (local stores only).
ENV_DOCUMENT_ROOT = "PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT"


class ReviewError(RuntimeError):
    """Base class of review errors."""


class ReviewConfigError(ReviewError):
    """Label Studio is not configured (no URL or token) or a project does not fit the store."""


class ReviewAuthError(ReviewError):
    """Label Studio refused the token."""


class ReviewUnavailable(ReviewError):
    """Label Studio did not answer (connection error, timeout, 5xx) within the retry budget.

    Attributes:
        ambiguous: True when a non-idempotent request may have been applied before the failure.
    """

    def __init__(self, message: str, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


class ReviewRequestError(ReviewError):
    """Label Studio answered with a client error (4xx other than auth) or an unexpected body."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    With the defaults a dead server is given up on after about 0.5 + 1 + 2 + 4 = 7.5 s of waiting
    (plus the attempts themselves): long enough to ride out a restart of a local Label Studio
    (6 s, docs/review.md section 10), short enough that a scheduled flow does not hang.
    """

    attempts: int = 5  # tries per request, the first included
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    timeout_s: float = 60.0  # per request; imports of 200 68-point tasks take ~2 s on a busy server
    import_timeout_s: float = 300.0  # imports are never retried after sending, so give them room

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based)."""
        return random.uniform(0.5, 1.0) * min(self.max_delay_s, self.initial_delay_s * 2.0**attempt)


_RETRY_STATUS = {429, 500, 502, 503, 504}
# Failures where the request certainly did not reach the server: safe to retry any method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT = (httpx.TransportError,)


def configured(url: str | None = None) -> bool:
    """True when a Label Studio URL is given or set in ``PIPSTC_LABEL_STUDIO_URL``."""
    return bool(url or os.environ.get(ENV_URL))


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT (unverified), or None if ``token`` is not one (a legacy token is 40 hex)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioClient:
    """REST client of one Label Studio server.

    Attributes:
        url: Base URL without a trailing slash.
        retry: The retry policy.
        http_seconds: Wall time spent inside HTTP requests so far (waiting on the server and the
            network, including JSON (de)serialisation by httpx); benchmarks compare it with total time.
        requests: Number of HTTP requests sent (retries included).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url:
            raise ReviewConfigError(f"no Label Studio URL: set {ENV_URL} (e.g. http://127.0.0.1:8080)")
        if not token:
            raise ReviewConfigError(
                f"no Label Studio token: set {ENV_TOKEN} to your token (Account & Settings > Personal Access"
                " Token, or the legacy token)"
            )
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.__token = token
        claims = _jwt_claims(token)
        self._personal = claims is not None and claims.get("token_type") == "refresh"
        self._access: str | None = None
        self._access_exp = 0.0
        self._http = httpx.Client(base_url=self.url, timeout=self.retry.timeout_s, transport=transport)
        self.http_seconds = 0.0
        self.requests = 0

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r})"

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        out = text.replace(self.__token, "***")
        return out.replace(self._access, "***") if self._access else out

    def _auth_header(self) -> str:
        if not self._personal:
            return f"Token {self.__token}"
        if self._access is None or time.time() > self._access_exp - 30:
            self._refresh_access()
        return f"Bearer {self._access}"

    def _refresh_access(self) -> None:
        resp = self._send("POST", "/api/token/refresh/", json={"refresh": self.__token}, auth=False)
        if resp.status_code != 200:
            self._raise_auth(resp)
        access = resp.json().get("access", "")
        claims = _jwt_claims(access) or {}
        self._access = access
        self._access_exp = float(claims.get("exp", time.time() + 240))

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        auth: bool = True,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One logical request with bounded retries; raises ReviewUnavailable when the budget is spent."""
        last: str = ""
        for attempt in range(self.retry.attempts):
            headers = {"Authorization": self._auth_header()} if auth else {}
            maybe_applied = False
            t0 = time.perf_counter()
            try:
                self.requests += 1
                resp = self._http.request(
                    method, path, params=params, json=json, headers=headers, timeout=timeout or self.retry.timeout_s
                )
            except _NOT_SENT as e:
                last = f"{type(e).__name__}: {self._redact(str(e))}"
            except _TRANSIENT as e:  # read timeout, connection reset mid-request...
                last = f"{type(e).__name__}: {self._redact(str(e))}"
                maybe_applied = True
            else:
                if resp.status_code not in _RETRY_STATUS:
                    return resp
                last = f"HTTP {resp.status_code}"
                maybe_applied = resp.status_code not in (429, 503)  # refusals before any work starts
            finally:
                self.http_seconds += time.perf_counter() - t0
            if maybe_applied and not idempotent:
                raise ReviewUnavailable(
                    f"Label Studio at {self.url}: {method} {path} failed after sending ({last}); it may or may not have"
                    " been applied",
                    ambiguous=True,
                )
            if attempt + 1 < self.retry.attempts:
                delay = self.retry.delay(attempt)
                log.info("Label Studio %s %s: %s; retry %d in %.1f s", method, path, last, attempt + 1, delay)
                time.sleep(delay)
        raise ReviewUnavailable(
            f"Label Studio at {self.url} did not answer {method} {path} after {self.retry.attempts} tries ({last});"
            " is the server running? Nothing that failed was recorded: run the step again later"
        )

    def _raise_auth(self, resp: httpx.Response) -> None:
        detail = self._detail(resp)
        hint = (
            f"fix {ENV_TOKEN}: use the token of a Label Studio user (Account & Settings: a personal access token,"
            " or the legacy token)."
        )
        if "legacy token" in detail.lower() or not self._personal:
            hint += (
                " A legacy token works only if the organisation allows legacy tokens: a preset token"
                " (LABEL_STUDIO_USER_TOKEN) needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true (or"
                " --enable-legacy-api-token) on the server's first start, or enable legacy tokens in the"
                " organisation's settings."
            )
        raise ReviewAuthError(
            f"Label Studio at {self.url} refused the token (HTTP {resp.status_code}: {detail}); {hint}"
        )

    def _detail(self, resp: httpx.Response) -> str:
        try:
            body = resp.json()
            text = body.get("detail") or body.get("validation_errors") or body if isinstance(body, dict) else body
        except ValueError:
            text = resp.text
        return self._redact(str(text))[:500]

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a request and return the decoded JSON body (None for an empty body).

        Args:
            method: HTTP method.
            path: Path under the base URL, e.g. ``/api/projects``.
            params: Query parameters.
            json: JSON body.
            idempotent: Whether the request may be re-sent after a failure that happened after sending
                (default: True for GET, PUT, PATCH, DELETE; False for POST).
            timeout: Seconds, overriding the policy's per-request timeout.

        Raises:
            ReviewAuthError: 401/403.
            ReviewUnavailable: no answer within the retry budget, or an ambiguous non-idempotent failure.
            ReviewRequestError: another 4xx, with the server's message.
        """
        if idempotent is None:
            idempotent = method.upper() != "POST"
        resp = self._send(method, path, params=params, json=json, idempotent=idempotent, timeout=timeout)
        if resp.status_code == 401 and self._personal and self._access is not None:
            self._access = None  # the access token may have expired early: refresh once
            resp = self._send(method, path, params=params, json=json, idempotent=idempotent, timeout=timeout)
        if resp.status_code in (401, 403):
            if resp.status_code == 403 and "permission" in self._detail(resp).lower():
                raise ReviewAuthError(
                    f"Label Studio at {self.url}: the token's user may not {method} {path}"
                    f" ({self._detail(resp)}); use the token of a user with access to the project ({ENV_TOKEN})"
                )
            self._raise_auth(resp)
        if resp.status_code >= 400:
            raise ReviewRequestError(
                f"Label Studio at {self.url}: {method} {path} -> HTTP {resp.status_code}: {self._detail(resp)}",
                resp.status_code,
            )
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ReviewRequestError(
                f"Label Studio at {self.url}: {method} {path} returned a non-JSON body; is {self.url} a Label Studio"
                f" server? (set {ENV_URL})",
                resp.status_code,
            ) from None

    # ------------------------------------------------------------------ API

    def whoami(self) -> dict[str, Any]:
        """The token's user (``/api/current-user/whoami``); checks that the token is accepted."""
        return self.request("GET", "/api/current-user/whoami")

    def version(self) -> dict[str, Any]:
        """The server's version information."""
        return self.request("GET", "/api/version")

    def projects(self, title: str | None = None) -> list[dict[str, Any]]:
        """Projects visible to the token's user, optionally only those titled ``title``."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.request(
                "GET", "/api/projects", params={"page": page, "page_size": 100, "include": "id,title,model_version"}
            )
            items = body.get("results", []) if isinstance(body, dict) else body
            out += [p for p in items if title is None or p.get("title") == title]
            if not isinstance(body, dict) or not body.get("next"):
                return out
            page += 1

    def project(self, project_id: int) -> dict[str, Any]:
        """One project."""
        return self.request("GET", f"/api/projects/{int(project_id)}")

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict[str, Any]:
        """Create a project (title of at least 3 characters, docs/review.md section 8)."""
        return self.request("POST", "/api/projects", json={"title": title, "label_config": label_config, **fields})

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        """PATCH project fields, e.g. ``model_version`` (docs/review.md section 5.2)."""
        return self.request("PATCH", f"/api/projects/{int(project_id)}", json=fields)

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import tasks (with predictions) in one POST; returns the new task ids in order.

        Never retried once sent (the server does not deduplicate); a failure after sending raises
        ``ReviewUnavailable(ambiguous=True)`` and the caller must look at the project before importing
        again.
        """
        body = self.request(
            "POST",
            f"/api/projects/{int(project_id)}/import",
            params={"return_task_ids": "true"},
            json=tasks,
            idempotent=False,
            timeout=self.retry.import_timeout_s,
        )
        ids = body.get("task_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise ReviewRequestError(
                f"Label Studio at {self.url}: import into project {project_id} returned {len(ids or [])} task ids for"
                f" {len(tasks)} tasks (an Enterprise server imports asynchronously; pipstc needs the synchronous"
                " import of the Community edition)",
                200,
            )
        return [int(i) for i in ids]

    def iter_tasks(
        self,
        project_id: int,
        *,
        filters: list[dict[str, Any]] | None = None,
        include: str | None = None,
        fields: str = "task_only",
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Tasks of a project through the Data Manager list API, page by page (ordered by task id).

        Args:
            project_id: The project.
            filters: Data Manager filter items, joined with "and" (docs/review.md section 7.3).
            include: Comma-separated field names to return (the server drops the others, also inside
                nested annotations).
            fields: ``task_only`` or ``all`` (annotations, predictions and drafts).
            page_size: Tasks per request.
        """
        params: dict[str, Any] = {"project": int(project_id), "fields": fields, "page_size": page_size}
        if filters:
            params["query"] = json.dumps({"filters": {"conjunction": "and", "items": filters}})
        if include:
            params["include"] = include
        page = 1
        seen = 0
        while True:
            try:
                body = self.request("GET", "/api/tasks", params={**params, "page": page})
            except ReviewRequestError as e:
                if e.status_code == 404:  # the page after the last (docs/review.md section 7.3)
                    return
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            seen += len(tasks)
            total = body.get("total") if isinstance(body, dict) else None
            if not tasks or len(tasks) < page_size or (total is not None and seen >= total):
                return
            page += 1

    def create_prediction(
        self, task_id: int, result: list[dict[str, Any]], model_version: str, score: float | None = None
    ) -> dict[str, Any]:
        """Add a prediction to an existing task (``POST /api/predictions``, docs/review.md section 8).

        Never retried once sent: the server adds a second prediction for a second POST. A failure after
        sending raises ``ReviewUnavailable(ambiguous=True)``; look at :meth:`predictions` of the task for
        ``model_version`` before creating it again.

        Returns:
            The stored prediction (``id``, ``task``, ``model_version``, ``score``, ``result``, ...).
        """
        body: dict[str, Any] = {"task": int(task_id), "result": result, "model_version": model_version}
        if score is not None:
            body["score"] = float(score)
        out = self.request("POST", "/api/predictions", json=body, idempotent=False)
        if not isinstance(out, dict) or "id" not in out:
            raise ReviewRequestError(
                f"Label Studio at {self.url}: creating a prediction for task {task_id} returned no prediction id", 200
            )
        return out

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        """The predictions of one task (``GET /api/predictions?task=``), with their results."""
        body = self.request("GET", "/api/predictions", params={"task": int(task_id)})
        return body.get("results", []) if isinstance(body, dict) else list(body or [])

    def prediction(self, prediction_id: int) -> dict[str, Any]:
        """One prediction with its result."""
        return self.request("GET", f"/api/predictions/{int(prediction_id)}")

    def annotation(self, annotation_id: int) -> dict[str, Any]:
        """One annotation with its full result."""
        return self.request("GET", f"/api/annotations/{int(annotation_id)}")

    def users(self) -> list[dict[str, Any]]:
        """Users of the organisation (id, email, ...)."""
        body = self.request("GET", "/api/users")
        return body.get("results", []) if isinstance(body, dict) else body

    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        """Local Files import storages of a project."""
        return self.request("GET", "/api/storages/localfiles", params={"project": int(project_id)})

    def create_local_storage(self, project_id: int, path: str, title: str = "pipstc images") -> dict[str, Any]:
        """A Local Files import storage that grants the project access to images under ``path``
        (a subfolder of the server's document root; docs/review.md section 6). Not synced: tasks are imported
        with their own data."""
        return self.request(
            "POST",
            "/api/storages/localfiles",
            json={"project": int(project_id), "path": path, "use_blob_urls": True, "title": title},
        )

    def sdk(self) -> Any:
        """The official SDK client (``label_studio_sdk.LabelStudio``) on the same server and token."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.__token)


def connect(
    url: str | None = None,
    token: str | None = None,
    *,
    retry: RetryPolicy | None = None,
    check: bool = True,
    transport: httpx.BaseTransport | None = None,
) -> LabelStudioClient:
    """A client for the Label Studio at ``url`` (default ``$PIPSTC_LABEL_STUDIO_URL``) with ``token``
    (default ``$PIPSTC_LABEL_STUDIO_TOKEN``).

    Args:
        url: Base URL.
        token: Legacy token or personal access token.
        retry: Retry policy.
        check: Ask the server who the token belongs to now, so a wrong token fails here.
        transport: An httpx transport (tests, instrumentation).

    Raises:
        ReviewConfigError: no URL or token.
        ReviewAuthError: the server refuses the token (the message says which setting to fix).
        ReviewUnavailable: the server does not answer.
    """
    client = LabelStudioClient(
        url or os.environ.get(ENV_URL, ""), token or os.environ.get(ENV_TOKEN, ""), retry=retry, transport=transport
    )
    if check:
        try:
            client.whoami()
        except ReviewError:
            client.close()
            raise
    return client
