"""``pipstc serve``: one-box scheduling with ``prefect.serve`` (no work pool, no worker, no prefect.yaml).

Serves two deployments from this process: the scheduled STC round (a cron, one run at a time) and
the review sync (every few minutes). Like prefect.yaml's, the round also has an event trigger: the
review sync emits one ``pipstc.review.correction`` event per correction it pulls, and ``corrections``
of them within ``within_s`` seconds start the next round before the cron does. Stop with SIGTERM;
that pauses the schedules (docs/orchestration.md section 7).
"""

from __future__ import annotations

from prefect import serve
from prefect.events import DeploymentEventTrigger

from annotations.store import Store
from flows.review_steps import CORRECTION_EVENT, store_resource
from flows.stc import review_sync, stc_next_round

__all__ = ["correction_trigger", "serve_store"]


def correction_trigger(store: str, corrections: int, within_s: int = 86400) -> DeploymentEventTrigger:
    """The trigger that starts a round once ``corrections`` corrections of ``store`` arrived within ``within_s``."""
    resource = store_resource(Store.open(store))["prefect.resource.id"]
    return DeploymentEventTrigger(
        name=f"next round after {corrections} corrections",
        match={"prefect.resource.id": resource},
        expect={CORRECTION_EVENT},
        posture="Reactive",
        threshold=corrections,
        within=within_s,
    )


def serve_store(store: str, cron: str = "0 2 * * *", sync_every: int = 300, corrections: int | None = 20) -> None:
    """Serve the scheduled round (cron, and ``corrections`` new corrections within a day; None: cron only)."""
    triggers = [correction_trigger(store, corrections)] if corrections else None
    rounds = stc_next_round.to_deployment(
        name="scheduled-stc-round", cron=cron, parameters={"store": store}, concurrency_limit=1, tags=["pipstc"],
        triggers=triggers,
    )  # fmt: skip
    sync = review_sync.to_deployment(
        name="review-sync", interval=sync_every, parameters={"store": store}, tags=["pipstc"]
    )
    serve(rounds, sync, limit=2)
