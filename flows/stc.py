"""Prefect flows of pipstc: one STC round, the whole STC schedule, pool labeling, review sync, ingest.

A round (DESIGN.md section 6): sync reviews -> train -> evaluate on the holdout -> pseudo-label the
pool -> select and push reviews -> report. Every step is recorded in the store when it completes;
rerunning a round that died skips the completed steps and resumes after the last one.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from annotations.store import Store
from flows import steps
from flows.config import STCConfig

__all__ = ["ingest", "label_pool", "next_round", "stc", "stc_next_round", "stc_round", "sync_reviews"]


def _run_step(store_url: str, k: int, name: str, fn: Any, *args: Any) -> Any:
    """Run ``fn`` unless the store marks step ``name`` of round k complete; then mark it."""
    store = Store.open(store_url)
    done = store.completed_steps(k)
    if name in done:
        get_run_logger().info("round %d: step %s already complete, skipped", k, name)
        return done[name]
    result = fn(*args)
    store.mark_step(k, name, result if isinstance(result, dict) else {"result": result})
    return result


def resolve_config(store_url: str, k: int, config: dict[str, Any] | None) -> STCConfig:
    """The round's config: the one saved when the round started (so a rerun resumes identically), else given."""
    store = Store.open(store_url)
    saved = store.read_round_json(k, "config.json", default=None)
    if saved is not None:
        return STCConfig.from_dict(saved)
    cfg = STCConfig.from_dict(config) if config else STCConfig()
    store.write_round_json(k, "config.json", cfg.to_dict())
    return cfg


# ----------------------------------------------------------------------------- tasks


@task(name="sync-reviews", retries=2, retry_delay_seconds=[5, 30])
def sync_reviews_task(store_url: str, k: int) -> dict[str, Any]:
    from flows.review_steps import pull_corrections

    return _run_step(store_url, k, "sync_reviews", pull_corrections, store_url)


@task(name="train")
def train_task(store_url: str, k: int, cfg_json: str) -> str:
    cfg = STCConfig.from_dict(json.loads(cfg_json))
    done = _run_step(store_url, k, "train", lambda: {"checkpoint": steps.train_round(store_url, k, cfg)})
    return str(done["checkpoint"])


@task(name="evaluate")
def evaluate_task(store_url: str, k: int, cfg_json: str) -> dict[str, Any]:
    cfg = STCConfig.from_dict(json.loads(cfg_json))
    return _run_step(store_url, k, "evaluate", steps.evaluate_round, store_url, k, cfg)


@task(name="plan-shards")
def plan_shards_task(store_url: str, k: int, shard_size: int) -> list[str]:
    return steps.plan_pool_shards(store_url, k, shard_size)


@task(name="label-shard", retries=1, retry_delay_seconds=5)
def label_shard_task(store_url: str, k: int, shard: str, cfg_json: str) -> dict[str, int]:
    return steps.label_shard(store_url, k, shard, cfg_json)


@task(name="push-reviews", retries=3, retry_delay_seconds=[2, 10, 30])
def push_reviews_task(store_url: str, k: int, cfg_json: str) -> dict[str, Any]:
    from flows.review_steps import push_round

    cfg = STCConfig.from_dict(json.loads(cfg_json))
    return _run_step(store_url, k, "review", push_round, store_url, k, cfg)


@task(name="report")
def report_task(store_url: str, k: int) -> str:
    from flows.report import metrics_rows, write_report

    text = write_report(store_url, k)
    rows = metrics_rows(Store.open(store_url))
    if rows:
        create_table_artifact(key="stc-metrics", table=rows, description=f"holdout metrics up to round {k}")
    create_markdown_artifact(key="stc-report", markdown=text, description=f"STC report, round {k}")
    return text


# ----------------------------------------------------------------------------- flows


def _task_runner(cfg: STCConfig) -> Any:
    if cfg.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=cfg.dask_address)
    return ThreadPoolTaskRunner(max_workers=cfg.max_workers)


