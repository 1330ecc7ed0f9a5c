"""Keep open review tasks pre-labelled when the project switches to a newer round's model.

Label Studio's editor pre-labels a task only with the predictions whose ``model_version`` equals the
project's ``model_version`` (docs/review.md section 5.2; ``tasks/serializers.py`` of 1.23). Every
prediction carries its round's model version, and a push of round k switches the project to round k's
version, so without this module the tasks of earlier rounds that nobody has finished yet would open
empty. A refresh adds to each such task a second prediction: the sample's pseudo-label of the round
now shown, with that round's model version; the first prediction stays (it is what the task was
pushed with, and what an annotation started before the switch points to).

Which tasks: the store's open reviews of the project (:meth:`Store.in_review`, latest event
"pushed") of rounds older than the one shown, that the server still holds with no annotation at all
(a skip counts: finished tasks are never touched). No review event is written for a refresh: the
``pushed`` event of the original push stays, with the label id of the pseudo-label first pushed.
Which pseudo-label a reviewer's correction actually started from is decided when it is pulled, from
the annotation's ``parent_prediction`` (:mod:`~annotations.review.pull`).

Idempotency: ``POST /api/predictions`` is not idempotent (the server adds a second copy), so it is
never re-sent after a failure that may have reached the server
(:meth:`~annotations.review.client.LabelStudioClient.create_prediction`). Instead, right before
creating, the task is asked which model versions its predictions have; a task that has the shown
version already gets nothing. The look-up and the creations of a batch run under the store's review
lock (a push holds it throughout), so two pushers do not both find a task missing its prediction,
and the writer lock stays free for a review sync. A refresh cut short by an
outage is finished by the next push, after the same look-up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from annotations.review.client import LabelStudioClient, ReviewRequestError, ReviewUnavailable
from annotations.review.config import labeling_config
from annotations.review.tasks import ReviewItem, build_prediction, refresh_items, validate_tasks
from annotations.store.views import LabelView

__all__ = ["RefreshResult", "open_older_reviews", "refresh_open_tasks"]

log = logging.getLogger(__name__)

# Tasks per look-up request (as in push.py: ids in the query string stay under 8 kB).
REFRESH_BATCH = 100
# The server's summary of a task's model versions (``predictions_model_versions``) is cut at 500
# characters (``DataManagerTaskSerializer.CHAR_LIMITS``, data_manager/serializers.py in 1.23); a longer
# one, or a version with a comma or quote in it, is checked against the task's predictions instead.
_SUMMARY_LIMIT = 450
_LOOKUP_FIELDS = "id,data,total_annotations,cancelled_annotations,predictions_model_versions"


@dataclass
class RefreshResult:
    """What a refresh did.

    Attributes:
        refreshed: Open tasks that got the shown round's prediction now.
        not_refreshed: Open tasks that still lack it: no pseudo-label of that round for the sample, a
            prediction that failed validation, a label of another model version, a task gone from the
            server, a refused request, or an outage (then the next push tries again).
        already: Open tasks that had it already (an earlier refresh).
        finished: Tasks the store still calls open but that have an annotation or skip on the server
            (not pulled yet); left alone.
        error: The outage that stopped the refresh, if any.
    """

    refreshed: int = 0
    not_refreshed: int = 0
    already: int = 0
    finished: int = 0
    error: str | None = None


def open_older_reviews(store: Any, project_id: int, round_: int) -> pd.DataFrame:
    """The store's open reviews (latest event "pushed") of the project pushed with a round before ``round_``."""
    rows = store.in_review()
    if rows.empty:
        return rows
    project = pd.to_numeric(rows["project_id"], errors="coerce")
    mine = project.isna().to_numpy() | (project.to_numpy() == project_id)
    older = pd.to_numeric(rows["round"], errors="coerce").to_numpy() < round_
    return rows[mine & older].reset_index(drop=True)


def _versions(task: dict[str, Any]) -> tuple[set[str], bool]:
    """The model versions of a task's predictions from the server's summary, and whether it is complete."""
    text = str(task.get("predictions_model_versions") or "")
    return {v.strip() for v in text.split(",") if v.strip()}, len(text) < _SUMMARY_LIMIT


