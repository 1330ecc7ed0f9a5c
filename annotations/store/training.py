"""Which labels a round trains on: the rule of the STC loop, as a view of the store.

Round 0 trains on people's labels only (``human`` and ``corrected``). Round k >= 1 adds the
pseudo-labels made by round k-1's model; older pseudo-labels are replaced, not reused (the paper
regenerates every pseudo-label with the newest model, docs/algorithm.md section 4.4). The holdout is
never trained on, and a sample trains on one label: the current one (human > corrected > pseudo).
A face whose latest review is a rejection ("no face", "bad image") is not trained on at all
(:mod:`annotations.store.exclusions`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from annotations.store.exclusions import rejected_samples
from annotations.store.store import Store

__all__ = ["TrainingSet", "training_set"]


@dataclass(frozen=True)
class TrainingSet:
    """The faces of one round's training.

    Attributes:
        sample_ids: M sample ids.
        image_uris: M image files.
        landmarks: (M, N, 2) float32 landmarks, image pixels; NaN = missing.
        levels: M curriculum levels (``std`` for people's labels; the pseudo-label's level otherwise).
        sources: M label sources (``human``, ``corrected``, ``pseudo``).
    """

    sample_ids: list[str]
    image_uris: list[str]
    landmarks: np.ndarray
    levels: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def counts(self) -> dict[str, int]:
        """Faces per level."""
        return {str(k): int(v) for k, v in sorted(Counter(self.levels).items())}


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
    levels = np.where(frame["source"].to_numpy() == "pseudo", frame["level"].fillna("std").to_numpy(), "std")
    uris = store.samples().set_index("sample_id").loc[frame["sample_id"], "image_uri"]
    return TrainingSet(
        sample_ids=[str(s) for s in frame["sample_id"]],
        image_uris=[str(u) for u in uris],
        landmarks=landmarks,
        levels=[str(v) for v in levels],
        sources=[str(s) for s in frame["source"]],
    )
