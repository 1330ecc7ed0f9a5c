"""Pull reviewers' work from Label Studio into the store: corrections, skips, rejections.

Incremental by the task's ``updated_at``. Label Studio sets a task's ``updated_at`` (Django
``auto_now``) whenever one of its annotations is created, updated or deleted (``Annotation.save`` and
``delete`` call ``update_task``; label_studio/tasks/models.py in 1.23.2), including skips
(``was_cancelled``). So "every task whose ``updated_at`` is at or after the newest ``updated_at``
seen last time" holds every annotation created or changed since the last pull. The watermark is
the server's own time stamp, so the two machines' clocks never meet (the Data Manager reads the
filter's naive time as UTC: ``TIME_ZONE = 'UTC'`` in label_studio/core/settings/base.py). Two
margins make it safe:

* the query starts :data:`OVERLAP_S` seconds before the watermark: a save stamps ``updated_at`` before
  its transaction commits, so a slow transaction can become visible after a faster, later-stamped
  one was already seen;
* everything a pull writes is idempotent: a correction's label id is a hash of (project, annotation
  id, annotation ``updated_at``), and review events and rejects are deduplicated by the store, so
  tasks seen twice add nothing.

``completed_at`` would miss skips (a cancelled annotation does not complete a task) and updates of an
annotation (it is the newest annotation's creation time); the export API has no time filter. The
task list asks the server for the annotation fields we need only (``include=...``), which also
drops the 68-point predictions from the response.

An updated annotation becomes a new ``corrected`` label whose ``created_at`` is the annotation's
``updated_at``; the store's current-label view prefers the newest, so the update supersedes.

The parent of a correction (``parent_label_id``, the landmarks ``moved`` is measured against, the
label's ``round`` and ``model_version``) is the pseudo-label the reviewer started from. That is the
task's ``data.label_id`` (the pseudo-label first pushed, also named by the review events), except on
a task a later push refreshed (:mod:`~annotations.review.refresh`: a second prediction of a newer
round, the one the editor shows after the project's model version changed): there the annotation's
``parent_prediction`` says which prediction the editor started from, its ``model_version`` gives the
round, and the parent is the sample's pseudo-label of that round with that model version. An
annotation without ``parent_prediction`` (made through the API, or drawn from scratch), or whose
prediction cannot be matched to a stored pseudo-label, keeps the pseudo-label first pushed.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from annotations.review.client import LabelStudioClient, ReviewConfigError, ReviewError, ReviewRequestError
from annotations.review.config import REJECT_CHOICES
from annotations.review.convert import moved_landmarks, parse_annotation
from annotations.review.project import SETTING_PROJECT_ID, SETTING_URL, default_title, ensure_project
from annotations.review.push import SETTING_SHOWN_VERSION
from annotations.review.tasks import newest_per_sample, shown_model_version

__all__ = ["OVERLAP_S", "SETTING_PULL", "PullReport", "correction_label_id", "pull_reviews"]

log = logging.getLogger(__name__)

SETTING_PULL = "labelstudio.pull"
# Longer than any annotation-saving request plausibly stays uncommitted on Label Studio (they take
# ~0.25 s, docs/review.md section 9); re-reading two minutes of tasks costs one small request.
OVERLAP_S = 120.0
# The Data Manager's datetime filter format (label_studio/data_manager/managers.py DATETIME_FORMAT).
_DM_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_INCLUDE = (
    "id,data,updated_at,annotations,result,was_cancelled,completed_by,created_at,lead_time,parent_prediction,"
    "total_predictions"
)
_LABEL_PERSON = b"pipstc-ls-v1"


@dataclass
class PullReport:
    """What a pull brought in.

    Attributes:
        tasks_seen: Tasks the server reported as changed (with the overlap window).
        completed: New corrected labels stored.
        updated: Of those, corrections that supersede an earlier version of the same annotation.
        skipped: New skip events.
        rejected: New rejections (reviewer chose "bad image" or "no face").
        invalid: Annotations with missing, duplicate or unknown landmarks (reported as rejects, not stored).
        foreign: Tasks without a pipstc sample of this store (reported as rejects).
        watermark: The newest task ``updated_at`` seen.
    """

    tasks_seen: int = 0
    completed: int = 0
    updated: int = 0
    skipped: int = 0
    rejected: int = 0
    invalid: int = 0
    foreign: int = 0
    project_id: int | None = None
    watermark: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for logs and CLI output."""
        return asdict(self)


def correction_label_id(project_id: int, annotation_id: int, updated_at: str) -> str:
    """The label id of one version of an annotation (32 hex digits of BLAKE2b-128, RFC 7693)."""
    key = f"{int(project_id)}|{int(annotation_id)}|{_canonical_time(updated_at)}".encode()
    return hashlib.blake2b(key, digest_size=16, person=_LABEL_PERSON).hexdigest()


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _canonical_time(text: str) -> str:
    return _parse_time(text).strftime(_DM_DATETIME)


