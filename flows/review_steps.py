"""The review step of a round: send the round's budget of faces to people, pull corrections, announce them.

Thin glue over ``annotations.review`` (Label Studio when PIPSTC_LABEL_STUDIO_URL is set, otherwise a
Label Studio import file in the round folder) and :func:`annotations.review.candidates.plan_round_review`:
one budget per round, all pushes of the round together, an audit slice drawn at random first.

The review sync announces every correction it pulls as a Prefect event (``pipstc.review.correction``,
resource ``pipstc.store.<store url>``), so that a deployment trigger can start the next round once
enough corrections have arrived (prefect.yaml, ``scheduled-stc-round``).
"""

from __future__ import annotations

import uuid
from typing import Any

from annotations.review.candidates import faces_sent, plan_round_review
from annotations.review.cli_helpers import pull_if_configured, push_or_export, status_report
from annotations.review.client import ReviewUnavailable
from annotations.review.pull import full_sync_due
from annotations.review.push import record_pending
from annotations.store import Store
from flows.config import STCConfig
from flows.errors import UserError

__all__ = [
    "CORRECTION_EVENT",
    "announce_corrections",
    "pull_corrections",
    "push_round",
    "review_status",
    "store_resource",
]

CORRECTION_EVENT = "pipstc.review.correction"


def _latest_pseudo_round(store: Store) -> int:
    rounds = sorted(set(store.labels(source="pseudo").frame["round"].astype(int)))
    if not rounds:
        fix = f"run a round first: `pipstc round {store.url} 0`"
        raise UserError(store.url, "no pseudo-labels yet, so nothing to review", fix)
    return rounds[-1]


def _round_config(store: Store, k: int) -> STCConfig:
    saved = store.read_round_json(k, "config.json", default=None)
    return STCConfig.from_dict(saved) if saved else STCConfig()


def _message(k: int, budget: int, sent: int, new: int, eligible: int, report: dict[str, Any]) -> str:
    if budget == 0:
        return f"round {k}: no review (review_budget is 0)"
    if "import_file" in report:
        return f"round {k}: {report.get('tasks', 0)} of {budget} written to {report['import_file']} (no Label Studio)"
    text = f"round {k}: {sent} of {budget} sent"
    if new == 0 and sent >= budget:
        text += " (the round's budget is spent: raise it with --budget to send more)"
    elif sent < budget and eligible == 0:
        text += " (no other face of the pool may go to review now)"
    if report.get("pending"):
        text += f"; {report['pending']} held back by an outage, sent by the next push"
    return text


def push_round(
    store_url: str, k: int | None, cfg: STCConfig | None = None, *, budget: float | None = None
) -> dict[str, Any]:
    """Send what is left of round k's review budget: the audit slice first, then the least confident faces.

    Args:
        store_url: The store.
        k: The round whose pseudo-labels are shown (None: the newest round with pseudo-labels).
        cfg: The round's settings (default: the round's config.json).
        budget: Overrides ``cfg.review_budget`` (a share of the pool); raising it sends the difference.

    Returns:
        The push (or import-file) report with ``round``, ``budget``, ``selected``, ``audit`` and
        ``message`` ("round k: 25 of 25 sent").

    Label Studio being down does not stop a round: the selected faces are recorded as pending and the
    next push or review sync sends them (without duplicates: annotations.review.push).
    """
    store = Store.open(store_url)
    k = _latest_pseudo_round(store) if k is None else k
    cfg = cfg or _round_config(store, k)
    if budget is not None:
        cfg = cfg.replace(review_budget=budget)
    plan = plan_round_review(store, k, cfg.review_policy())
    ids = plan.sample_ids
    report: dict[str, Any] = {"pushed": 0}
    if ids:
        out_dir = None
        if "://" not in str(store.url):
            out_dir = str(store.round_path(k)).removeprefix("file://") + "/review"
        labels = store.pseudo_labels(k)
        try:
            report = push_or_export(store, ids, k, labels, out_dir=out_dir, title=cfg.review_project)
        except ReviewUnavailable as e:  # push_or_export keeps outages as pending; this is the round's guarantee
            report = record_pending(store, ids, k, labels, error=str(e), title=cfg.review_project).as_dict()
        if "import_file" in report:
            report["written"] = report.get("tasks", 0)
    sent = len(faces_sent(store, k))
    new = int(report.get("pushed", 0)) + int(report.get("recovered", 0))
    message = _message(k, plan.budget, sent, new, plan.eligible - len(ids), report)
    return {"round": k, "budget": plan.budget, "sent": sent, "selected": len(ids), "audit": len(plan.audit),
            **report, "message": message}  # fmt: skip


def store_resource(store: Store) -> dict[str, str]:
    """The Prefect event resource naming a store: ``pipstc.store.<url>`` (prefect.yaml's trigger matches it)."""
    return {"prefect.resource.id": f"pipstc.store.{store.url}", "prefect.resource.name": str(store.url)}


def announce_corrections(store: Store, label_ids: set[str]) -> int:
    """Emit one ``pipstc.review.correction`` Prefect event per new correction; returns how many were sent.

    The event id is derived from the label id, so announcing the same correction twice sends the same
    event (the server keeps one). Without a Prefect API nothing is sent.
    """
    from prefect.events import emit_event

    if not label_ids:
        return 0
    view = store.labels(source="corrected")
    frame = view.frame[view.frame["label_id"].isin(label_ids)]
    resource = store_resource(store)
    sent = 0
    for row in frame.itertuples(index=False):
        payload = {"sample_id": str(row.sample_id), "label_id": str(row.label_id), "round": int(row.round),
                   "annotator": row.annotator if isinstance(row.annotator, str) else None}  # fmt: skip
        event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{store.url}#{row.label_id}")
        sent += emit_event(CORRECTION_EVENT, resource=resource, payload=payload, id=event_id) is not None
    return sent


def pull_corrections(store_url: str, announce: bool = False, full: bool = False, full_every: int = 0) -> dict[str, Any]:
    """Bring what reviewers finished since the last sync into the store (no-op without Label Studio),
    after sending the faces an earlier outage held back.

    Label Studio being down does not stop a round: pulling is incremental, so what is not pulled now
    comes in with the next sync. A wrong token or URL still fails loudly.

    Args:
        store_url: The store.
        announce: Emit a Prefect event per new correction (the review sync does; a round's own sync
            does not, because the round uses what it pulls).
        full: Compare every task of the project with the store: finds annotations and tasks deleted
            in Label Studio and retracts their corrections (annotations.review.pull).
        full_every: Make every ``full_every``-th pull a full one (0: only when ``full``).
    """
    store = Store.open(store_url)
    before = set(store.labels(source="corrected").frame["label_id"].astype(str))
    full = full or full_sync_due(store, full_every)
    try:
        report = pull_if_configured(store, full=full)
    except ReviewUnavailable as e:
        return {"configured": True, "error": str(e), "corrected": 0, "events": 0}
    report.setdefault("corrected", report.get("completed", 0) + report.get("updated", 0))
    if announce:
        new = set(store.labels(source="corrected").frame["label_id"].astype(str)) - before
        report["events"] = announce_corrections(store, new)
    return report


def review_status(store_url: str) -> dict[str, Any]:
    return status_report(Store.open(store_url))
