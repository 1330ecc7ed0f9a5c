"""Faces that have left the pool because of what a reviewer said, and skipped faces waiting to come back.

A reviewer who answers "no face" or "bad image" (``rejected``, annotations/review/config.py
REJECT_CHOICES) takes the face out of the pool for good: it is no longer pseudo-labeled
(:func:`annotations.store.shards.plan_pool_shards`), trained on
(:func:`annotations.store.training.training_set`) or selected for review
(:mod:`annotations.review.candidates`). A later answer wins: a face rejected and then corrected after all
(completed -> rejected -> completed) is back.

A skipped face (the reviewer pressed "skip") is not refused forever: people skip what they cannot
judge right now, and a newer model may show it better. It may be selected again ``reselect_after``
rounds after the round it was pushed in, and then counts in that later round's budget like any other
face.

Every rule here reads one thing: each sample's latest review status, from :func:`latest_review_status`.
"""

from __future__ import annotations

import pandas as pd

from annotations.store.store import Store

__all__ = ["latest_review_status", "rejected_samples", "skipped_samples", "waiting_skipped"]


def latest_review_status(store: Store) -> pd.DataFrame:
    """Each reviewed sample's latest review state: columns ``sample_id``, ``status``, ``round``.

    The one place that decides what a sample's review state is; everything that excludes or
    re-admits faces asks this.
    """
    latest = store.reviews(latest=True)
    if latest.empty:
        return pd.DataFrame({"sample_id": pd.Series(dtype=str), "status": pd.Series(dtype=str),
                             "round": pd.Series(dtype="int64")})  # fmt: skip
    out = latest[["sample_id", "status", "round"]].copy()
    out["round"] = out["round"].astype("int64")
    return out.reset_index(drop=True)


def rejected_samples(store: Store) -> set[str]:
    """Samples whose latest review says "no face" or "bad image": out of the pool for good."""
    latest = latest_review_status(store)
    return set(latest.loc[latest["status"] == "rejected", "sample_id"].astype(str))


def skipped_samples(store: Store) -> pd.DataFrame:
    """Samples whose latest review is a skip, with the round they were pushed in (``sample_id``, ``round``)."""
    latest = latest_review_status(store)
    return latest.loc[latest["status"] == "skipped", ["sample_id", "round"]].reset_index(drop=True)


def waiting_skipped(store: Store, k: int, reselect_after: int | None) -> set[str]:
    """Skipped samples that may not be selected in round ``k`` yet.

    Args:
        store: The label store.
        k: The round selecting faces.
        reselect_after: Rounds after the round a face was pushed in before it may be selected again
            (1: the next round); None: never again.
    """
    skipped = skipped_samples(store)
    if reselect_after is None:
        return set(skipped["sample_id"].astype(str))
    waiting = skipped["round"].to_numpy() + int(reselect_after) > int(k)
    return set(skipped.loc[waiting, "sample_id"].astype(str))