@dataclass
class _Batch:
    """What one pull writes, collected before writing."""

    label_rows: list[dict[str, Any]] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    moved: list[np.ndarray] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)


def _project_id(store: Any, client: LabelStudioClient) -> int | None:
    pid = store.get_setting(SETTING_PROJECT_ID)
    if pid is None:
        # Tasks imported by hand from an import file (export_file.py): the project has the default title.
        if not client.projects(title=default_title(store)):
            return None
        return ensure_project(store, client).id
    url = store.get_setting(SETTING_URL)
    if url is not None and url != client.url:
        raise ReviewConfigError(
            f"the store's review project {pid} lives on {url}, not on {client.url}; set PIPSTC_LABEL_STUDIO_URL to"
            f" {url}, or push again to create a project on {client.url}"
        )
    return int(pid)


def _parents(store: Any, rounds: set[int]) -> dict[str, tuple[np.ndarray, str | None]]:
    """Pseudo-labels shown in the given rounds: label id -> (landmarks (N, 2), model version)."""
    out: dict[str, tuple[np.ndarray, str | None]] = {}
    for r in sorted(rounds):
        view = store.labels(round=r, source="pseudo")
        ids = view.frame["label_id"].astype(str).to_numpy()
        versions = view.frame["model_version"].to_numpy() if "model_version" in view.frame else [None] * len(ids)
        for i, lid in enumerate(ids):
            out[lid] = (view.landmarks[i], versions[i] if isinstance(versions[i], str) else None)
    return out


@dataclass
class _Parent:
    """The pseudo-label a correction started from."""

    label_id: str | None
    landmarks: np.ndarray | None  # (N, 2) pixels; None: not in the store
    model_version: str | None
    round: int


class _RefreshedParents:
    """Which pseudo-label the prediction an annotation started from shows, on refreshed tasks.

    A prediction's ``model_version`` is its label's model version (``round-<k>`` without one,
    :func:`~annotations.review.tasks.shown_model_version`); the rounds after the task's own, up to the
    newest round the project was switched to, are searched newest first for the sample's newest
    pseudo-label of that version, as the refresh chose it.
    """

    def __init__(self, store: Any, client: LabelStudioClient) -> None:
        self.store, self.client = store, client
        shown = store.get_setting(SETTING_SHOWN_VERSION)
        self.newest_round = int(shown[0]) if shown else None
        self._versions: dict[int, str | None] = {}
        self._rounds: dict[int, tuple[Any, dict[str, int]]] = {}

    def _version(self, prediction_id: int) -> str | None:
        if prediction_id not in self._versions:
            try:
                self._versions[prediction_id] = self.client.prediction(prediction_id).get("model_version")
            except ReviewRequestError as e:  # deleted since: the annotation keeps the first parent
                log.info("prediction %d of an annotation is gone (%s)", prediction_id, e)
                self._versions[prediction_id] = None
        return self._versions[prediction_id]

    def _round(self, r: int) -> tuple[Any, dict[str, int]]:
        if r not in self._rounds:
            view = self.store.pseudo_labels(r)
            self._rounds[r] = (view, newest_per_sample(view))
        return self._rounds[r]

    def find(self, prediction_id: int, sid: str, task_round: int, first_version: str | None) -> _Parent | None:
        """The parent the prediction shows, or None when it is the task's first prediction or unknown."""
        version = self._version(prediction_id)
        if version is None or version == first_version or self.newest_round is None:
            return None
        for r in range(self.newest_round, task_round, -1):
            view, newest = self._round(r)
            i = newest.get(sid)
            if i is None:
                continue
            mv = view.frame["model_version"].iat[i] if "model_version" in view.frame else None
            if shown_model_version(mv, r) == version:
                raw = mv if isinstance(mv, str) else None
                return _Parent(str(view.frame["label_id"].iat[i]), view.landmarks[i], raw, r)
        log.warning(
            "sample %s: prediction %d (model version %r) matches no stored pseudo-label of rounds %d-%d; its"
            " correction keeps the pseudo-label first pushed as parent",
            sid, prediction_id, version, task_round + 1, self.newest_round,
        )  # fmt: skip
        return None


