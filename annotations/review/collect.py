"""One pull's work, collected before anything is written: corrections, states, retractions, rejects.

For every task a pull sees, the :class:`Collector`

1. turns each annotation into an :class:`~annotations.review.status.Outcome` (and, for annotations
   with landmarks, a ``corrected`` label per version: an updated annotation supersedes by its newer
   ``created_at``);
2. compares the annotation ids the server lists for the task with the ones the store holds
   corrections of: a correction whose annotation is gone was deleted in Label Studio and is
   retracted (:mod:`annotations.store.retractions`), with a ``retracted`` review event;
3. decides the task's state with :func:`~annotations.review.status.task_state` and writes a review
   event when the state changed (``annotated_at`` = the server's time of the deciding annotation, so
   a completed -> rejected -> completed flip ends completed).

Only a face's *current* task (the task of its latest review event) decides its state: a skipped face
selected again in a later round has a new task, and its old, skipped task must not make it skipped
again when a full sync lists it. Corrections made on an older task are still stored.

A full sync (``tasks_gone``) also retracts the corrections of tasks deleted from the project.
Everything here is idempotent: label ids hash (project, annotation id, annotation ``updated_at``),
retraction ids hash the retracted label id, and the store keeps a review event only when it changes
the face's state.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from annotations.review.client import LabelStudioClient, ReviewError
from annotations.review.config import REJECT_CHOICES
from annotations.review.convert import moved_landmarks, parse_annotation
from annotations.review.parents import Parent, RefreshedParents, shown_parents
from annotations.review.status import Outcome, task_state
from annotations.review.tasks import shown_model_version

__all__ = ["Batch", "Collector", "canonical_time", "correction_label_id", "parse_time"]

log = logging.getLogger(__name__)

# The Data Manager's datetime filter format (label_studio/data_manager/managers.py DATETIME_FORMAT).
DM_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_LABEL_PERSON = b"pipstc-ls-v1"


def parse_time(text: Any) -> datetime:
    """A Label Studio time stamp (ISO 8601, ``Z`` or an offset; naive means UTC) as an aware UTC datetime."""
    t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def canonical_time(text: Any) -> str:
    """A Label Studio time stamp in the Data Manager's own format."""
    return parse_time(text).strftime(DM_DATETIME)


def correction_label_id(project_id: int, annotation_id: int, updated_at: str) -> str:
    """The label id of one version of an annotation (32 hex digits of BLAKE2b-128, RFC 7693)."""
    key = f"{int(project_id)}|{int(annotation_id)}|{canonical_time(updated_at)}".encode()
    return hashlib.blake2b(key, digest_size=16, person=_LABEL_PERSON).hexdigest()


@dataclass
class Batch:
    """What one pull writes."""

    label_rows: list[dict[str, Any]] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    moved: list[np.ndarray] = field(default_factory=list)
    visibility: list[np.ndarray] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    retract: list[str] = field(default_factory=list)  # label ids of corrections whose annotation is gone
    multi: set[int] = field(default_factory=set)  # tasks with two or more annotations with landmarks


@dataclass
class _TaskContext:
    """What every annotation of one task shares."""

    sid: str
    rnd: int
    tid: int
    split: str
    width: int
    height: int
    first_parent: Parent
    first_version: str | None
    refreshed: bool
    event: dict[str, Any]


