"""A store of pseudo-labelled pool faces for review tests, and what a reviewer's answers write into it.

No images are read by the functions under test here, so the image URIs are names only. The
reviewer's answers are written as a pull writes them (annotations/review/pull.py): review events
with the task's round, and a ``corrected`` label whose parent is the pseudo-label shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from annotations.store import Store
from pipnet_core.schemes import get_scheme

SCHEME = get_scheme("300w")
N = SCHEME.num_landmarks


def pool_ids(n: int) -> list[str]:
    return [f"p{i:04d}" for i in range(n)]


def make_pool_store(tmp_path: Path, n: int = 50, holdout: int = 3, train: int = 3) -> Store:
    """``n`` pool faces (``p0000``...), ``holdout`` holdout and ``train`` human-labeled train faces."""
    store = Store.create(tmp_path / "store", SCHEME)
    rows = []
    for prefix, count, split in (("p", n, "pool"), ("h", holdout, "holdout"), ("t", train, "train")):
        for i in range(count):
            rows.append({"sample_id": f"{prefix}{i:04d}", "image_uri": f"img/{prefix}{i}.png", "width": 200,
                         "height": 200, "box": [20.0, 20.0, 180.0, 180.0], "split": split,
                         "dataset": "unit"})  # fmt: skip
    store.add_samples(pd.DataFrame(rows))
    if train:
        ids = [f"t{i:04d}" for i in range(train)]
        store.add_labels(pd.DataFrame({"sample_id": ids, "source": "human", "round": 0}), face_landmarks(train, 9))
    return store


def face_landmarks(count: int, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """(count, N, 2) the 300W mean face placed in a 200 px image, with ``noise`` px of jitter."""
    rng = np.random.default_rng(seed)
    base = 40.0 + 120.0 * SCHEME.meanface_array
    return (base[None] + rng.normal(0.0, noise, size=(count, N, 2))).astype(np.float32)


def add_pseudo(store: Store, k: int, ids: Sequence[str], predicted_nme: np.ndarray, landmarks: np.ndarray | None = None,
               ) -> None:  # fmt: skip
    """Round-k pseudo-labels of ``ids`` with the given predicted NME (higher: the model is less sure)."""
    lm = face_landmarks(len(ids), seed=k) if landmarks is None else landmarks
    pred = np.asarray(predicted_nme, dtype=np.float32)
    store.add_labels(
        pd.DataFrame({"sample_id": list(ids), "source": "pseudo", "round": k, "predicted_nme": pred,
                      "face_confidence": (1.0 - pred).astype(np.float32), "level": "std",
                      "model_version": f"round-{k}"}),
        lm,
        landmark_confidence=np.clip(1.0 - np.repeat(pred[:, None], N, axis=1), 0, 1).astype(np.float32),
    )  # fmt: skip


def events(store: Store, ids: Sequence[str], k: int, status: str, offset_s: float = 0.0) -> None:
    """Review events of round k's tasks (``pushed``, ``completed``, ``skipped``, ``rejected``)."""
    if not ids:
        return
    when = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=offset_s)
    store.add_reviews(pd.DataFrame({"sample_id": list(ids), "round": k, "status": status, "project_id": 1,
                                    "task_id": range(1000 * (k + 1), 1000 * (k + 1) + len(ids)),
                                    "updated_at": when}))  # fmt: skip


def correct(store: Store, ids: Sequence[str], k: int, truth: np.ndarray) -> None:
    """People's corrections of round k's pseudo-labels of ``ids`` (landmarks ``truth``), with their events."""
    pseudo = store.pseudo_labels(k).frame.set_index("sample_id")
    store.add_labels(
        pd.DataFrame({"sample_id": list(ids), "source": "corrected", "round": k, "annotator": "unit",
                      "parent_label_id": pseudo.loc[list(ids), "label_id"].astype(str).to_numpy()}),
        np.asarray(truth, dtype=np.float32),
    )  # fmt: skip
    events(store, ids, k, "completed", offset_s=1.0)
