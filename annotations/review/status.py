"""Where the store's reviews stand: the state of each face, the rule that decides it, and counts.

The review events of the store are a state log (``Store.add_reviews``): the newest event of a face
is its state. :func:`review_states` hands it out for callers that decide what a face may do next
(leave the pool when rejected, wait some rounds when skipped).

**Several annotations on one task** (a project with overlap, or a second reviewer opening a finished
task): the task's state is decided by :func:`task_state`, the rule every pull applies:

1. the newest non-cancelled annotation wins: among annotations with landmarks ("completed") or a
   "bad image"/"no face" choice ("rejected"), the one Label Studio saved last (its ``updated_at``,
   then the higher id);
2. only when there is none does a skip count ("skipped", the newest skip);
3. with no annotation left at all the task is open again ("pushed").

Every non-cancelled annotation with landmarks is stored as a correction; the current-label view
picks the newest one, so the label trained on is the winner's whenever the winner has landmarks.
How far the others lie from it is :func:`annotations.review.agreement.annotator_disagreement`.
A deleted annotation no longer takes part: its corrections are retracted and the task's state is
decided again from what remains (:mod:`annotations.review.pull`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from annotations.review.client import LabelStudioClient
from annotations.review.project import SETTING_PROJECT_ID, SETTING_URL
from annotations.review.push import SETTING_PENDING
from annotations.store.schema import REVIEW_STATUSES

__all__ = ["STATE_COLUMNS", "Outcome", "review_states", "review_status", "status", "task_state"]

STATE_COLUMNS = ("sample_id", "status", "round", "project_id", "task_id", "annotation_id", "annotated_at",
                 "updated_at", "note")  # fmt: skip
SETTING_PULL = "labelstudio.pull"  # as annotations.review.pull writes it


@dataclass(frozen=True)
class Outcome:
    """What one annotation of a task says.

    Attributes:
        status: ``completed`` (landmarks), ``rejected`` (bad image / no face) or ``skipped``.
        annotation_id: The annotation.
        annotated_at: Its ``updated_at`` on the Label Studio server.
        note: For the review event.
    """

    status: str
    annotation_id: int
    annotated_at: datetime
    note: str = ""


def task_state(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The outcome that decides a task's state (module docstring); None when the task is open."""
    decided = [o for o in outcomes if o.status in ("completed", "rejected")]
    pool = decided or [o for o in outcomes if o.status == "skipped"]
    if not pool:
        return None
    return max(pool, key=lambda o: (o.annotated_at, o.annotation_id))


def review_states(store: Any) -> pd.DataFrame:
    """The review state of every face that was ever sent to review: one row per sample.

    Returns:
        :data:`STATE_COLUMNS`: ``status`` is ``pushed`` (with reviewers), ``completed``, ``skipped``,
        ``rejected`` or ``retracted`` (its task was deleted in Label Studio); ``round`` the round it was
        pushed in; ``annotation_id`` the deciding annotation; ``annotated_at`` the server's time of it;
        ``updated_at`` when pipstc recorded it.
    """
    latest = store.reviews(latest=True)
    if latest.empty:
        return pd.DataFrame(columns=list(STATE_COLUMNS))
    for col in STATE_COLUMNS:
        if col not in latest:
            latest[col] = None
    return latest[list(STATE_COLUMNS)].reset_index(drop=True)


def review_status(store: Any, client: LabelStudioClient | None = None) -> dict[str, Any]:
    """Counts of faces by the state of their review.

    Args:
        store: The label store.
        client: A connected client; adds the server's own counts (``server_*``) for the project.

    Returns:
        ``pushed`` (with reviewers now), ``completed``, ``skipped``, ``rejected``, ``retracted`` (the
        state of each face), ``pending`` (held back by an outage; the next push or sync sends them),
        ``project_id``, ``url``, ``last_pull`` (the newest task time seen by a pull),
        ``last_full_pull`` and, with a client, ``server_tasks``, ``server_annotated`` (tasks with an
        annotation), ``server_skipped``.
    """
    states = review_states(store)
    counts = states["status"].value_counts() if not states.empty else {}
    out: dict[str, Any] = {s: int(counts.get(s, 0)) for s in REVIEW_STATUSES}
    out["pending"] = len(store.get_setting(SETTING_PENDING) or [])
    out["project_id"] = store.get_setting(SETTING_PROJECT_ID)
    out["url"] = store.get_setting(SETTING_URL)
    pull = store.get_setting(SETTING_PULL) or {}
    out["last_pull"] = pull.get("updated_at")
    out["last_full_pull"] = pull.get("full_at")
    if client is not None and out["project_id"] is not None and out["url"] in (None, client.url):
        project = client.project(int(out["project_id"]))
        out["server_tasks"] = int(project.get("task_number") or 0)
        out["server_annotated"] = int(project.get("num_tasks_with_annotations") or 0)
        out["server_skipped"] = int(project.get("skipped_annotations_number") or 0)
    return out


status = review_status  # the name the issue uses
