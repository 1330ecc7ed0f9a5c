"""The Label Studio client: the official SDK on the data path, with pipstc's rules around every call.

Every request goes through ``label_studio_sdk.LabelStudio`` (projects, local storage, import, tasks,
predictions, annotations, users). This module adds what a pipeline needs around it:

* **One retry policy, ours.** The SDK's own retries are switched off on every request
  (``request_options={"max_retries": 0}``): its loop re-sends any method after a connection dropped
  mid-request and on any 5xx answer, which for an import can duplicate every task (the server has no
  dedupe, docs/review.md section 5.3). :class:`RetryPolicy` retries safe calls (reads, updates of a field)
  with bounded, jittered backoff; a non-idempotent POST (import, prediction) is retried only when it
  certainly did not reach the server (connection refused, or a 429/503 refusal) and otherwise raises
  ``ReviewUnavailable(ambiguous=True)`` so the caller looks before sending again.
* **Errors that say what to fix.** SDK errors become :class:`ReviewAuthError` (which setting to fix),
  :class:`ReviewRequestError` (the server's message) or :class:`ReviewUnavailable` (no answer).
* **The token is never shown.** Tokens (docs/review.md section 2): the SDK sends a legacy token as
  ``Authorization: Token <key>`` and exchanges a personal access token (a JWT refresh token) for a
  short-lived ``Bearer`` access token. The token is read from ``PIPSTC_LABEL_STUDIO_TOKEN`` (or passed
  in), kept in a private attribute, never logged, never in ``repr``, redacted from every message.
* **Plain data out.** SDK models are dumped to the JSON dicts the server sent
  (``model_dump(mode="json", exclude_unset=True)``), so the rest of pipstc reads Label Studio's JSON
  shapes (docs/review.md sections 4, 5 and 7) and never depends on the SDK's model classes.

The SDK import costs ~1 s (pydantic models of the whole API), so it happens on the first request,
not when this module is imported. Pagination is driven page by page here (not by the SDK's pager) so
that each page is one retried call and a failure on page 7 does not restart at page 1; the page
after the last answers 404, which ends the listing (docs/review.md section 7.3).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

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
    "configured",
    "connect",
]

log = logging.getLogger(__name__)

ENV_URL = "PIPSTC_LABEL_STUDIO_URL"
ENV_TOKEN = "PIPSTC_LABEL_STUDIO_TOKEN"
# The server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, as seen from this machine (local stores only).
ENV_DOCUMENT_ROOT = "PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT"

T = TypeVar("T")


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


_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
# Answers that refuse a request before any work starts: a POST answered so was not applied.
_REFUSED_STATUS = {429, 503}
# Failures where the request certainly did not reach the server: safe to retry any method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


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


def plain(obj: Any) -> Any:
    """An SDK model (or a list of them) as the JSON the server sent: dicts, lists, ISO time strings."""
    if isinstance(obj, list):
        return [plain(o) for o in obj]
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_unset=True)
    return obj


class LabelStudioClient:
    """Client of one Label Studio server, through the official SDK.

    Attributes:
        url: Base URL without a trailing slash.
        retry: The retry policy.
        http_seconds: Wall time spent inside SDK calls so far (the server, the network and the SDK's
            (de)serialisation); benchmarks compare it with total time.
        requests: Number of HTTP requests sent (retries and token refreshes included).
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
        # One connection pool for the SDK and for image checks; the hook counts every request sent.
        self._http = httpx.Client(
            base_url=self.url, timeout=self.retry.timeout_s, transport=transport, event_hooks={"request": [self._count]}
        )
        self._ls: Any = None
        self.http_seconds = 0.0
        self.requests = 0

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r})"

    # ------------------------------------------------------------------ plumbing

    def _count(self, request: httpx.Request) -> None:
        self.requests += 1

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sdk(self) -> Any:
        """The official SDK client (``label_studio_sdk.LabelStudio``) on this server, token and pool.

        Its default retries are off (pipstc retries, see the module docstring); calls made on it
        directly get no retries and raise the SDK's own errors.
        """
        if self._ls is None:
            from label_studio_sdk import LabelStudio  # ~1 s: only when Label Studio is used

            # base_url and api_key always explicit: the SDK's defaults are localhost:8000 and an
            # environment variable read at its import time (docs/review.md section 8).
            self._ls = LabelStudio(
                base_url=self.url,
                api_key=self.__token,
                httpx_client=self._http,
                max_retries=0,
                timeout=self.retry.timeout_s,
            )
        return self._ls

    def _redact(self, text: str) -> str:
        out = text.replace(self.__token, "***")
        ls = self._ls
        access = getattr(getattr(getattr(ls, "_client_wrapper", None), "_tokens_client", None), "_access_token", None)
        return out.replace(access, "***") if access else out

    def _call(self, what: str, fn: Callable[[dict[str, Any]], T], *, idempotent: bool = True,
              timeout: float | None = None) -> T:  # fmt: skip
        """``fn(request_options)`` with the retry policy; ``what`` ("GET /api/projects") names it in errors.

        Raises:
            ReviewAuthError: 401/403.
            ReviewUnavailable: no answer within the retry budget, or an ambiguous non-idempotent failure.
            ReviewRequestError: another 4xx, or a body that is not Label Studio's.
        """
        from label_studio_sdk.core.api_error import ApiError

        options = {"max_retries": 0, "timeout": timeout or self.retry.timeout_s}
        last = ""
        for attempt in range(self.retry.attempts):
            t0 = time.perf_counter()
            try:
                return fn(options)  # the first call also builds the SDK client, which may refuse the token
            except ApiError as e:
                status = int(e.status_code or 0)
                if status not in _RETRY_STATUS:
                    raise self._translate(what, status, e.body) from None
                last, maybe_applied = f"HTTP {status}", status not in _REFUSED_STATUS
            except _NOT_SENT as e:
                last, maybe_applied = f"{type(e).__name__}: {self._redact(str(e))}", False
            except httpx.TransportError as e:  # read timeout, connection reset mid-request...
                last, maybe_applied = f"{type(e).__name__}: {self._redact(str(e))}", True
            finally:
                self.http_seconds += time.perf_counter() - t0
            if maybe_applied and not idempotent:
                raise ReviewUnavailable(
                    f"Label Studio at {self.url}: {what} failed after sending ({last}); it may or may not have"
                    " been applied",
                    ambiguous=True,
                )
            if attempt + 1 < self.retry.attempts:
                delay = self.retry.delay(attempt)
                log.info("Label Studio %s: %s; retry %d in %.1f s", what, last, attempt + 1, delay)
                time.sleep(delay)
        raise ReviewUnavailable(
            f"Label Studio at {self.url} did not answer {what} after {self.retry.attempts} tries ({last});"
            " is the server running? Nothing that failed was recorded: run the step again later"
        )

    def _detail(self, body: Any) -> str:
        text = body
        if isinstance(body, dict):
            text = body.get("detail") or body.get("validation_errors") or body
        return self._redact(str(text))[:500]

    def _translate(self, what: str, status: int, body: Any) -> ReviewError:
        """The pipstc error of an SDK ApiError (status 0 or < 400: a body the SDK could not read)."""
        detail = self._detail(body)
        if status in (401, 403):
            if status == 403 and "permission" in detail.lower():
                return ReviewAuthError(
                    f"Label Studio at {self.url}: the token's user may not {what} ({detail}); use the token of a"
                    f" user with access to the project ({ENV_TOKEN})"
                )
            return self._auth_error(status, detail)
        if status < 400:
            return ReviewRequestError(
                f"Label Studio at {self.url}: {what} returned a body that is not Label Studio's ({detail[:120]});"
                f" is {self.url} a Label Studio server? (set {ENV_URL})",
                status,
            )
        return ReviewRequestError(f"Label Studio at {self.url}: {what} -> HTTP {status}: {detail}", status)

    def _auth_error(self, status: int, detail: str) -> ReviewAuthError:
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
        return ReviewAuthError(f"Label Studio at {self.url} refused the token (HTTP {status}: {detail}); {hint}")

    # ------------------------------------------------------------------ API

    def _json(self, what: str, fn: Callable[[dict[str, Any]], Any], **kw: Any) -> Any:
        """:meth:`_call`, with the SDK's answer as plain JSON data."""
        return plain(self._call(what, fn, **kw))

    def whoami(self) -> dict[str, Any]:
        """The token's user; checks that the token is accepted."""
        return self._json("GET /api/current-user/whoami", lambda o: self.sdk().users.whoami(request_options=o))

    def version(self) -> dict[str, Any]:
        """The server's version information."""
        return self._json("GET /api/version", lambda o: self.sdk().versions.get(request_options=o))

    def projects(self, title: str | None = None) -> list[dict[str, Any]]:
        """Projects visible to the token's user, optionally only those titled ``title``."""

        def fetch(page: int, o: dict[str, Any]) -> Any:
            fields = "id,title,model_version"
            return self.sdk().projects.list(title=title, include=fields, page=page, page_size=100, request_options=o)

        out: list[dict[str, Any]] = []
        for page in self._pages("GET /api/projects", fetch):
            out += [p for p in page if title is None or p.get("title") == title]  # the filter is not in every edition
        return out

    def project(self, project_id: int) -> dict[str, Any]:
        """One project."""
        pid = int(project_id)
        return self._json(f"GET /api/projects/{pid}", lambda o: self.sdk().projects.get(id=pid, request_options=o))

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict[str, Any]:
        """Create a project (title of at least 3 characters, docs/review.md section 8).

        Not re-sent after a possible delivery (a second POST makes a second project); ``ensure_project``
        looks projects up by title first, so running it again after an ambiguous failure finds it.
        """

        def create(o: dict[str, Any]) -> Any:
            return self.sdk().projects.create(title=title, label_config=label_config, request_options=o, **fields)

        return self._json("POST /api/projects", create, idempotent=False)

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        """Update project fields, e.g. ``model_version`` (docs/review.md section 5.2); safe to repeat."""
        pid = int(project_id)
        return self._json(
            f"PATCH /api/projects/{pid}", lambda o: self.sdk().projects.update(id=pid, request_options=o, **fields)
        )

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import tasks (with predictions) in one POST; returns the new task ids in order.

        Never re-sent once it may have reached the server (the server does not deduplicate); such a
        failure raises ``ReviewUnavailable(ambiguous=True)`` and the caller must look at the project
        before importing again.
        """
        pid = int(project_id)

        def send(o: dict[str, Any]) -> Any:
            return self.sdk().projects.import_tasks(id=pid, request=tasks, return_task_ids=True, request_options=o)

        body = self._json(f"POST /api/projects/{pid}/import", send, idempotent=False,
                          timeout=self.retry.import_timeout_s)  # fmt: skip
        ids = body.get("task_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise ReviewRequestError(
                f"Label Studio at {self.url}: import into project {pid} returned {len(ids or [])} task ids for"
                f" {len(tasks)} tasks (an Enterprise server imports asynchronously; pipstc needs the synchronous"
                " import of the Community edition)",
                200,
            )
        return [int(i) for i in ids]

    def _pages(self, what: str, fetch: Callable[[int, dict[str, Any]], Any]) -> Iterator[list[dict[str, Any]]]:
        """Pages of a paginated list, each fetched as one retried call; ends at the 404 after the last."""
        page, seen = 1, 0
        while True:
            try:
                pager = self._call(f"{what} page {page}", lambda o: fetch(page, o))  # noqa: B023 - called at once
            except ReviewRequestError as e:
                if e.status_code == 404:  # the page after the last (docs/review.md section 7.3)
                    return
                raise
            items = plain(list(pager.items or []))
            yield items
            seen += len(items)
            # tasks answer with "total"; projects with "count" and "next" (None on the last page)
            resp = pager.response
            total = getattr(resp, "total", None) or getattr(resp, "count", None)
            last = "next" in (getattr(resp, "model_fields_set", None) or ()) and not resp.next
            if not items or last or (total is not None and seen >= total):
                return
            page += 1

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
        pid = int(project_id)
        query = json.dumps({"filters": {"conjunction": "and", "items": filters}}) if filters else None

        def fetch(page: int, o: dict[str, Any]) -> Any:
            return self.sdk().tasks.list(project=pid, query=query, include=include, fields=fields, page=page,
                                         page_size=page_size, request_options=o)  # fmt: skip

        for page in self._pages(f"GET /api/tasks?project={pid}", fetch):
            yield from page
            if len(page) < page_size:
                return

    def create_prediction(
        self, task_id: int, result: list[dict[str, Any]], model_version: str, score: float | None = None
    ) -> dict[str, Any]:
        """Add a prediction to an existing task.

        Never re-sent after a possible delivery: the server adds a second prediction for a second
        POST. Such a failure raises ``ReviewUnavailable(ambiguous=True)``; look at :meth:`predictions`
        of the task for ``model_version`` before creating it again.

        Returns:
            The stored prediction (``id``, ``task``, ``model_version``, ``score``, ``result``, ...).
        """
        extra = {} if score is None else {"score": float(score)}

        def create(o: dict[str, Any]) -> Any:
            return self.sdk().predictions.create(task=int(task_id), result=result, model_version=model_version,
                                                 request_options=o, **extra)  # fmt: skip

        out = self._json("POST /api/predictions", create, idempotent=False)
        if not isinstance(out, dict) or "id" not in out:
            raise ReviewRequestError(
                f"Label Studio at {self.url}: creating a prediction for task {task_id} returned no prediction id", 200
            )
        return out

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        """The predictions of one task, with their results."""
        tid = int(task_id)
        return self._json(f"GET /api/predictions?task={tid}", lambda o: self.sdk().predictions.list(
            task=tid, request_options=o))  # fmt: skip

    def prediction(self, prediction_id: int) -> dict[str, Any]:
        """One prediction with its result."""
        i = int(prediction_id)
        return self._json(f"GET /api/predictions/{i}", lambda o: self.sdk().predictions.get(id=i, request_options=o))

    def annotation(self, annotation_id: int) -> dict[str, Any]:
        """One annotation with its full result."""
        i = int(annotation_id)
        return self._json(f"GET /api/annotations/{i}", lambda o: self.sdk().annotations.get(id=i, request_options=o))

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        """The annotations of one task with their results (skips are not listed: the server leaves cancelled
        annotations out of this list; the task list has them)."""
        tid = int(task_id)
        return self._json(f"GET /api/tasks/{tid}/annotations", lambda o: self.sdk().annotations.list(
            id=tid, request_options=o))  # fmt: skip

    def users(self) -> list[dict[str, Any]]:
        """Users of the organisation (id, email, ...)."""
        return self._json("GET /api/users", lambda o: self.sdk().users.list(request_options=o))

    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        """Local Files import storages of a project."""
        pid = int(project_id)
        return self._json(f"GET /api/storages/localfiles?project={pid}", lambda o: self.sdk().import_storage.local.list(
            project=pid, request_options=o))  # fmt: skip

    def create_local_storage(self, project_id: int, path: str, title: str = "pipstc images") -> dict[str, Any]:
        """A Local Files import storage that grants the project access to images under ``path``
        (a subfolder of the server's document root; docs/review.md section 6). Not synced: tasks are imported
        with their own data. Not re-sent after a possible delivery (``ensure_image_access`` lists the
        storages first, so a rerun finds one that was made)."""

        def create(o: dict[str, Any]) -> Any:
            return self.sdk().import_storage.local.create(project=int(project_id), path=path, use_blob_urls=True,
                                                          title=title, request_options=o)  # fmt: skip

        return self._json("POST /api/storages/localfiles", create, idempotent=False)


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
