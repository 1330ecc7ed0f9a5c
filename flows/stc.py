"""Prefect flows of pipstc: one STC round, the whole STC schedule, pool labeling, review sync, ingestion.

A round (docs/architecture.md section 3): sync reviews -> train -> evaluate on the holdout -> calibrate the
confidence on reviewed pool faces -> pseudo-label the pool -> select and push reviews -> report.
Every step is recorded in the store when it completes; rerunning a round that died skips the
completed steps and resumes after the last one. Flows are nouns and read as the round's story; the
work is in :mod:`flows.tasks` and the plain functions behind it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from annotations.store import Store
from flows import tasks
from flows.calibration import with_review_thresholds
from flows.config import STCConfig, merge_overrides, round_config
from flows.errors import missing_extra
from flows.preflight import preflight_round

__all__ = [
    "ROUND_STEPS",
    "check_round_configs",
    "ingestion",
    "next_round",
    "pool_labeling",
    "resolve_config",
    "resolve_next_config",
    "review_sync",
    "stc",
    "stc_next_round",
    "stc_round",
    "training_node",
]

ROUND_STEPS = ("sync_reviews", "train", "evaluate", "calibrate", "label_pool", "review")


def resolve_config(
    store_url: str,
    k: int,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    base: STCConfig | None = None,
) -> tuple[STCConfig, str | None]:
    """Round k's config (:func:`flows.config.round_config`), written to its config.json; and a note for the log.

    A new round gets ``base`` (default: the defaults) with ``overrides``; a rerun resumes with the config
    saved when the round started, so it resumes identically. ``overrides`` that change a saved config
    are refused unless ``force``.
    """
    store = Store.open(store_url)
    saved = store.read_round_json(k, "config.json", default=None)
    cfg, note = round_config(k, saved, overrides, base=base, force=force)
    if saved is None:
        cfg = with_review_thresholds(store, k, cfg)  # the thresholds round k - 1 chose from reviewed faces
    if saved is None or cfg.to_dict() != STCConfig.from_dict(saved).to_dict():
        store.write_round_json(k, "config.json", cfg.to_dict())
    elif not store.completed_steps(k):
        note = None  # nothing done yet: nothing is resumed
    return cfg, note


def check_round_configs(store_url: str, rounds: range, overrides: dict[str, Any] | None, force: bool = False) -> None:
    """Refuse, before any flow starts, reruns of ``rounds`` whose explicit ``overrides`` change their saved config.

    Raises:
        ConfigConflict: see :func:`flows.config.round_config`.
    """
    store = Store.open(store_url)
    for k in rounds:
        saved = store.read_round_json(k, "config.json", default=None)
        if saved is not None:
            round_config(k, saved, overrides, force=force)


def next_round(store_url: str) -> int:
    """The first round whose steps are not all complete (resume it), or one past the last round."""
    store = Store.open(store_url)
    for k in store.rounds():
        if not set(ROUND_STEPS) <= set(store.completed_steps(k)):
            return k
    return (max(store.rounds()) + 1) if store.rounds() else 0


def _task_runner(cfg: STCConfig) -> Any:
    if cfg.dask_address:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            feature = f"dask_address {cfg.dask_address}: pool labeling on Dask"
            raise missing_extra(feature, "prefect-dask", "dask") from None

        return DaskTaskRunner(address=cfg.dask_address)
    return ThreadPoolTaskRunner(max_workers=cfg.max_workers)


def _pool_summary(store_url: str, k: int, shards: int, results: list[dict[str, int]]) -> dict[str, Any]:
    levels = Store.open(store_url).pseudo_labels(k).frame["level"].value_counts()
    return {
        "shards": shards,
        "labeled": sum(r["labeled"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "levels": {str(lv): int(n) for lv, n in levels.items()},
    }


@flow(name="pool-labeling")
def pool_labeling(store: str, round: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pseudo-labels of the unlabeled pool by round ``round``'s model, shard by shard (paths, not arrays)."""
    cfg = STCConfig.from_dict(config) if config else resolve_config(store, round)[0]
    tasks.export_model(store, round, cfg.backend)  # once, before the fan-out: shards load the file
    shards = tasks.plan_shards(store, round, cfg.shard_size)
    progress = create_progress_artifact(progress=0.0, description=f"pool labeling, round {round}")
    futures = tasks.label_shard.map(unmapped(store), unmapped(round), shards, unmapped(cfg.to_json()))
    results = []
    for fut in futures:
        results.append(fut.result())
        update_progress_artifact(artifact_id=progress, progress=100.0 * len(results) / max(len(shards), 1))
    wait(futures)
    return _pool_summary(store, round, len(shards), results)


def _label_pool(store: str, round: int, cfg: STCConfig) -> dict[str, Any]:
    return pool_labeling.with_options(task_runner=_task_runner(cfg))(store, round, cfg.to_dict())