@flow(name="label-pool")
def label_pool(store: str, round: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pseudo-label the unlabeled pool with round ``round``'s model, shard by shard (paths, not arrays)."""
    cfg = STCConfig.from_dict(config) if config else resolve_config(store, round, None)
    cfg_json = cfg.to_json()
    shards = plan_shards_task(store, round, cfg.shard_size)
    progress = create_progress_artifact(progress=0.0, description=f"pool labeling, round {round}")
    futures = label_shard_task.map(unmapped(store), unmapped(round), shards, unmapped(cfg_json))
    done, labeled, failed = 0, 0, 0
    for fut in futures:
        res = fut.result()
        done += 1
        labeled, failed = labeled + res["labeled"], failed + res["failed"]
        update_progress_artifact(artifact_id=progress, progress=100.0 * done / max(len(shards), 1))
    wait(futures)
    levels = Store.open(store).pseudo_labels(round).frame["level"].value_counts()
    return {
        "shards": len(shards),
        "labeled": labeled,
        "failed": failed,
        "levels": {str(k): int(v) for k, v in levels.items()},
    }


def _label_pool_step(store: str, round: int, cfg: STCConfig) -> dict[str, Any]:
    sub = label_pool.with_options(task_runner=_task_runner(cfg))
    return sub(store, round, cfg.to_dict())


@flow(name="stc-round", log_prints=True)
def stc_round(store: str, round: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One STC round on ``store``: sync reviews, train, evaluate, pseudo-label, push reviews, report."""
    cfg = resolve_config(store, round, config)
    cfg_json = cfg.to_json()
    sync = sync_reviews_task(store, round)
    train_task(store, round, cfg_json)
    metrics = evaluate_task(store, round, cfg_json)
    print(f"round {round}: holdout NME {metrics['nme']:.4f}, FR@0.1 {metrics['fr@0.1']:.3f}")
    pool = _run_step(store, round, "label_pool", _label_pool_step, store, round, cfg)
    review = push_reviews_task(store, round, cfg_json)
    report_task(store, round)
    return {"round": round, "metrics": metrics, "pool": pool, "review": review, "sync": sync}


@flow(name="stc", log_prints=True)
def stc(store: str, rounds: int = 5, schedule: str = "paper", config: dict[str, Any] | None = None,
        start_round: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Round 0 (supervised), then ``rounds`` self-training rounds of the chosen schedule."""
    cfg = (STCConfig.from_dict(config) if config else STCConfig()).replace(schedule=schedule)
    return [stc_round(store, k, cfg.to_dict()) for k in range(start_round, rounds + 1)]


ROUND_STEPS = ("sync_reviews", "train", "evaluate", "label_pool", "review")


def next_round(store_url: str) -> int:
    """The first round whose steps are not all complete (resume it), or one past the last round."""
    store = Store.open(store_url)
    for k in store.rounds():
        if not set(ROUND_STEPS) <= set(store.completed_steps(k)):
            return k
    return (max(store.rounds()) + 1) if store.rounds() else 0


@flow(name="stc-next-round", log_prints=True)
def stc_next_round(store: str, schedule: str | None = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scheduled job: resume an unfinished round or run the next one with the last round's config."""
    k = next_round(store)
    s = Store.open(store)
    previous = s.read_round_json(k - 1, "config.json", default=None) if k > 0 else None
    cfg = STCConfig.from_dict(config or previous or config_from_env() or {})
    if schedule:
        cfg = cfg.replace(schedule=schedule)
    print(f"scheduled STC: round {k} on {store}")
    return stc_round(store, k, cfg.to_dict())


@flow(name="sync-reviews")
def sync_reviews(store: str) -> dict[str, Any]:
    """Pull what reviewers finished since the last sync into the store (runs every few minutes)."""
    from flows.review_steps import pull_corrections

    return task(name="pull-corrections", retries=2, retry_delay_seconds=[5, 30])(pull_corrections)(store)


@flow(name="ingest")
def ingest(
    store: str, source: str, format: str, split: str | None = None, dataset: str | None = None
) -> dict[str, int]:
    """Import labeled faces (``format`` = pts | wflw | coco | csv | labelstudio) or an image folder (``pool``)."""
    from flows.ingest_steps import ingest_source

    return task(name="import", retries=1)(ingest_source)(store, source, format, split=split, dataset=dataset)


def config_from_env() -> dict[str, Any] | None:
    """Config overrides as JSON in PIPSTC_CONFIG (used by deployments)."""
    raw = os.environ.get("PIPSTC_CONFIG")
    return json.loads(raw) if raw else None
