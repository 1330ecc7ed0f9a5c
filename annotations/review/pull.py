"""Pull reviewers' work from Label Studio into the store: corrections, skips, rejections, deletions.

Incremental by the task's ``updated_at``. Label Studio sets a task's ``updated_at`` (Django
``auto_now``) whenever one of its annotations is created, updated or deleted (``Annotation.save`` and
``delete`` call ``update_task``; label_studio/tasks/models.py in 1.23.2), including skips
(``was_cancelled``). So "every task whose ``updated_at`` is at or after the newest ``updated_at``
seen last time" holds every annotation created, changed or deleted one by one since the last pull.
The watermark is the server's own time stamp, so the two machines' clocks never meet (the Data
Manager reads the filter's naive time as UTC: ``TIME_ZONE = 'UTC'`` in
label_studio/core/settings/base.py). Two margins make it safe:

* the query starts :data:`OVERLAP_S` seconds before the watermark: a save stamps ``updated_at`` before
  its transaction commits, so a slow transaction can become visible after a faster, later-stamped
  one was already seen;
* everything a pull writes is idempotent (:mod:`~annotations.review.collect`), so tasks seen twice
  add nothing.

**Full sync** (``full=True``; ``pipstc review pull --full``, or every Nth run of the review-sync
flow: :func:`full_sync_due`): every task of the project is listed and compared with the store. An
annotation deleted through the API or the Data Manager's "delete annotations" action moves its task's
``updated_at`` (label_studio/data_manager/actions/basic.py) and an incremental pull sees it; but a
deleted task (the "delete tasks" action, ``DELETE /api/tasks/{id}``) is never listed again, nor is
anything removed without touching the task (a database clean-up): only the full comparison of task
and annotation ids finds those. A correction whose annotation is gone is retracted (the store stays
append-only: annotations.store.retractions).

``completed_at`` would miss skips (a cancelled annotation does not complete a task) and updates of an
annotation (it is the newest annotation's creation time); the export API has no time filter. The
task list asks the server for the annotation fields needed only (``include=...``), which also drops
the 68-point predictions from the response. Which pseudo-label a correction started from is
:mod:`~annotations.review.parents`; several annotations on one task follow the rule of
:mod:`~annotations.review.status`, and their disagreement is :mod:`~annotations.review.agreement`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from annotations.review.agreement import annotator_disagreement
from annotations.review.client import LabelStudioClient, ReviewConfigError
from annotations.review.collect import DM_DATETIME, Batch, Collector, canonical_time, correction_label_id, parse_time
from annotations.review.project import SETTING_IMPORT_TITLE, SETTING_PROJECT_ID, SETTING_URL, ensure_project
from annotations.review.status import SETTING_PULL
from annotations.store.retractions import retract_labels

__all__ = ["OVERLAP_S", "SETTING_PULL", "PullReport", "correction_label_id", "full_sync_due", "pull_reviews"]

log = logging.getLogger(__name__)

# Longer than any annotation-saving request plausibly stays uncommitted on Label Studio (they take
# ~0.25 s, docs/review.md section 9); re-reading two minutes of tasks costs one small request.
OVERLAP_S = 120.0
_INCLUDE = (
    "id,data,updated_at,annotations,result,was_cancelled,completed_by,created_at,lead_time,parent_prediction,"
    "total_predictions"
)


@dataclass
class PullReport:
    """What a pull brought in.

    Attributes:
        tasks_seen: Tasks the server reported as changed (with the overlap window; all on a full sync).
        completed: New corrected labels stored.
        updated: Of those, corrections that supersede an earlier version of the same annotation.
        skipped: Faces now skipped.
        rejected: Faces now rejected (reviewer chose "bad image" or "no face").
        retracted: Annotations found deleted in Label Studio (their corrections retracted).
        tasks_gone: Tasks of the store deleted from the project (full sync only).
        invalid: Annotations with a landmark placed twice, unknown labels or no landmark at all
            (reported as rejects, not stored).
        foreign: Tasks without a pipstc sample of this store (reported as rejects).
        multi_annotated: Tasks seen with two or more annotations with landmarks.
        disagreement_nme: Mean NME between the winning and the other annotations of those tasks.
        full: Whether this was a full sync.
        watermark: The newest task ``updated_at`` seen.
    """

    tasks_seen: int = 0
    completed: int = 0
    updated: int = 0
    skipped: int = 0
    rejected: int = 0
    retracted: int = 0
    tasks_gone: int = 0
    invalid: int = 0
    foreign: int = 0
    multi_annotated: int = 0
    disagreement_nme: float | None = None
    full: bool = False
    project_id: int | None = None
    watermark: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for logs and CLI output."""
        return asdict(self)


def full_sync_due(store: Any, every: int) -> bool:
    """Whether the next pull should be a full sync: every ``every``-th pull (0: never by count)."""
    if every <= 0:
        return False
    state = store.get_setting(SETTING_PULL) or {}
    return int(state.get("since_full", every)) + 1 >= every


