"""Which labels a round trains on: the rule of the STC loop, as a view of the store.

Round 0 trains on people's labels only (``human`` and ``corrected``). Round k >= 1 adds the
pseudo-labels made by round k-1's model; older pseudo-labels are replaced, not reused (the paper
regenerates every pseudo-label with the newest model, docs/algorithm.md section 4.4). The holdout is
never trained on, and a sample trains on one label: the current one (human > corrected > pseudo).
A face whose latest review is a rejection ("no face", "bad image") is not trained on at all
(:mod:`annotations.store.exclusions`).

The set is recorded when a round's training starts (:meth:`TrainingSet.record`, the round's
``training_set.json``), and a resumed training reads that record back (:func:`recorded_training_set`)
instead of choosing again: corrections pulled between a crash and the rerun must not enter a training
half done. Labels are append-only, so the recorded label ids always resolve.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from annotations.store.errors import StoreError
from annotations.store.exclusions import rejected_samples
from annotations.store.store import Store

__all__ = ["TrainingSet", "recorded_training_set", "training_set"]


@dataclass(frozen=True)
class TrainingSet:
    """The faces of one round's training.

    Attributes:
        sample_ids: M sample ids.
        image_uris: M image files.
        landmarks: (M, N, 2) float32 landmarks, image pixels; NaN = missing.
        levels: M curriculum levels (``std`` for people's labels; the pseudo-label's level otherwise).
        sources: M label sources (``human``, ``corrected``, ``pseudo``).
        label_ids: M label ids: the label each face trains on.
    """

    sample_ids: list[str]
    image_uris: list[str]
    landmarks: np.ndarray
    levels: list[str]
    sources: list[str]
    label_ids: list[str]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def counts(self) -> dict[str, int]:
        """Faces per level."""
        return {str(k): int(v) for k, v in sorted(Counter(self.levels).items())}

    def take(self, rows: Any) -> TrainingSet:
        """The faces at ``rows`` (positions), in that order."""
        pick = [int(i) for i in np.asarray(rows).ravel()]
        return TrainingSet(
            sample_ids=[self.sample_ids[i] for i in pick],
            image_uris=[self.image_uris[i] for i in pick],
            landmarks=self.landmarks[pick],
            levels=[self.levels[i] for i in pick],
            sources=[self.sources[i] for i in pick],
            label_ids=[self.label_ids[i] for i in pick],
        )

    def record(self) -> dict[str, Any]:
        """Plain data to write as the round's training_set.json (read back by :func:`recorded_training_set`)."""
        return {
            "faces": len(self),
            "levels": self.counts(),
            "sample_ids": self.sample_ids,
            "label_ids": self.label_ids,
            "face_levels": self.levels,
        }


def training_set(store: Store, k: int) -> TrainingSet:
    """The labels round ``k`` trains on (never holdout); see the module docstring for the rule."""
    view = store.current_labels(splits=("train", "pool"), for_training=True)
    frame = view.frame.reset_index(drop=True)
    source = frame["source"].to_numpy()
    if k == 0:
        keep = np.isin(source, ["human", "corrected"])
    else:
        keep = (source != "pseudo") | (frame["round"].to_numpy() == k - 1)
    keep &= ~frame["sample_id"].isin(rejected_samples(store)).to_numpy()
    frame = frame[keep].reset_index(drop=True)
    landmarks = view.landmarks[keep]
    # Pseudo-labels come in the order their shards finished (parallel labeling), and the order of a training
    # set is the order its batches are drawn in: sorted by sample id after people's labels (kept in the order
    # they were written), the same store trains the same weights however its shards raced.
    order = _deterministic_order(frame["source"].to_numpy(), frame["sample_id"].to_numpy())
    frame = frame.iloc[order].reset_index(drop=True)
    landmarks = landmarks[order]
    levels = np.where(frame["source"].to_numpy() == "pseudo", frame["level"].fillna("std").to_numpy(), "std")
    uris = store.samples().set_index("sample_id").loc[frame["sample_id"], "image_uri"]
    return TrainingSet(
        sample_ids=[str(s) for s in frame["sample_id"]],
        image_uris=[str(u) for u in uris],
        landmarks=landmarks,
        levels=[str(v) for v in levels],
        sources=[str(s) for s in frame["source"]],
        label_ids=[str(s) for s in frame["label_id"]],
    )


def _deterministic_order(sources: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Rows in training order: people's labels as stored, then the pseudo-labels by sample id."""
    pseudo = sources == "pseudo"
    key = np.arange(len(sources))
    ids = sample_ids[pseudo].astype(str)
    key[pseudo] = len(sources) + np.argsort(np.argsort(ids, kind="stable"), kind="stable")
    return np.argsort(key, kind="stable")


def recorded_training_set(store: Store, record: dict[str, Any], where: str = "training_set.json") -> TrainingSet:
    """The training set a round recorded when its training started (:meth:`TrainingSet.record`).

    Raises:
        StoreError: the record lacks its label ids or names labels the store does not have.
    """
    ids = record.get("label_ids")
    levels = record.get("face_levels")
    if not isinstance(ids, list) or not isinstance(levels, list) or len(ids) != len(levels):
        raise StoreError(f"{where}: no label ids and levels recorded; delete it to choose the training set anew")
    view = store.labels()
    pos = pd.Index(view.frame["label_id"]).get_indexer(ids)
    if (pos < 0).any():
        missing = [ids[i] for i in np.flatnonzero(pos < 0)[:3]]
        raise StoreError(f"{where}: names labels the store does not have ({missing}); delete it to choose anew")
    chosen = view.take(pos)
    uris = store.samples().set_index("sample_id").loc[chosen.frame["sample_id"], "image_uri"]
    return TrainingSet(
        sample_ids=[str(s) for s in chosen.frame["sample_id"]],
        image_uris=[str(u) for u in uris],
        landmarks=chosen.landmarks,
        levels=[str(v) for v in levels],
        sources=[str(s) for s in chosen.frame["source"]],
        label_ids=[str(s) for s in ids],
    )
