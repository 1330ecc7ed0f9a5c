"""Pool shards of a round: the unlabeled pool cut into lists of sample ids, planned once per round.

The plan is written into the round folder (``rounds/round=k/shards/``) the first time it is asked
for, so a rerun labels the same shards; each shard records its result beside it when done. Faces a
reviewer rejected ("no face", "bad image") have left the pool and are not planned
(:mod:`annotations.store.exclusions`).
"""

from __future__ import annotations

from typing import Any

from annotations.store.exclusions import rejected_samples
from annotations.store.store import Store

__all__ = ["plan_pool_shards", "shard_done", "mark_shard_done"]


def plan_pool_shards(store: Store, k: int, shard_size: int) -> list[str]:
    """Round-relative paths of the shard files of round k (written on the first call)."""
    existing = store.read_round_json(k, "shards/plan.json", default=None)
    if existing is None:
        rejected = rejected_samples(store)
        ids = sorted(s for s in store.pool_unlabeled()["sample_id"].tolist() if s not in rejected)
        shards = [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]
        for i, shard in enumerate(shards):
            store.write_round_json(k, f"shards/shard-{i:05d}.json", shard)
        existing = {"shards": [f"shards/shard-{i:05d}.json" for i in range(len(shards))], "faces": len(ids)}
        store.write_round_json(k, "shards/plan.json", existing)
    return list(existing["shards"])


def shard_done(store: Store, k: int, shard: str) -> dict[str, Any] | None:
    """The recorded result of a labeled shard, or None when it still has to be labeled."""
    return store.read_round_json(k, shard.replace(".json", ".done.json"), default=None)


def mark_shard_done(store: Store, k: int, shard: str, result: dict[str, Any]) -> None:
    store.write_round_json(k, shard.replace(".json", ".done.json"), result)