def pull_reviews(store: Any, client: LabelStudioClient, *, full: bool = False) -> PullReport:
    """Bring what reviewers did since the last pull into the store.

    Args:
        store: The label store whose project was pushed to.
        client: A connected client of the same server.
        full: Ignore the watermark and look at every task (still adds nothing twice).

    Returns:
        Counts of what was new. A store that never pushed returns an empty report.

    Raises:
        ReviewAuthError, ReviewUnavailable: from the server; nothing of an interrupted pull is lost
            (the watermark moves only after everything is written).
        ReviewConfigError: the store's project lives on another server.
    """
    report = PullReport()
    pid = _project_id(store, client)
    if pid is None:
        return report
    report.project_id = pid
    state = store.get_setting(SETTING_PULL) or {}
    watermark = state.get("updated_at") if state.get("project_id") == pid and not full else None
    filters = []
    if watermark:
        since = _parse_time(watermark) - timedelta(seconds=OVERLAP_S)
        filters.append(
            {"filter": "filter:tasks:updated_at", "operator": "greater_or_equal", "type": "Datetime",
             "value": since.strftime(_DM_DATETIME)}
        )  # fmt: skip
    tasks = list(client.iter_tasks(pid, filters=filters, include=_INCLUDE, fields="all", page_size=200))
    report.tasks_seen = len(tasks)
    newest = max((_canonical_time(t["updated_at"]) for t in tasks if t.get("updated_at")), default=watermark)
    corrected = store.labels(source="corrected").frame
    known = set(corrected["label_id"].astype(str))
    batch = _collect(store, client, pid, tasks, report, known)
    _write(store, batch, report, known, corrected)
    report.watermark = newest
    if newest and newest != watermark:
        store.set_setting(SETTING_PULL, {"project_id": pid, "updated_at": newest})
    return report


def _users(client: LabelStudioClient) -> dict[int, str]:
    """User id -> e-mail; empty when the token may not list users (annotators are then stored by id)."""
    try:
        return {int(u["id"]): u.get("email") or u.get("username") or str(u["id"]) for u in client.users()}
    except ReviewError as e:
        log.info("cannot list Label Studio users (%s); annotators are stored by user id", e)
        return {}


def _collect(
    store: Any, client: LabelStudioClient, pid: int, tasks: list[dict[str, Any]], report: PullReport, known: set[str]
) -> _Batch:
    annotated = [t for t in tasks if t.get("annotations")]
    collector = _Collector(store, client, pid, report, known, annotated)
    for task in annotated:
        collector.task(task)
    return collector.batch


@dataclass
class _TaskContext:
    """What every annotation of one task shares."""

    sid: str
    rnd: int
    tid: int
    split: str
    width: int
    height: int
    first_parent: _Parent
    first_version: str | None
    refreshed: bool
    event: dict[str, Any]


