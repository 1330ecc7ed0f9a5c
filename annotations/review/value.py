"""What review buys: pool-label quality against the number of human corrections, per ordering of the pool.

A data team's question is not "how good is the model" but "how many of my pool's labels are right,
and how many corrections does it take to get to 95 %?". Given each pool face's real error (the
pseudo-label against the truth, known in simulations and benchmarks) and an order in which people
would correct faces, the curve is the share of the pool whose label is within the NME threshold after
the first n faces of that order were corrected (a corrected face counts as within: a person's label
is the reference). Orders compared: pipstc's selection (least sure first, spread over poses), random
(the unbiased audit a team could do without a model) and worst first (the oracle bound: it needs
exactly the number of faces over the threshold). No training is involved: it is a sort of one round's
predictions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from annotations.review.selection import pose_descriptor, select_for_review
from pipnet_core.schemes import Scheme

__all__ = ["corrections_curve", "corrections_to_reach", "review_orders"]


def corrections_curve(errors: np.ndarray, order: np.ndarray, threshold: float = 0.08) -> np.ndarray:
    """(M + 1,) share of the pool within ``threshold`` after correcting the first n faces of ``order``.

    Args:
        errors: (M,) real per-face NME of the current labels; NaN counts as over the threshold.
        order: A permutation of ``range(M)`` (faces not in it are never corrected).
        threshold: The NME under which a label is good enough (0.08: under FR@0.1's failure line).
    """
    errors = np.asarray(errors, dtype=np.float64)
    m = len(errors)
    good = np.isfinite(errors) & (errors <= threshold)
    order = np.asarray(order, dtype=np.int64)
    gained = np.concatenate([[0], np.cumsum(~good[order])])  # each correction of a bad face adds one
    curve = (good.sum() + gained) / max(m, 1)
    if len(order) < m:
        curve = np.concatenate([curve, np.full(m - len(order), curve[-1])])
    return curve


def corrections_to_reach(curve: np.ndarray, target: float = 0.95) -> int | None:
    """The fewest corrections at which ``curve`` reaches ``target`` (None: never)."""
    hit = np.flatnonzero(np.asarray(curve) >= target - 1e-12)
    return int(hit[0]) if len(hit) else None


def review_orders(
    frame: pd.DataFrame,
    landmarks: np.ndarray,
    errors: np.ndarray,
    scheme: Scheme,
    seed: int = 0,
    batch_share: float = 0.05,
) -> dict[str, np.ndarray]:
    """Row orders of the pool faces in ``frame`` for each strategy.

    Args:
        frame: One row per pool face with ``sample_id`` and ``predicted_nme`` (or ``face_confidence``).
        landmarks: (M, N, 2) the faces' pseudo-labels, pixels (for the pose spread).
        errors: (M,) real per-face NME (used by the oracle order only).
        scheme: The landmark scheme (its flip table gives the pose descriptor).
        seed: Seed of the random order.
        batch_share: pipstc's order is a sequence of review batches of this share of the pool, each
            picked by :func:`select_for_review` among the faces not yet picked (as successive rounds'
            budgets would pick them at this model).

    Returns:
        ``{"pipstc": ..., "random": ..., "worst first": ...}``, each a permutation of ``range(M)``.
    """
    cand = frame.reset_index(drop=True).copy()
    cand["split"] = "pool"
    pose = pose_descriptor(landmarks, scheme)
    cand["yaw"], cand["pitch"] = pose[:, 0], pose[:, 1]
    m = len(cand)
    batch = max(1, int(round(batch_share * m)))
    picked: list[str] = []
    while len(picked) < m:
        more = select_for_review(cand, budget=batch, exclude=picked)
        if not more:
            break
        picked += more
    row = {sid: i for i, sid in enumerate(cand["sample_id"])}
    pipstc = np.array([row[s] for s in picked], dtype=np.int64)
    rest = np.setdiff1d(np.arange(m), pipstc)  # faces the selection never ranks (none, normally)
    worst = np.argsort(-np.nan_to_num(np.asarray(errors, dtype=np.float64), nan=np.inf), kind="stable")
    return {
        "pipstc": np.concatenate([pipstc, rest]),
        "random": np.random.default_rng(seed).permutation(m),
        "worst first": worst,
    }
