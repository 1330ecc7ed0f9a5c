"""Push faces to Label Studio as review tasks: idempotent, in chunks, safe against crashes and outages.

Idempotency has two halves, because the store and the server are two databases with no common
transaction:

1. The store's review events: a face with any review event in this project (pushed, completed,
   skipped, rejected) is not pushed again, except a face skipped in an earlier round, which may be
   selected again (annotations/store/exclusions.py) and then gets a new task of the new round.
2. The server itself: right before each chunk is imported, the project is asked which of the chunk's
   sample ids it already holds for the same round (Data Manager filter ``data.sample_id in_list``,
   then ``data.round``). Tasks found there but unknown to the store are what a crash between import
   and bookkeeping leaves behind; they are recorded as pushed ("recovered") instead of imported twice.
   The server has no dedupe of its own (docs/review.md section 5.3).

Locks: a whole push runs under the store's *review lock* (:meth:`Store.review_lock`), so two pushers
cannot both find a face missing and both import it. The store's writer lock is taken only around
each store write (review events, settings, rejects), never across an HTTP call: a review sync
(:mod:`~annotations.review.pull`) running meanwhile writes its corrections without waiting for the
server to answer the push.

Outages: look-ups are retried with backoff (:class:`~annotations.review.client.RetryPolicy`); an
import is never re-sent after it may have reached the server. When the server stays away the push
stops; faces not pushed are kept in the store setting ``labelstudio.pending_push`` and pushed first by
the next push or sync (:func:`push_pending`), after the same look-up, so nothing is lost and nothing
is duplicated. A server that is down before the push even starts (the client cannot connect) is the
same case: :func:`record_pending` keeps the selected faces for the next run.

Model versions: each task's prediction carries its round's model version, and the project shows the
newest round pushed (the editor pre-labels only with predictions of the project's ``model_version``,
docs/review.md section 5.2). So that tasks of earlier rounds still open do not go blank when the
project switches, every push that finds the project showing round k adds round k's pseudo-label as
a second prediction to those tasks (:mod:`~annotations.review.refresh`; counted in
``PushReport.refreshed`` / ``not_refreshed``). No review event is written for it: the task's
``pushed`` event keeps the label id of the pseudo-label first pushed, and a pull attributes a
correction to the prediction the reviewer started from (:mod:`~annotations.review.pull`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from annotations.review.client import LabelStudioClient, ReviewUnavailable
from annotations.review.config import labeling_config
from annotations.review.project import ImageAccess, ReviewProject, ensure_image_access, ensure_project
from annotations.review.refresh import open_older_reviews, refresh_open_tasks
from annotations.review.tasks import ReviewItem, Selection, build_task, collect_items, validate_tasks
from annotations.store.errors import StoreLocked
from annotations.store.views import LabelView

__all__ = ["SETTING_PENDING", "PushReport", "existing_tasks", "push_pending", "push_reviews", "record_pending"]

log = logging.getLogger(__name__)

SETTING_PENDING = "labelstudio.pending_push"
SETTING_SHOWN_VERSION = "labelstudio.model_version"
# How long a sync waits for a running push before leaving the pending faces to it.
PENDING_LOCK_WAIT_S = 2.0
# Sample ids per look-up request: the filter travels in the query string, and 100 ids of 24 hex
# characters (~3.5 kB encoded) stay under the 8 kB header limit of common reverse proxies.
LOOKUP_BATCH = 100


@dataclass
class PushReport:
    """What a push did.

    Attributes:
        pushed: Faces imported as new tasks now.
        already_in_review: Faces skipped because the store records a review of them in this project.
        recovered: Faces found in the project but missing from the store (an earlier push crashed
            after importing); recorded now, not imported again.
        failed: Faces whose prediction failed validation (recorded as rejects; not retried).
        pending: Faces not pushed because Label Studio was unavailable; the next push sends them.
        refused: Sample id -> why it may not go to review (holdout, human-labeled, no label, ...).
        refreshed: Open tasks of earlier rounds that got the shown round's prediction now, so the
            editor keeps pre-labelling them after the project's model version changed.
        not_refreshed: Open tasks of earlier rounds that still lack it (no pseudo-label of the shown
            round, validation failed, or an outage: the next push tries again).
        project_id: The Label Studio project.
        model_version: The model version the project now shows.
        error: The outage that stopped the push, if any.
    """

    pushed: int = 0
    already_in_review: int = 0
    recovered: int = 0
    failed: int = 0
    pending: int = 0
    refreshed: int = 0
    not_refreshed: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    project_id: int | None = None
    model_version: str | None = None
    task_ids: list[int] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for logs and CLI output (task ids left out)."""
        d = asdict(self)
        d.pop("task_ids")
        d["refused"] = len(self.refused)
        return d


