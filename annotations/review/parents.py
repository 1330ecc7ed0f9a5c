"""The pseudo-label a reviewer's correction started from (its parent).

The parent of a correction (``parent_label_id``, the landmarks ``moved`` is measured against, the
label's ``round`` and ``model_version``) is the pseudo-label the reviewer started from. That is the
task's ``data.label_id`` (the pseudo-label first pushed, also named by the review events), except on
a task a later push refreshed (:mod:`~annotations.review.refresh`: a second prediction of a newer
round, the one the editor shows after the project's model version changed): there the annotation's
``parent_prediction`` says which prediction the editor started from, its ``model_version`` gives the
round, and the parent is the sample's pseudo-label of that round with that model version. An
annotation without ``parent_prediction`` (made through the API, or drawn from scratch), or whose
prediction cannot be matched to a stored pseudo-label, keeps the pseudo-label first pushed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotations.review.client import LabelStudioClient, ReviewRequestError
from annotations.review.push import SETTING_SHOWN_VERSION
from annotations.review.tasks import newest_per_sample, shown_model_version

__all__ = ["Parent", "RefreshedParents", "shown_parents"]

log = logging.getLogger(__name__)


def shown_parents(store: Any, rounds: set[int]) -> dict[str, tuple[np.ndarray, str | None]]:
    """Pseudo-labels shown in the given rounds: label id -> (landmarks (N, 2), model version)."""
    out: dict[str, tuple[np.ndarray, str | None]] = {}
    for r in sorted(rounds):
        view = store.labels(round=r, source="pseudo")
        ids = view.frame["label_id"].astype(str).to_numpy()
        versions = view.frame["model_version"].to_numpy() if "model_version" in view.frame else [None] * len(ids)
        for i, lid in enumerate(ids):
            out[lid] = (view.landmarks[i], versions[i] if isinstance(versions[i], str) else None)
    return out


@dataclass
class Parent:
    """The pseudo-label a correction started from."""

    label_id: str | None
    landmarks: np.ndarray | None  # (N, 2) pixels; None: not in the store
    model_version: str | None
    round: int


class RefreshedParents:
    """Which pseudo-label the prediction an annotation started from shows, on refreshed tasks.

    A prediction's ``model_version`` is its label's model version (``round-<k>`` without one,
    :func:`~annotations.review.tasks.shown_model_version`); the rounds after the task's own, up to the
    newest round the project was switched to, are searched newest first for the sample's newest
    pseudo-label of that version, as the refresh chose it.
    """

    def __init__(self, store: Any, client: LabelStudioClient) -> None:
        self.store, self.client = store, client
        shown = store.get_setting(SETTING_SHOWN_VERSION)
        self.newest_round = int(shown[0]) if shown else None
        self._versions: dict[int, str | None] = {}
        self._rounds: dict[int, tuple[Any, dict[str, int]]] = {}

    def _version(self, prediction_id: int) -> str | None:
        if prediction_id not in self._versions:
            try:
                self._versions[prediction_id] = self.client.prediction(prediction_id).get("model_version")
            except ReviewRequestError as e:  # deleted since: the annotation keeps the first parent
                log.info("prediction %d of an annotation is gone (%s)", prediction_id, e)
                self._versions[prediction_id] = None
        return self._versions[prediction_id]

    def _round(self, r: int) -> tuple[Any, dict[str, int]]:
        if r not in self._rounds:
            view = self.store.pseudo_labels(r)
            self._rounds[r] = (view, newest_per_sample(view))
        return self._rounds[r]

    def find(self, prediction_id: int, sid: str, task_round: int, first_version: str | None) -> Parent | None:
        """The parent the prediction shows, or None when it is the task's first prediction or unknown."""
        version = self._version(prediction_id)
        if version is None or version == first_version or self.newest_round is None:
            return None
        for r in range(self.newest_round, task_round, -1):
            view, newest = self._round(r)
            i = newest.get(sid)
            if i is None:
                continue
            mv = view.frame["model_version"].iat[i] if "model_version" in view.frame else None
            if shown_model_version(mv, r) == version:
                raw = mv if isinstance(mv, str) else None
                return Parent(str(view.frame["label_id"].iat[i]), view.landmarks[i], raw, r)
        log.warning(
            "sample %s: prediction %d (model version %r) matches no stored pseudo-label of rounds %d-%d; its"
            " correction keeps the pseudo-label first pushed as parent",
            sid, prediction_id, version, task_round + 1, self.newest_round,
        )  # fmt: skip
        return None
