"""Entry points for the CLI and the flows: push or write an import file, pull if configured, status.

Each takes a store (or its URL) and returns plain data (a dict) for printing or a Prefect artifact.
Label Studio is reached when ``PIPSTC_LABEL_STUDIO_URL`` is set (token in
``PIPSTC_LABEL_STUDIO_TOKEN``); without it, pushing writes a Label Studio import file instead.

A server that cannot be reached when a push starts does not fail it: the faces are kept as pending
(:func:`~annotations.review.push.record_pending`) and the next push or sync sends them first. A
wrong URL or token still fails loudly (ReviewConfigError, ReviewAuthError).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from annotations.review.client import ENV_URL, RetryPolicy, ReviewUnavailable, configured, connect
from annotations.review.export_file import write_import_file
from annotations.review.pull import pull_reviews
from annotations.review.push import push_pending, push_reviews, record_pending
from annotations.review.status import review_status
from annotations.store.views import LabelView

__all__ = ["pull_if_configured", "push_or_export", "status_report"]


def _open(store: Any) -> Any:
    if isinstance(store, str | os.PathLike):
        from annotations.store import Store

        return Store.open(store)
    return store


def push_or_export(
    store: Any,
    sample_ids: Sequence[str],
    round: int,  # noqa: A002 - the pipeline's word
    labels: LabelView | Sequence[str] | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    title: str | None = None,
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Push the faces to Label Studio, or write an import file when no server is configured.

    Returns:
        The push report (``pushed``, ``already_in_review``, ``recovered``, ``failed``, ``pending``,
        ``refused``, ``refreshed``, ``not_refreshed``, ``project_id``, ``model_version``, ``error``),
        or the export report (``import_file``, ``tasks``, ``message``, ...).
    """
    store = _open(store)
    if not configured():
        return write_import_file(store, sample_ids, round, labels, out_dir=out_dir).as_dict()
    try:
        client = connect(retry=retry)
    except ReviewUnavailable as e:  # down before anything was sent: the next push or sync sends them
        return record_pending(store, sample_ids, round, labels, error=str(e), title=title).as_dict()
    with client:
        return push_reviews(store, client, sample_ids, round, labels, title=title).as_dict()


def pull_if_configured(
    store: Any, *, full: bool = False, send_pending: bool = True, retry: RetryPolicy | None = None
) -> dict[str, Any]:
    """Pull reviewers' work when a server is configured; otherwise say so.

    Args:
        store: The store or its URL.
        full: Compare every task of the project (finds deleted annotations and tasks; see
            :func:`~annotations.review.pull.pull_reviews`).
        send_pending: Also send the faces an earlier outage held back (``pending_sent`` in the report).
        retry: Retry policy.
    """
    store = _open(store)
    if not configured():
        return {"configured": False, "message": f"{ENV_URL} is not set: nothing to pull"}
    with connect(retry=retry) as client:
        # What waits goes out first: it also settles the project (by the title the faces were meant for).
        sent = push_pending(store, client) if send_pending else None
        out = {"configured": True, **pull_reviews(store, client, full=full).as_dict()}
        if sent is not None:
            out["pending_sent"] = sent.pushed + sent.recovered
            out["pending"] = sent.pending
            out["error"] = sent.error
        return out


def status_report(store: Any) -> dict[str, Any]:
    """Review counts from the store, plus the server's when one is configured and reachable."""
    store = _open(store)
    if not configured():
        return review_status(store)
    with connect() as client:
        return review_status(store, client)