def existing_tasks(
    client: LabelStudioClient, project_id: int, sample_ids: Sequence[str], rounds: Mapping[str, int] | None = None
) -> dict[str, dict[str, Any]]:
    """Tasks of the project whose ``data.sample_id`` is one of ``sample_ids``: sample id -> task.

    With ``rounds`` (sample id -> round), only a task of that round counts: a face skipped in an
    earlier round and selected again has its old task there, which is not the one being pushed.
    """
    found: dict[str, dict[str, Any]] = {}
    ids = list(dict.fromkeys(sample_ids))
    for i in range(0, len(ids), LOOKUP_BATCH):
        batch = ids[i : i + LOOKUP_BATCH]
        flt = {"filter": "filter:tasks:data.sample_id", "operator": "in_list", "type": "String", "value": batch}
        for task in client.iter_tasks(project_id, filters=[flt], include="id,data", page_size=LOOKUP_BATCH):
            data = task.get("data") or {}
            sid = data.get("sample_id")
            if rounds is not None and sid is not None and str(data.get("round")) != str(rounds.get(str(sid))):
                continue
            if sid is not None and str(sid) not in found:
                found[str(sid)] = task
    return found


def _review_rows(items: Sequence[ReviewItem], task_ids: Sequence[int], project_id: int, note: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [it.sample_id for it in items],
            "round": [it.round for it in items],
            "status": "pushed",
            "project_id": project_id,
            "task_id": [int(t) for t in task_ids],
            "label_id": [it.label_id for it in items],
            "note": note,
        }
    )


def _pending_items(store: Any, pending: list[dict[str, Any]], access: ImageAccess, skip: set[str]) -> Selection:
    """Resolve the pending entries of an earlier push (sample id, round, label id) to items again."""
    out = Selection()
    by_round: dict[int, list[dict[str, Any]]] = {}
    for p in pending:
        if p.get("sample_id") not in skip:
            by_round.setdefault(int(p["round"]), []).append(p)
    for rnd, entries in sorted(by_round.items()):
        sel = collect_items(store, [e["sample_id"] for e in entries], rnd, [e["label_id"] for e in entries], access)
        out.items += sel.items
        out.refused.update(sel.refused)
    return out


def _already_reviewed(store: Any, project_id: int, items: Sequence[ReviewItem]) -> set[str]:
    """Faces of ``items`` with a review event in this project, except those whose latest event there is a
    skip in an earlier round than the item's (selected again: they get a new task)."""
    reviews = store.reviews(latest=False)
    if reviews.empty:
        return set()
    mine = reviews[reviews["project_id"].isna() | (reviews["project_id"] == project_id)]
    latest = mine.sort_values("updated_at", kind="stable").drop_duplicates("sample_id", keep="last")
    latest = latest.set_index("sample_id")
    out = set()
    for it in items:
        if it.sample_id not in latest.index:
            continue
        event = latest.loc[it.sample_id]
        if not (event["status"] == "skipped" and int(event["round"]) < it.round):
            out.add(it.sample_id)
    return out