def _project_id(store: Any, client: LabelStudioClient) -> int | None:
    pid = store.get_setting(SETTING_PROJECT_ID)
    if pid is None:
        # Only a store that wrote an import file (export_file.py) adopts a project by title: the one the file
        # told the team to create. Any other store has nothing to pull yet; adopting a project of the same
        # default title would pull another store's tasks (two stores in folders of the same name).
        title = store.get_setting(SETTING_IMPORT_TITLE)
        if title is None or not client.projects(title=title):
            return None
        return ensure_project(store, client, title=title).id
    url = store.get_setting(SETTING_URL)
    if url is not None and url != client.url:
        raise ReviewConfigError(
            f"the store's review project {pid} lives on {url}, not on {client.url}; set PIPSTC_LABEL_STUDIO_URL to"
            f" {url}, or push again to create a project on {client.url}"
        )
    return int(pid)


def pull_reviews(store: Any, client: LabelStudioClient, *, full: bool = False) -> PullReport:
    """Bring what reviewers did since the last pull into the store.

    Args:
        store: The label store whose project was pushed to.
        client: A connected client of the same server.
        full: Look at every task and compare task and annotation ids with the store (finds deleted
            annotations and tasks; still adds nothing twice).

    Returns:
        Counts of what was new. A store that never pushed returns an empty report.

    Raises:
        ReviewAuthError, ReviewUnavailable: from the server; nothing of an interrupted pull is lost
            (the watermark moves only after everything is written).
        ReviewConfigError: the store's project lives on another server.
    """
    report = PullReport(full=full)
    pid = _project_id(store, client)
    if pid is None:
        return report
    report.project_id = pid
    state = store.get_setting(SETTING_PULL) or {}
    same = state.get("project_id") == pid
    watermark = state.get("updated_at") if same and not full else None
    filters = []
    if watermark:
        since = parse_time(watermark) - timedelta(seconds=OVERLAP_S)
        filters.append({"filter": "filter:tasks:updated_at", "operator": "greater_or_equal", "type": "Datetime",
                        "value": since.strftime(DM_DATETIME)})  # fmt: skip
    tasks = list(client.iter_tasks(pid, filters=filters, include=_INCLUDE, fields="all", page_size=200))
    report.tasks_seen = len(tasks)
    newest = max((canonical_time(t["updated_at"]) for t in tasks if t.get("updated_at")), default=None)
    if watermark and (newest is None or newest < canonical_time(watermark)):
        newest = canonical_time(watermark)
    corrected = store.labels(source="corrected", retracted=True).frame
    known = set(corrected["label_id"].astype(str))
    collector = Collector(store, client, pid, known, annotated=any(t.get("annotations") for t in tasks))
    for task in tasks:
        collector.task(task)
    if full:
        report.tasks_gone = len(collector.tasks_gone({int(t["id"]) for t in tasks}))
    _write(store, collector.batch, report, corrected)
    report.invalid, report.foreign = collector.counts["invalid"], collector.counts["foreign"]
    report.retracted = collector.counts["retracted"]
    if collector.batch.multi:
        agree = annotator_disagreement(store, collector.batch.multi)
        report.multi_annotated = int(agree["task_id"].nunique())
        report.disagreement_nme = float(np.nanmean(agree["nme"])) if agree["nme"].notna().any() else None
    report.watermark = newest
    new_state = _next_state(state if same else {}, pid, newest, full)
    if new_state != state:
        store.set_setting(SETTING_PULL, new_state)
    return report


def _next_state(state: dict[str, Any], pid: int, newest: str | None, full: bool) -> dict[str, Any]:
    """The pull bookkeeping after this pull: watermark, pulls since the last full sync, its time."""
    return {
        "project_id": pid,
        "updated_at": newest,
        "since_full": 0 if full else int(state.get("since_full", 0)) + 1,
        "full_at": datetime.now(UTC).isoformat() if full else state.get("full_at"),
    }


def _write(store: Any, batch: Batch, report: PullReport, corrected: pd.DataFrame) -> None:
    """Labels, then retractions, then events, then rejects: a crash in between leaves the watermark
    unmoved, and the rerun writes only what is missing."""
    if batch.label_rows:
        rows = pd.DataFrame(batch.label_rows)
        earlier: dict[int, int] = defaultdict(int)
        for aid in corrected["ls_annotation_id"].dropna().astype(int):
            earlier[aid] += 1
        report.completed = len(rows)
        report.updated = int(sum(1 for aid in rows["ls_annotation_id"] if earlier[int(aid)]))
        rows["created_at"] = pd.to_datetime(rows["created_at"], utc=True)
        store.add_labels(
            rows,
            np.stack(batch.landmarks).astype(np.float32),
            landmark_confidence=None,
            moved=np.stack(batch.moved),
            visibility=np.stack(batch.visibility),
        )
    if batch.retract:
        retract_labels(store, batch.retract)
    if batch.events:
        # One write in the order things happened: the newest event of a sample is its state.
        events = pd.DataFrame(batch.events)
        events["annotated_at"] = pd.to_datetime(events["annotated_at"], utc=True)
        before = store.reviews(latest=False)
        store.add_reviews(events)
        after = store.reviews(latest=False)
        new = after.iloc[len(before) :]
        report.skipped = int((new["status"] == "skipped").sum())
        report.rejected = int((new["status"] == "rejected").sum())
    if batch.rejects:
        store.add_rejects(pd.DataFrame(batch.rejects))