class _Collector:
    """Turns annotated tasks into label rows, review events and rejects (one pull's :class:`_Batch`)."""

    def __init__(self, store: Any, client: LabelStudioClient, pid: int, report: PullReport, known: set[str],
                 annotated: list[dict[str, Any]]) -> None:  # fmt: skip
        self.batch = _Batch()
        self.client, self.pid, self.report, self.known = client, pid, report, known
        self.scheme = store.scheme
        self.samples = store.samples().set_index("sample_id")
        self.source = f"{client.url}/projects/{pid}"
        if annotated:
            self.users = _users(client)
            rounds = {int((t.get("data") or {}).get("round", -1)) for t in annotated}
            self.parents = _parents(store, {r for r in rounds if r >= 0})
            self.newer = _RefreshedParents(store, client)

    def reject(self, location: str, sid: str | None, rnd: int | None, reason: str) -> None:
        self.batch.rejects.append({"stage": "review", "source": self.source, "location": location,
                                   "sample_id": sid, "round": rnd, "reason": reason})  # fmt: skip

    def _context(self, task: dict[str, Any]) -> _TaskContext | None:
        tid, data = int(task["id"]), task.get("data") or {}
        sid = data.get("sample_id")
        if sid is None or str(sid) not in self.samples.index or data.get("round") is None:
            foreign = "task carries no sample of this store (no or unknown data.sample_id)"
            self.reject(f"task {tid}", None, None, foreign)
            self.report.foreign += 1
            return None
        sid, rnd, parent_id = str(sid), int(data["round"]), data.get("label_id")
        sample = self.samples.loc[sid]
        first = self.parents.get(str(parent_id)) if parent_id is not None else None
        first_parent = _Parent(
            None if parent_id is None else str(parent_id),
            None if first is None else first[0],
            first[1] if first is not None else data.get("model_version"),
            rnd,
        )
        return _TaskContext(
            sid=sid, rnd=rnd, tid=tid, split=str(sample["split"]), width=int(sample["width"]),
            height=int(sample["height"]), first_parent=first_parent,
            first_version=data.get("model_version") or (shown_model_version(first[1], rnd) if first else None),
            refreshed=int(task.get("total_predictions") or 0) > 1,
            event={"sample_id": sid, "round": rnd, "project_id": self.pid, "task_id": tid, "label_id": parent_id},
        )  # fmt: skip

    def task(self, task: dict[str, Any]) -> None:
        ctx = self._context(task)
        if ctx is None:
            return
        for ann in sorted(task["annotations"], key=lambda a: (_parse_time(a["updated_at"]), int(a["id"]))):
            self.annotation(ctx, ann)

    def annotation(self, ctx: _TaskContext, ann: dict[str, Any]) -> None:
        aid, when = int(ann["id"]), ann["updated_at"]
        where = f"task {ctx.tid} annotation {aid}"
        if "result" not in ann:  # a server that ignores include=result for nested annotations
            ann = self.client.annotation(aid)
        if ctx.split == "holdout":
            self.reject(where, ctx.sid, ctx.rnd, "holdout sample: its review is not used")
            return
        if ann.get("was_cancelled"):
            skipped = {**ctx.event, "status": "skipped", "annotation_id": aid, "note": f"skipped {when}"}
            self.batch.events.append(skipped)
            return
        completed = {**ctx.event, "status": "completed", "annotation_id": aid, "note": f"version {when}"}
        label_id = correction_label_id(self.pid, aid, when)
        if label_id in self.known:  # this version is stored already; its event is written again (a no-op)
            self.batch.events.append(completed)
            return
        parsed = parse_annotation(ann.get("result") or [], self.scheme, ctx.width, ctx.height)
        if parsed.choice in REJECT_CHOICES:
            self.batch.events.append({**ctx.event, "status": "rejected", "annotation_id": aid, "note": parsed.choice})
            self.reject(where, ctx.sid, ctx.rnd, f"reviewer chose {parsed.choice!r}")
            return
        if not parsed.ok:
            self.reject(where, ctx.sid, ctx.rnd, f"annotation not used: {parsed.problems(self.scheme)}")
            self.report.invalid += 1
            return
        self._correction(ctx, ann, parsed, label_id, when)
        self.batch.events.append(completed)

    def _correction(self, ctx: _TaskContext, ann: dict[str, Any], parsed: Any, label_id: str, when: str) -> None:
        parent = ctx.first_parent
        if ctx.refreshed and ann.get("parent_prediction") is not None:
            found = self.newer.find(int(ann["parent_prediction"]), ctx.sid, ctx.rnd, ctx.first_version)
            parent = found or ctx.first_parent
        if parent.landmarks is not None:
            moved = moved_landmarks(parsed, parent.landmarks, ctx.width, ctx.height)
        else:  # nothing to compare with: trust the editor's origin marks only
            moved = np.array([o == "prediction-changed" for o in parsed.origin], dtype=bool)
        who = ann.get("completed_by")
        who = who.get("id") if isinstance(who, dict) else who
        self.batch.label_rows.append(
            {
                "label_id": label_id,
                "sample_id": ctx.sid,
                "source": "corrected",
                "round": parent.round,
                "model_version": parent.model_version,
                "annotator": self.users.get(int(who), str(who)) if who is not None else None,
                "ls_task_id": ctx.tid,
                "ls_annotation_id": int(ann["id"]),
                "parent_label_id": parent.label_id,
                "created_at": _parse_time(when),
            }
        )
        self.batch.landmarks.append(parsed.landmarks)
        self.batch.moved.append(moved)


def _write(store: Any, batch: _Batch, report: PullReport, known: set[str], corrected: pd.DataFrame) -> None:
    """Labels first, then events, then rejects: a crash in between leaves the watermark unmoved."""
    if batch.label_rows:
        rows = pd.DataFrame(batch.label_rows)
        earlier = defaultdict(int)
        for aid in corrected["ls_annotation_id"].dropna().astype(int):
            earlier[aid] += 1
        new = ~rows["label_id"].isin(known)
        report.completed = int(new.sum())
        report.updated = int(sum(1 for aid, n in zip(rows["ls_annotation_id"], new, strict=True) if n and earlier[aid]))
        rows["created_at"] = pd.to_datetime(rows["created_at"], utc=True)
        store.add_labels(
            rows,
            np.stack(batch.landmarks).astype(np.float32),
            landmark_confidence=None,
            moved=np.stack(batch.moved),
        )
    if batch.events:
        # One write in the order things happened: the newest event of a sample is its state.
        before = store.reviews(latest=False)["status"].value_counts()
        store.add_reviews(pd.DataFrame(batch.events))
        after = store.reviews(latest=False)["status"].value_counts()
        report.skipped = int(after.get("skipped", 0) - before.get("skipped", 0))
        report.rejected = int(after.get("rejected", 0) - before.get("rejected", 0))
    if batch.rejects:
        store.add_rejects(pd.DataFrame(batch.rejects))
