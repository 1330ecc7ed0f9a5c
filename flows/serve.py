"""``pipstc serve``: one-box scheduling with ``prefect.serve`` (no work pool, no worker, no prefect.yaml).

Serves two deployments from this process: the scheduled STC round (a cron, one run at a time) and
the review sync (every few minutes). Stop with SIGTERM; that pauses the schedules
(docs/orchestration.md section 7).
"""

from __future__ import annotations

from prefect import serve

from flows.stc import review_sync, stc_next_round

__all__ = ["serve_store"]


def serve_store(store: str, cron: str = "0 2 * * *", sync_every: int = 300) -> None:
    rounds = stc_next_round.to_deployment(
        name="scheduled-stc-round", cron=cron, parameters={"store": store}, concurrency_limit=1, tags=["pipstc"]
    )
    sync = review_sync.to_deployment(
        name="review-sync", interval=sync_every, parameters={"store": store}, tags=["pipstc"]
    )
    serve(rounds, sync, limit=2)
