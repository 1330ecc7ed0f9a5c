"""The review step of a round: choose the least confident faces, send them to people, pull corrections.

Thin glue over ``annotations.review`` (Label Studio when PIPSTC_LABEL_STUDIO_URL is set, otherwise a
Label Studio import file in the round folder) and :func:`annotations.review.candidates.round_candidates`.
"""

from __future__ import annotations

from typing import Any

from annotations.review.candidates import round_candidates
from annotations.review.cli_helpers import pull_if_configured, push_or_export, status_report
from annotations.review.client import ReviewUnavailable
from annotations.store import Store
from flows.config import STCConfig

__all__ = ["pull_corrections", "push_round", "review_status"]


def _latest_pseudo_round(store: Store) -> int:
    rounds = sorted(set(store.labels(source="pseudo").frame["round"].astype(int)))
    if not rounds:
        raise RuntimeError(f"{store.url} has no pseudo-labels yet: run a round first (`pipstc round STORE 0`)")
    return rounds[-1]


def push_round(store_url: str, k: int | None, cfg: STCConfig) -> dict[str, Any]:
    """Select round k's least confident faces within the budget and push (or export) them."""
    store = Store.open(store_url)
    k = _latest_pseudo_round(store) if k is None else k
    ids = round_candidates(store, k, cfg.review_budget)
    if not ids:
        return {"round": k, "selected": 0, "pushed": 0}
    out_dir = None
    if "://" not in str(store.url):
        out_dir = str(store.round_path(k)).removeprefix("file://") + "/review"
    report = push_or_export(store, ids, k, store.pseudo_labels(k), out_dir=out_dir, title=cfg.review_project)
    report = {"round": k, "selected": len(ids), **report}
    if "import_file" in report:
        report["written"] = report.get("tasks", 0)
    return report


def pull_corrections(store_url: str) -> dict[str, Any]:
    """Bring what reviewers finished since the last sync into the store (no-op without Label Studio).

    Label Studio being down does not stop a round: pulling is incremental, so what is not pulled now
    comes in with the next sync. A wrong token or URL still fails loudly.
    """
    try:
        report = pull_if_configured(Store.open(store_url))
    except ReviewUnavailable as e:
        return {"configured": True, "error": str(e), "corrected": 0}
    report.setdefault("corrected", report.get("completed", 0) + report.get("updated", 0))
    return report


def review_status(store_url: str) -> dict[str, Any]:
    return status_report(Store.open(store_url))
