"""The faces of a round that people should see: the store side of :func:`~.selection.select_for_review`.

The budget is a share of the whole pool, so it does not shrink as people correct faces. Faces
already in review, labeled by people or corrected are never picked again; holdout faces never.
"""

from __future__ import annotations

from annotations.review.selection import pose_descriptor, select_for_review
from annotations.store.store import Store

__all__ = ["review_budget", "round_candidates"]


def review_budget(store: Store, share: float) -> int:
    """Faces per round for a budget of ``share`` of the pool (at least one)."""
    return max(1, int(round(share * len(store.samples(split="pool")))))


def round_candidates(store: Store, k: int, share: float) -> list[str]:
    """Sample ids of round k's pseudo-labels to send to review, in pick order, within the budget."""
    view = store.pseudo_labels(k)
    if len(view) == 0:
        return []
    frame = view.frame.reset_index(drop=True).copy()
    pose = pose_descriptor(view.landmarks, store.scheme)
    frame["yaw"], frame["pitch"] = pose[:, 0], pose[:, 1]
    frame["split"] = store.samples().set_index("sample_id").loc[frame["sample_id"], "split"].to_numpy()
    exclude = set(store.in_review()["sample_id"])
    exclude |= set(store.labels(source="human").frame["sample_id"])
    exclude |= set(store.labels(source="corrected").frame["sample_id"])
    return select_for_review(frame, budget=review_budget(store, share), exclude=exclude)
