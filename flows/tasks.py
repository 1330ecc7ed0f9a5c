"""Prefect tasks of pipstc: thin wrappers that add retries, logging and step records to plain functions.

Every step of a round is recorded in the store when it completes (:func:`recorded`), so a round
that died resumes after its last completed step. Tasks take and return small things (a store URL,
a round number, a config as JSON, paths and counts), never arrays or models.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from annotations.store import Store
from annotations.store.shards import plan_pool_shards
from flows import checkpoints, evaluation, labeling, training
from flows.config import STCConfig

__all__ = [
    "calibrate",
    "evaluate",
    "export_model",
    "label_shard",
    "plan_shards",
    "pull_reviews",
    "push_reviews",
    "recorded",
    "train",
    "train_node",
    "write_report",
]


def recorded(store_url: str, k: int, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` unless the store marks step ``name`` of round k complete; then mark it."""
    store = Store.open(store_url)
    done = store.completed_steps(k)
    if name in done:
        get_run_logger().info("round %d: step %s already complete, skipped", k, name)
        return done[name]
    result = fn(*args)
    store.mark_step(k, name, result if isinstance(result, dict) else {"result": result})
    return result


def _cfg(cfg_json: str) -> STCConfig:
    return STCConfig.from_dict(json.loads(cfg_json))


@task(name="pull-reviews", retries=2, retry_delay_seconds=[5, 30])
def pull_reviews(store_url: str, k: int) -> dict[str, Any]:
    from flows.review_steps import pull_corrections

    return recorded(store_url, k, "sync_reviews", pull_corrections, store_url)


@task(name="train")
def train(store_url: str, k: int, cfg_json: str) -> str:
    result = recorded(store_url, k, "train", training.train_round, store_url, k, _cfg(cfg_json))
    if result.get("trained"):
        get_run_logger().info("round %d trained: %s", k, result["trained"])
    return str(result["checkpoint"])


@task(name="train-node")
def train_node(store_url: str, k: int, cfg_json: str, nnodes: int, rdzv_endpoint: str, rdzv_id: str) -> str:
    nodes = training.NodeSet(nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id)
    return str(training.train_round(store_url, k, _cfg(cfg_json), nodes=nodes)["checkpoint"])


@task(name="evaluate")
def evaluate(store_url: str, k: int, cfg_json: str) -> dict[str, Any]:
    return recorded(store_url, k, "evaluate", evaluation.evaluate_round, store_url, k, _cfg(cfg_json))


@task(name="calibrate")
def calibrate(store_url: str, k: int, cfg_json: str) -> dict[str, Any]:
    from flows.calibration import recalibrate_round

    return recorded(store_url, k, "calibrate", recalibrate_round, store_url, k, _cfg(cfg_json))


@task(name="export-model", retries=1, retry_delay_seconds=5)
def export_model(store_url: str, k: int, backend: str) -> str | None:
    """Round k's model exported once to ONNX before the pool shards fan out (they load it)."""
    if backend != "onnx":
        return None
    return checkpoints.export_round_onnx(Store.open(store_url), k)


@task(name="plan-shards")
def plan_shards(store_url: str, k: int, shard_size: int) -> list[str]:
    return plan_pool_shards(Store.open(store_url), k, shard_size)


@task(name="label-shard", retries=1, retry_delay_seconds=5)
def label_shard(store_url: str, k: int, shard: str, cfg_json: str) -> dict[str, int]:
    return labeling.label_shard(store_url, k, shard, cfg_json)


@task(name="push-reviews", retries=3, retry_delay_seconds=[2, 10, 30])
def push_reviews(store_url: str, k: int, cfg_json: str) -> dict[str, Any]:
    from flows.review_steps import push_round

    return recorded(store_url, k, "review", push_round, store_url, k, _cfg(cfg_json))


@task(name="write-report")
def write_report(store_url: str, k: int) -> str:
    from flows.report import metrics_rows
    from flows.report import write_report as write

    text = write(store_url, k)
    rows = metrics_rows(Store.open(store_url))
    if rows:
        create_table_artifact(key="stc-metrics", table=rows, description=f"holdout metrics up to round {k}")
    create_markdown_artifact(key="stc-report", markdown=text, description=f"STC report, round {k}")
    return text