class _StoreView:
    """What the store already holds of the project: corrections by task and annotation, latest states."""

    def __init__(self, store: Any, pid: int) -> None:
        reviews = store.reviews(latest=False)
        mine = reviews[reviews["project_id"].isna() | (reviews["project_id"] == pid)] if len(reviews) else reviews
        pairs = set()
        if len(mine):
            ann = mine[mine["annotation_id"].notna()]
            pairs = set(zip(ann["task_id"].astype(int), ann["annotation_id"].astype(int), strict=True))
        frame = store.labels(source="corrected").frame  # in force
        self.corrections: dict[int, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        has_ids = frame["ls_task_id"].notna() & frame["ls_annotation_id"].notna()
        for tid, aid, lid in zip(frame.loc[has_ids, "ls_task_id"], frame.loc[has_ids, "ls_annotation_id"],
                                 frame.loc[has_ids, "label_id"], strict=True):  # fmt: skip
            if (int(tid), int(aid)) in pairs:  # a correction pulled from this project
                self.corrections[int(tid)][int(aid)].append(str(lid))
        latest = store.reviews(latest=True)
        self.latest: dict[str, dict[str, Any]] = {str(r["sample_id"]): r for r in latest.to_dict("records")}
        with_task = mine[mine["task_id"].notna()] if len(mine) else mine
        self.tasks: dict[int, str] = dict(zip(with_task["task_id"].astype(int), with_task["sample_id"], strict=True))


class Collector:
    """Turns the tasks of one pull into a :class:`Batch` (see the module docstring).

    Attributes:
        batch: What to write.
        counts: ``invalid``, ``foreign`` and ``retracted`` (annotations found deleted) so far.
    """

    def __init__(self, store: Any, client: LabelStudioClient, pid: int, known: set[str], annotated: bool) -> None:
        self.batch = Batch()
        self.client, self.pid, self.known = client, pid, known
        self.counts = {"invalid": 0, "foreign": 0, "retracted": 0}
        self.scheme = store.scheme
        self.samples = store.samples().set_index("sample_id")
        self.source = f"{client.url}/projects/{pid}"
        self.held = _StoreView(store, pid)
        self.users: dict[int, str] = _users(client) if annotated else {}
        self.store = store
        self.parents: dict[str, tuple[np.ndarray, str | None]] = {}  # pseudo-label id -> (landmarks, version)
        self._rounds: set[int] = set()
        self.newer = RefreshedParents(store, client)

    def reject(self, location: str, sid: str | None, rnd: int | None, reason: str) -> None:
        self.batch.rejects.append({"stage": "review", "source": self.source, "location": location,
                                   "sample_id": sid, "round": rnd, "reason": reason})  # fmt: skip

    def _context(self, task: dict[str, Any]) -> _TaskContext | None:
        tid, data = int(task["id"]), task.get("data") or {}
        sid = data.get("sample_id")
        if sid is None or str(sid) not in self.samples.index or data.get("round") is None:
            if task.get("annotations"):  # a reviewer's work we cannot use: say so
                why = "task carries no sample of this store (no or unknown data.sample_id)"
                self.reject(f"task {tid}", None, None, why)
                self.counts["foreign"] += 1
            return None
        sid, rnd, parent_id = str(sid), int(data["round"]), data.get("label_id")
        if rnd not in self._rounds:  # the pseudo-labels shown in that round, read once
            self.parents.update(shown_parents(self.store, {rnd}))
            self._rounds.add(rnd)
        sample = self.samples.loc[sid]
        first = self.parents.get(str(parent_id)) if parent_id is not None else None
        first_parent = Parent(None if parent_id is None else str(parent_id), None if first is None else first[0],
                              first[1] if first is not None else data.get("model_version"), rnd)  # fmt: skip
        return _TaskContext(
            sid=sid, rnd=rnd, tid=tid, split=str(sample["split"]), width=int(sample["width"]),
            height=int(sample["height"]), first_parent=first_parent,
            first_version=data.get("model_version") or (shown_model_version(first[1], rnd) if first else None),
            refreshed=int(task.get("total_predictions") or 0) > 1,
            event={"sample_id": sid, "round": rnd, "project_id": self.pid, "task_id": tid, "label_id": parent_id},
        )  # fmt: skip

    def task(self, task: dict[str, Any]) -> None:
        """One task as the server holds it now: its annotations, deletions and state."""
        ctx = self._context(task)
        if ctx is None:
            return
        anns = sorted(task.get("annotations") or [], key=lambda a: (parse_time(a["updated_at"]), int(a["id"])))
        if ctx.split == "holdout":
            for ann in anns:
                self.reject(f"task {ctx.tid} annotation {ann['id']}", ctx.sid, ctx.rnd,
                            "holdout sample: its review is not used")  # fmt: skip
            return
        outcomes = [o for o in (self.annotation(ctx, ann) for ann in anns) if o is not None]
        if sum(o.status == "completed" for o in outcomes) > 1:
            self.batch.multi.add(ctx.tid)
        self._deleted(ctx, {int(a["id"]) for a in anns}, task.get("updated_at"))
        self._state(ctx, outcomes, bool(anns), task.get("updated_at"))

    def annotation(self, ctx: _TaskContext, ann: dict[str, Any]) -> Outcome | None:
        """What one annotation says; None when it cannot be used (recorded as a reject)."""
        aid, when = int(ann["id"]), ann["updated_at"]
        where = f"task {ctx.tid} annotation {aid}"
        at = parse_time(when)
        if ann.get("was_cancelled"):
            return Outcome("skipped", aid, at, f"skipped {when}")
        label_id = correction_label_id(self.pid, aid, when)
        if label_id in self.known:  # this version is stored already
            return Outcome("completed", aid, at, f"version {when}")
        if "result" not in ann:  # a server that ignores include=result for nested annotations
            ann = self.client.annotation(aid)
        parsed = parse_annotation(ann.get("result") or [], self.scheme, ctx.width, ctx.height)
        if parsed.choice in REJECT_CHOICES:
            self.reject(where, ctx.sid, ctx.rnd, f"reviewer chose {parsed.choice!r}")
            return Outcome("rejected", aid, at, f"{parsed.choice}; version {when}")
        if not parsed.ok:
            self.reject(where, ctx.sid, ctx.rnd, f"annotation not used: {parsed.problems(self.scheme)}")
            self.counts["invalid"] += 1
            return None
        self._correction(ctx, ann, parsed, label_id, when)
        return Outcome("completed", aid, at, f"version {when}")

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
        self.batch.label_rows.append({
            "label_id": label_id, "sample_id": ctx.sid, "source": "corrected", "round": parent.round,
            "model_version": parent.model_version,
            "annotator": self.users.get(int(who), str(who)) if who is not None else None,
            "ls_task_id": ctx.tid, "ls_annotation_id": int(ann["id"]), "parent_label_id": parent.label_id,
            "created_at": parse_time(when),
        })  # fmt: skip
        self.batch.landmarks.append(parsed.landmarks)
        self.batch.moved.append(moved)
        self.batch.visibility.append(parsed.visibility)
        self.known.add(label_id)

    def _current(self, ctx: _TaskContext) -> bool:
        """Whether this task is the face's current one (the task of its latest review event)."""
        latest = self.held.latest.get(ctx.sid)
        return latest is None or _task_of(latest) in (None, ctx.tid)

    def _deleted(self, ctx: _TaskContext, on_server: set[int], task_time: Any) -> None:
        """Retract the corrections of this task's annotations that the server no longer lists."""
        for aid, label_ids in sorted(self.held.corrections.get(ctx.tid, {}).items()):
            if aid in on_server:
                continue
            self.batch.retract += label_ids
            self.counts["retracted"] += 1
            if self._current(ctx):
                self._event(ctx, "retracted", aid, task_time, f"annotation {aid} deleted in Label Studio: its"
                            f" correction no longer counts")  # fmt: skip

    def _state(self, ctx: _TaskContext, outcomes: list[Outcome], any_annotation: bool, task_time: Any) -> None:
        """A review event when the task's state (:func:`task_state`) differs from the face's stored one."""
        if not self._current(ctx):
            return  # an older task of a face that was pushed again: its state is the newer task's
        state = task_state(outcomes)
        if state is not None:
            self._event(ctx, state.status, state.annotation_id, state.annotated_at, state.note)
            return
        latest = self.held.latest.get(ctx.sid)
        if any_annotation or latest is None or latest["status"] == "pushed":
            return  # open as before (or only unusable annotations, reported as rejects)
        self._event(ctx, "pushed", None, task_time, "open again in Label Studio: its annotations were deleted")

    def _event(self, ctx: _TaskContext, status: str, aid: int | None, when: Any, note: str) -> None:
        at = when if isinstance(when, datetime) or when is None else parse_time(when)
        event = {**ctx.event, "status": status, "annotation_id": aid, "annotated_at": at, "note": note}
        self.batch.events.append(event)
        self.held.latest[ctx.sid] = event

    def tasks_gone(self, listed: set[int]) -> list[int]:
        """Full sync: the store's tasks of this project that the server no longer has; their corrections
        are retracted and their faces marked ``retracted`` (no longer in review)."""
        gone = []
        for tid in sorted(t for t in self.held.tasks if t not in listed):
            sid = str(self.held.tasks[tid])
            latest = self.held.latest.get(sid)
            if latest is not None and _task_of(latest) not in (None, tid):
                continue  # the face's review moved to another task since
            if latest is not None and latest["status"] == "retracted" and _task_of(latest) == tid:
                continue  # recorded already
            gone.append(tid)
            for label_ids in self.held.corrections.get(tid, {}).values():
                self.batch.retract += label_ids
                self.counts["retracted"] += 1
            rnd = int(latest["round"]) if latest is not None else 0
            event = {"sample_id": sid, "round": rnd, "project_id": self.pid, "task_id": tid,
                     "label_id": None if latest is None else latest.get("label_id"), "status": "retracted",
                     "annotation_id": None, "annotated_at": None,
                     "note": f"task {tid} deleted in Label Studio: the face is no longer in review"}  # fmt: skip
            self.batch.events.append(event)
            self.held.latest[sid] = event
        return gone


def _task_of(event: dict[str, Any]) -> int | None:
    tid = event.get("task_id")
    return None if tid is None or pd.isna(tid) else int(tid)


def _users(client: LabelStudioClient) -> dict[int, str]:
    """User id -> e-mail; empty when the token may not list users (annotators are then stored by id)."""
    try:
        return {int(u["id"]): u.get("email") or u.get("username") or str(u["id"]) for u in client.users()}
    except ReviewError as e:
        log.info("cannot list Label Studio users (%s); annotators are stored by user id", e)
        return {}
