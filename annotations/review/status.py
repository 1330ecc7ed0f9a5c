"""Where the store's reviews stand: counts from the store, and from the server when one is given."""

from __future__ import annotations

from typing import Any

from annotations.review.client import LabelStudioClient
from annotations.review.project import SETTING_PROJECT_ID, SETTING_URL
from annotations.review.pull import SETTING_PULL
from annotations.review.push import SETTING_PENDING
from annotations.store.schema import REVIEW_STATUSES

__all__ = ["review_status", "status"]


def review_status(store: Any, client: LabelStudioClient | None = None) -> dict[str, Any]:
    """Counts of faces by the state of their review.

    Args:
        store: The label store.
        client: A connected client; adds the server's own counts (``server_*``) for the project.

    Returns:
        ``pushed`` (with reviewers now), ``completed``, ``skipped``, ``rejected`` (latest event per
        face), ``pending`` (held back by an outage; the next push sends them), ``project_id``, ``url``,
        ``last_pull`` (the newest task time seen by a pull) and, with a client, ``server_tasks``,
        ``server_annotated`` (tasks with an annotation), ``server_skipped``.
    """
    latest = store.reviews(latest=True)
    counts = latest["status"].value_counts() if not latest.empty else {}
    out: dict[str, Any] = {s: int(counts.get(s, 0)) for s in REVIEW_STATUSES}
    out["pending"] = len(store.get_setting(SETTING_PENDING) or [])
    out["project_id"] = store.get_setting(SETTING_PROJECT_ID)
    out["url"] = store.get_setting(SETTING_URL)
    out["last_pull"] = (store.get_setting(SETTING_PULL) or {}).get("updated_at")
    if client is not None and out["project_id"] is not None and out["url"] in (None, client.url):
        project = client.project(int(out["project_id"]))
        out["server_tasks"] = int(project.get("task_number") or 0)
        out["server_annotated"] = int(project.get("num_tasks_with_annotations") or 0)
        out["server_skipped"] = int(project.get("skipped_annotations_number") or 0)
    return out


status = review_status  # the name the issue uses