def _reject_failed(store: Any, project: ReviewProject, failed: list[tuple[ReviewItem, list[str]]]) -> None:
    if not failed:
        return
    store.add_rejects(
        pd.DataFrame(
            {
                "stage": "review",
                "source": f"label studio project {project.id}",
                "location": [f"label {it.label_id}" for it, _ in failed],
                "sample_id": [it.sample_id for it, _ in failed],
                "round": [it.round for it, _ in failed],
                "reason": ["prediction failed Label Studio validation: " + "; ".join(err)[:500] for _, err in failed],
            }
        )
    )


def push_reviews(
    store: Any,
    client: LabelStudioClient,
    sample_ids: Sequence[str],
    round: int,  # noqa: A002 - the pipeline's word
    labels: LabelView | Sequence[str] | None = None,
    *,
    chunk_size: int = 200,
    title: str | None = None,
    access: ImageAccess | None = None,
) -> PushReport:
    """Send faces to Label Studio with their pseudo-labels as predictions.

    Args:
        store: The label store (its scheme gives the labeling config).
        client: A connected client.
        sample_ids: Faces to send, e.g. from :func:`annotations.review.selection.select_for_review`.
        round: The round whose labels are shown.
        labels: The labels to show: a LabelView, label ids, or None for the round's pseudo-labels.
        chunk_size: Tasks per import request (200 68-point tasks are ~3.5 MB of JSON, ~2 s of server time).
        title: Project title when a project must be found or created (default: from the store's folder).
        access: Image access (default: ``$PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT`` for local images).

    Returns:
        The counts; ``pending`` > 0 means Label Studio went away and the next push completes the job.

    Raises:
        ReviewAuthError: the token is refused.
        ReviewConfigError: local images without a document root, or a project that does not fit.

    An outage never raises: what was not sent is pending (``report.pending``, ``report.error``).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    access = access or ImageAccess.from_env()
    with store.review_lock():
        return _push(store, client, sample_ids, int(round), labels, chunk_size, title, access)


def _push(
    store: Any,
    client: LabelStudioClient,
    sample_ids: Sequence[str],
    round_: int,
    labels: LabelView | Sequence[str] | None,
    chunk_size: int,
    title: str | None,
    access: ImageAccess,
) -> PushReport:
    """:func:`push_reviews` under the review lock."""
    report = PushReport()
    selection = collect_items(store, sample_ids, round_, labels, access)
    pending_before = list(store.get_setting(SETTING_PENDING) or [])
    previous = _pending_items(store, pending_before, access, skip={it.sample_id for it in selection.items})
    report.refused = {**previous.refused, **selection.refused}
    items = previous.items + selection.items  # the faces an outage held back go first
    done: set[str] = set()
    ready: list[tuple[ReviewItem, dict[str, Any]]] = []
    project: ReviewProject | None = None
    try:
        project = ensure_project(store, client, title=title)
        report.project_id = project.id
        reviewed = _already_reviewed(store, project.id, items)
        todo = [it for it in items if it.sample_id not in reviewed]
        report.already_in_review = len(items) - len(todo)
        ready = _validated(store, project, todo, report)
        ensure_image_access(client, project.id, {it.storage_dir for it, _ in ready if it.storage_dir is not None})
        for start in range(0, len(ready), chunk_size):
            _push_chunk(store, client, project.id, ready[start : start + chunk_size], report, done)
            _set_pending(store, [it for it, _ in ready[start + chunk_size :]], title)
    except ReviewUnavailable as e:
        report.error = str(e)
        unsent = [it for it in (items if not ready else [it for it, _ in ready]) if it.sample_id not in done]
        report.pending = len(unsent)
        _set_pending(store, unsent, title)
        log.warning("Label Studio unavailable: %d faces pending for the next push (%s)", len(unsent), e)
    else:
        if not ready:
            _set_pending(store, [], title)
    if project is not None:
        _update_model_version(store, client, project.id, [it for it, _ in ready if it.sample_id in done], report)
        _refresh(store, client, project, round_, labels, report)
    return report


def _push_chunk(
    store: Any,
    client: LabelStudioClient,
    project_id: int,
    chunk: list[tuple[ReviewItem, dict[str, Any]]],
    report: PushReport,
    done: set[str],
) -> None:
    """Import one chunk of tasks, after recovering those a crashed push already delivered.

    Runs under the review lock (the caller's); each store write takes the writer lock for itself.
    """
    rounds = {it.sample_id: it.round for it, _ in chunk}
    found = existing_tasks(client, project_id, list(rounds), rounds)
    known = [it for it, _ in chunk if it.sample_id in found]
    if known:
        task_ids = [int(found[it.sample_id]["id"]) for it in known]
        store.add_reviews(_review_rows(known, task_ids, project_id, "recovered"))
        report.recovered += len(known)
        done.update(it.sample_id for it in known)
    new = [(it, t) for it, t in chunk if it.sample_id not in found]
    if new:
        task_ids = client.import_tasks(project_id, [t for _, t in new])
        store.add_reviews(_review_rows([it for it, _ in new], task_ids, project_id, "pushed"))
        report.pushed += len(new)
        report.task_ids += task_ids
        done.update(it.sample_id for it, _ in new)


def _shown(store: Any, project_id: int) -> tuple[int, str] | None:
    """(round, model version) the project shows, as the store recorded it; None when never set for it."""
    shown = store.get_setting(SETTING_SHOWN_VERSION)  # [round, model_version, project_id]
    if not shown or (len(shown) > 2 and shown[2] is not None and int(shown[2]) != project_id):
        return None  # older stores wrote [round, model_version] for their one project
    return int(shown[0]), str(shown[1])


def _refresh(
    store: Any,
    client: LabelStudioClient,
    project: ReviewProject,
    round_: int,
    labels: LabelView | Sequence[str] | None,
    report: PushReport,
) -> None:
    """Give the project's open tasks of older rounds the shown round's prediction (module docstring)."""
    project_id = project.id
    shown = _shown(store, project_id)
    if shown is None:
        return
    shown_round, version = shown
    if report.error is not None:  # the server went away during this push: the next push refreshes
        report.not_refreshed = len(open_older_reviews(store, project_id, shown_round))
        return
    # The caller's labels are the pushed round's; for another round (an outage's leftovers of an older
    # round pushed now) the store's pseudo-labels of the round shown are used.
    res = refresh_open_tasks(store, client, project_id, shown_round, version, labels if shown_round == round_ else None,
                             names=project.labels or None, label_config=project.label_config or None)  # fmt: skip
    report.refreshed, report.not_refreshed = res.refreshed, res.not_refreshed
    if res.error is not None:
        report.error = report.error or res.error
    if res.refreshed or res.not_refreshed:
        log.info(
            "open tasks of rounds before %d: %d got the %s prediction, %d could not (%d had it, %d finished)",
            shown_round, res.refreshed, version, res.not_refreshed, res.already, res.finished,
        )  # fmt: skip


def _validated(
    store: Any, project: ReviewProject, todo: list[ReviewItem], report: PushReport
) -> list[tuple[ReviewItem, dict[str, Any]]]:
    """Tasks of ``todo`` whose predictions pass the SDK's validation; the others become rejects."""
    scheme = store.scheme
    tasks = [build_task(it, scheme, project.labels or None) for it in todo]
    errors = validate_tasks(tasks, project.label_config or labeling_config(scheme))
    failed = [(it, err) for it, err in zip(todo, errors, strict=True) if err]
    _reject_failed(store, project, failed)
    report.failed = len(failed)
    return [(it, t) for it, t, err in zip(todo, tasks, errors, strict=True) if not err]


def _set_pending(store: Any, items: Sequence[ReviewItem], title: str | None) -> None:
    """Keep the faces not sent, with the project title they were meant for (a sync sends them there)."""
    value = [{"sample_id": it.sample_id, "round": it.round, "label_id": it.label_id, "title": title} for it in items]
    if (store.get_setting(SETTING_PENDING) or []) != value:
        store.set_setting(SETTING_PENDING, value)


def _update_model_version(
    store: Any, client: LabelStudioClient, project_id: int, items: Sequence[ReviewItem], report: PushReport
) -> None:
    """Show the newest round's predictions: the editor pre-labels only with predictions whose
    model_version equals the project's (docs/review.md section 5.2)."""
    if not items:
        return
    newest = max(items, key=lambda it: (it.round, it.model_version))
    shown = _shown(store, project_id)
    if shown is not None and shown[0] > newest.round:  # an outage's leftovers of an older round
        report.model_version = shown[1]
        return
    try:
        client.update_project(project_id, model_version=newest.model_version)
        report.model_version = newest.model_version
        value = [newest.round, newest.model_version, project_id]
        if store.get_setting(SETTING_SHOWN_VERSION) != value:
            store.set_setting(SETTING_SHOWN_VERSION, value)
    except ReviewUnavailable as e:  # the tasks are in; the next push sets it again
        log.warning("could not set the project's model version: %s", e)
        report.error = report.error or str(e)


def record_pending(
    store: Any,
    sample_ids: Sequence[str],
    round: int,  # noqa: A002 - the pipeline's word
    labels: LabelView | Sequence[str] | None = None,
    *,
    error: str,
    title: str | None = None,
    access: ImageAccess | None = None,
) -> PushReport:
    """Keep faces for the next push or sync when Label Studio cannot be reached at all.

    The faces are resolved as a push would (refusals reported the same way) and added after the
    faces already pending; nothing is sent.

    Args:
        store: The label store.
        sample_ids: Faces selected for review.
        round: The round whose labels would be shown.
        labels: The labels to show (as for :func:`push_reviews`).
        error: Why Label Studio was unreachable (kept in the report).
        title: The project title the push was for (the sync that sends them uses it).
        access: Image access (default: ``$PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT``).

    Returns:
        ``pending``: every face now waiting (earlier ones included); ``error``.
    """
    access = access or ImageAccess.from_env()
    selection = collect_items(store, sample_ids, int(round), labels, access)
    with store.review_lock():
        before = list(store.get_setting(SETTING_PENDING) or [])
        have = {p.get("sample_id") for p in before}
        added = [
            {"sample_id": it.sample_id, "round": it.round, "label_id": it.label_id, "title": title}
            for it in selection.items
            if it.sample_id not in have
        ]
        if added:
            store.set_setting(SETTING_PENDING, before + added)
    log.warning("Label Studio unavailable: %d faces pending for the next push or sync (%s)", len(before) + len(added),
                error)  # fmt: skip
    return PushReport(pending=len(before) + len(added), refused=selection.refused, error=error)


def push_pending(store: Any, client: LabelStudioClient) -> PushReport | None:
    """Send the faces an outage held back (``labelstudio.pending_push``), to the project they were
    meant for (the title recorded with them; the store's project once it has one).

    Returns:
        The push report; None when nothing is pending, or when another push is running (it sends
        the pending faces first itself: a sync does not wait for it).
    """
    pending = store.get_setting(SETTING_PENDING) or []
    if not pending:
        return None
    newest = max(int(p["round"]) for p in pending)
    title = next((p["title"] for p in pending if p.get("title")), None)
    try:
        with store.review_lock(timeout=PENDING_LOCK_WAIT_S):
            return push_reviews(store, client, [], newest, title=title)
    except StoreLocked:
        log.info("a push is running on %s: it sends the %d pending faces", store.url, len(pending))
        return None