def _lookup(client: LabelStudioClient, project_id: int, sample_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Tasks of the project per sample id, with annotation counts and prediction model versions."""
    flt = {"filter": "filter:tasks:data.sample_id", "operator": "in_list", "type": "String", "value": list(sample_ids)}
    out: dict[str, list[dict[str, Any]]] = {}
    # fields=all: the model-version summary is computed only then (task_only returns "").
    for task in client.iter_tasks(project_id, filters=[flt], include=_LOOKUP_FIELDS, fields="all", page_size=200):
        sid = (task.get("data") or {}).get("sample_id")
        if sid is not None:
            out.setdefault(str(sid), []).append(task)
    return out


def _pick(tasks: list[dict[str, Any]], task_id: Any) -> dict[str, Any] | None:
    """The task the store's review event names (or the first of the sample when it names none)."""
    if task_id is None or pd.isna(task_id):
        return tasks[0] if tasks else None
    return next((t for t in tasks if int(t["id"]) == int(task_id)), None)


def _has_version(client: LabelStudioClient, task: dict[str, Any], model_version: str) -> bool:
    listed, complete = _versions(task)
    if model_version in listed:
        return True
    if complete and "," not in model_version and '"' not in model_version:
        return False
    return any(p.get("model_version") == model_version for p in client.predictions(int(task["id"])))


def _reject_invalid(store: Any, project_id: int, failed: list[tuple[ReviewItem, int, list[str]]]) -> None:
    if not failed:
        return
    store.add_rejects(
        pd.DataFrame(
            {
                "stage": "review",
                "source": f"label studio project {project_id}",
                "location": [f"task {tid} label {it.label_id}" for it, tid, _ in failed],
                "sample_id": [it.sample_id for it, _, _ in failed],
                "round": [it.round for it, _, _ in failed],
                "reason": [
                    "newer prediction failed Label Studio validation (the task keeps showing nothing): "
                    + "; ".join(err)[:500]
                    for _, _, err in failed
                ],
            }
        )
    )


def refresh_open_tasks(
    store: Any,
    client: LabelStudioClient,
    project_id: int,
    round_: int,
    model_version: str,
    labels: LabelView | Sequence[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    label_config: str | None = None,
) -> RefreshResult:
    """Add round ``round_``'s prediction to the project's open tasks of older rounds.

    Args:
        store: The label store.
        client: A connected client.
        project_id: The project, which shows ``model_version`` now.
        round_: The round the project shows.
        model_version: The project's ``model_version``; only labels with this version are added (a
            prediction of another version would not be shown either).
        labels: Round ``round_``'s labels (a LabelView or label ids); samples without one there fall
            back to the store's pseudo-labels of the round.
        names: The project's landmark labels (default the scheme's names).
        label_config: The project's labeling config, to validate against (default the generated one).

    Returns:
        The counts. An outage, or a look-up the server refuses, stops the refresh (``error``); what is
        left counts as not refreshed. A refused creation only counts that task.

    Raises:
        ReviewAuthError: the token is refused.
    """
    result = RefreshResult()
    rows = open_older_reviews(store, project_id, round_)
    if rows.empty:
        return result
    sids = rows["sample_id"].astype(str).tolist()
    task_ids = rows["task_id"].tolist()
    sel = refresh_items(store, sids, round_, labels)
    items = {it.sample_id: it for it in sel.items}
    why_not = dict(sel.refused)
    for sid, it in items.items():
        if it.model_version != model_version:
            why_not[sid] = f"its round-{round_} label has model version {it.model_version!r}, the project shows"
            why_not[sid] += f" {model_version!r}"
    config = label_config or labeling_config(store.scheme)
    try:
        for start in range(0, len(sids), REFRESH_BATCH):
            batch = list(zip(sids[start : start + REFRESH_BATCH], task_ids[start : start + REFRESH_BATCH], strict=True))
            with store.review_lock():
                _refresh_batch(store, client, project_id, batch, items, why_not, (model_version, config, names), result)
    except (ReviewUnavailable, ReviewRequestError) as e:  # the tasks are pushed: report, do not raise
        result.error = str(e)
        # Every open task not accounted for yet still lacks the prediction (as far as we know).
        result.not_refreshed = len(sids) - result.refreshed - result.already - result.finished
        log.warning("refresh of open tasks stopped (%s); the next push finishes it", e)
    return result


def _refresh_batch(
    store: Any,
    client: LabelStudioClient,
    project_id: int,
    batch: list[tuple[str, Any]],
    items: dict[str, ReviewItem],
    why_not: dict[str, str],
    shown: tuple[str, str, Sequence[str] | None],
    result: RefreshResult,
) -> None:
    """Look up one batch of (sample id, task id) and add the prediction where it is missing.

    ``shown`` is (model version, labeling config, project labels or None).
    """
    model_version, config, names = shown
    found = _lookup(client, project_id, [s for s, _ in batch])
    need: list[tuple[ReviewItem, int]] = []
    for sid, tid in batch:
        task = _pick(found.get(sid, []), tid)
        if task is None:
            log.warning("refresh: the task of %s (task id %s) is gone from project %d", sid, tid, project_id)
            result.not_refreshed += 1
        elif int(task.get("total_annotations") or 0) + int(task.get("cancelled_annotations") or 0) > 0:
            result.finished += 1
        elif _has_version(client, task, model_version):
            result.already += 1
        elif sid in why_not or sid not in items:
            log.info("refresh: task %s (%s) keeps its own round's prediction only: %s", task["id"], sid,
                     why_not.get(sid, "no label"))  # fmt: skip
            result.not_refreshed += 1
        else:
            need.append((items[sid], int(task["id"])))
    preds = [build_prediction(it, store.scheme, names) for it, _ in need]
    errors = validate_tasks([{"predictions": [p]} for p in preds], config)
    _reject_invalid(store, project_id, [(it, t, e) for (it, t), e in zip(need, errors, strict=True) if e])
    for (it, tid), pred, err in zip(need, preds, errors, strict=True):
        if err:
            result.not_refreshed += 1
            continue
        try:
            client.create_prediction(tid, pred["result"], model_version, pred.get("score"))
        except ReviewRequestError as e:  # refused (e.g. the task was deleted just now): report it, go on
            log.warning("refresh: Label Studio refused the prediction of task %d (%s): %s", tid, it.sample_id, e)
            result.not_refreshed += 1
            continue
        result.refreshed += 1