@flow(name="stc-round", log_prints=True)
def stc_round(
    store: str, round: int, config: dict[str, Any] | None = None, force_config: bool = False
) -> dict[str, Any]:
    """One STC round on ``store``: sync reviews, train, evaluate, calibrate, pseudo-label, push reviews, report.

    ``config`` holds overrides of the defaults (a new round) or of the config the round was started
    with (a rerun: a differing value is refused unless ``force_config``).
    """
    preflight_round(store, round, config)  # every precondition, in seconds, before a step writes anything
    cfg, note = resolve_config(store, round, config, force=force_config)
    if note:
        print(note)
    cfg_json = cfg.to_json()
    sync = tasks.pull_reviews(store, round)
    tasks.train(store, round, cfg_json)
    metrics = tasks.evaluate(store, round, cfg_json)
    print(f"round {round}: holdout NME {metrics['nme']:.4f}, FR@0.1 {metrics['fr@0.1']:.3f}")
    tasks.calibrate(store, round, cfg_json)
    pool = tasks.recorded(store, round, "label_pool", _label_pool, store, round, cfg)
    review = tasks.push_reviews(store, round, cfg_json)
    print(review.get("message", f"round {round}: review step done"))
    tasks.write_report(store, round)
    return {"round": round, "metrics": metrics, "pool": pool, "review": review, "sync": sync}


@flow(name="stc", log_prints=True)
def stc(store: str, rounds: int | None = None, schedule: str | None = None, config: dict[str, Any] | None = None,
        start_round: int = 0, force_config: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Round 0 (supervised), then ``rounds`` self-training rounds (None: the schedule's own number).

    The schedule is ``schedule`` when given, else the one in ``config``, else the default (``confidence``).
    """
    overrides = merge_overrides(config, {"schedule": schedule} if schedule else None)
    last = STCConfig().with_overrides(overrides).policy().rounds if rounds is None else rounds
    return [stc_round(store, k, overrides, force_config) for k in range(start_round, last + 1)]


@flow(name="stc-next-round", log_prints=True)
def stc_next_round(
    store: str, schedule: str | None = None, config: dict[str, Any] | None = None, force_config: bool = False
) -> dict[str, Any]:
    """The scheduled job: resume an unfinished round, or run the next one with the last round's config.

    ``config`` (and PIPSTC_CONFIG, below it) override that config; they do not replace it.
    """
    k = next_round(store)
    overrides = merge_overrides(config_from_env(), config, {"schedule": schedule} if schedule else None)
    resolve_next_config(store, k, overrides, force=force_config)
    print(f"scheduled STC: round {k} on {store}")
    return stc_round(store, k, overrides, force_config)


def resolve_next_config(
    store_url: str, k: int, overrides: dict[str, Any] | None, force: bool = False
) -> tuple[STCConfig, str | None]:
    """:func:`resolve_config` for the scheduled job: a new round starts from round k-1's config, not the defaults."""
    previous = Store.open(store_url).read_round_json(k - 1, "config.json", default=None) if k > 0 else None
    base = STCConfig.from_dict(previous) if previous else None
    return resolve_config(store_url, k, overrides, force=force, base=base)


@flow(name="training-node", log_prints=True)
def training_node(
    store: str, round: int, nnodes: int, rdzv_endpoint: str, rdzv_id: str, config: dict[str, Any] | None = None
) -> str:
    """This machine's share of round ``round``'s training across ``nnodes`` machines (docs/training.md).

    Start one run per machine with the same rendezvous; the machine that gets global rank 0 writes
    the checkpoint into the (shared) store. The round's own train step then finds it finished.
    """
    cfg, _ = resolve_config(store, round, config)
    print(f"round {round}: training on {nnodes} machines, rendezvous {rdzv_id} at {rdzv_endpoint}")
    return tasks.train_node(store, round, cfg.to_json(), nnodes, rdzv_endpoint, rdzv_id)


@flow(name="review-sync")
def review_sync(store: str, full_every: int = 12) -> dict[str, Any]:
    """What reviewers finished since the last sync, pulled into the store (runs every few minutes), and one
    ``pipstc.review.correction`` event per new correction (prefect.yaml's trigger starts a round on them).

    Every ``full_every``-th sync is a full one (every task compared with the store: annotations and
    tasks deleted in Label Studio are found and their corrections retracted); 12 at the default
    five-minute interval is once an hour. Faces an outage held back from a push are sent too.
    """
    from flows.review_steps import pull_corrections

    pull = task(name="pull-corrections", retries=2, retry_delay_seconds=[5, 30])(pull_corrections)
    return pull(store, announce=True, full_every=full_every)


@flow(name="ingestion")
def ingestion(
    store: str, source: str, format: str, split: str | None = None, dataset: str | None = None
) -> dict[str, int]:
    """Labeled faces (``format`` = pts | wflw | coco | csv | labelstudio) or an image folder (``pool``) imported."""
    from flows.ingest_steps import ingest_source

    return task(name="import", retries=1)(ingest_source)(store, source, format, split=split, dataset=dataset)


def config_from_env() -> dict[str, Any] | None:
    """Config overrides as JSON in PIPSTC_CONFIG (used by deployments)."""
    raw = os.environ.get("PIPSTC_CONFIG")
    return json.loads(raw) if raw else None
