"""Review tasks: which faces may go to people, and the Label Studio task JSON of each.

A task (docs/review.md section 5.1) carries in ``data`` the image URL and pipstc's own ids (``sample_id``,
``round``, ``label_id`` of the pseudo-label shown; never keys named ``id``, ``annotator`` or the control
name, which collide in JSON_MIN exports), plus the face's scores so reviewers can sort by them in the
Data Manager and the ``doubts`` line the editor shows above the image: the
:data:`DOUBTS_SHOWN` landmarks the model is least sure of, by name, with their scores. Its prediction
is the pseudo-label (``model_version`` = the round's model, ``score`` = face confidence, per-landmark
``score`` = landmark confidence, shown beside each point), labelled with the project's own labels
(the scheme's names, or ``lm_XX`` in a project made before them). A task still open when a later round
is pushed gets that round's pseudo-label as a second prediction (:func:`refresh_items`,
:mod:`~annotations.review.refresh`), built and validated the same way. Predictions are validated with the
SDK's offline ``LabelInterface`` before they leave, because the server accepts anything and only the
editor breaks on a bad one (docs/review.md section 3.3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotations.review.client import ReviewConfigError
from annotations.review.config import DOUBTS_NAME, IMAGE_NAME
from annotations.review.convert import prediction
from annotations.review.project import ImageAccess, image_location
from annotations.store.views import LabelView
from pipnet_core.schemes import Scheme

__all__ = [
    "DOUBTS_SHOWN",
    "ReviewItem",
    "Selection",
    "build_prediction",
    "build_task",
    "collect_items",
    "doubts_text",
    "newest_per_sample",
    "refresh_items",
    "resolve_labels",
    "shown_model_version",
    "validate_tasks",
]


# Landmarks named on a task as the model's least sure: enough to guide the eye, few enough to read.
DOUBTS_SHOWN = 5


@dataclass
class ReviewItem:
    """One face ready to become a task.

    Attributes:
        landmarks: (N, 2) image pixels of the pseudo-label shown.
        landmark_confidence: (N,) in [0, 1], or None.
    """

    sample_id: str
    round: int
    label_id: str
    image: str
    width: int
    height: int
    landmarks: np.ndarray
    landmark_confidence: np.ndarray | None
    face_confidence: float | None
    predicted_nme: float | None
    model_version: str
    storage_dir: Path | None = None


@dataclass
class Selection:
    """Faces that can be pushed, and those refused with the reason (sample id -> reason)."""

    items: list[ReviewItem] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def _opt_float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def newest_per_sample(view: LabelView) -> dict[str, int]:
    """Row of the newest label of each sample in ``view`` (by created_at, then write order)."""
    frame = view.frame
    order = np.lexsort((np.arange(len(frame)), frame["created_at"].to_numpy()))
    return {str(frame["sample_id"].iat[i]): int(i) for i in order}  # later rows overwrite earlier ones


def shown_model_version(model_version: Any, round_: int) -> str:
    """The ``model_version`` a label's prediction carries: its model version, or ``round-<k>`` without one."""
    return str(model_version) if isinstance(model_version, str) and model_version else f"round-{int(round_)}"


def resolve_labels(store: Any, round_: int, labels: LabelView | Sequence[str] | None) -> LabelView:
    """The labels to show: ``labels`` itself (a LabelView), the labels of round ``round_`` with these
    label ids, or the round's pseudo-labels (None)."""
    if labels is None:
        return store.pseudo_labels(round_)
    if isinstance(labels, LabelView):
        return labels
    ids = set(labels)
    all_round = store.labels(round=round_)
    return all_round.take(all_round.frame["label_id"].isin(ids).to_numpy())


class _Rows:
    """The columns of a label view that a review item needs, with the newest row per sample."""

    def __init__(self, view: LabelView) -> None:
        self.view = view
        self.newest = newest_per_sample(view)
        frame = view.frame
        self.label_ids, self.rounds = frame["label_id"].astype(str).to_numpy(), frame["round"].to_numpy()
        self.columns = {c: frame[c].to_numpy() if c in frame else np.full(len(frame), None) for c in
                        ("face_confidence", "predicted_nme", "model_version")}  # fmt: skip

    def item(self, sid: str, image: str, width: int, height: int, storage_dir: Path | None) -> ReviewItem:
        """The review item of sample ``sid`` (which must have a row)."""
        r = self.newest[sid]
        rnd = int(self.rounds[r])
        conf = self.view.landmark_confidence
        return ReviewItem(
            sample_id=sid,
            round=rnd,
            label_id=str(self.label_ids[r]),
            image=image,
            width=int(width),
            height=int(height),
            landmarks=self.view.landmarks[r],
            landmark_confidence=None if conf is None else conf[r],
            face_confidence=_opt_float(self.columns["face_confidence"][r]),
            predicted_nme=_opt_float(self.columns["predicted_nme"][r]),
            model_version=shown_model_version(self.columns["model_version"][r], rnd),
            storage_dir=storage_dir,
        )


def collect_items(
    store: Any,
    sample_ids: Sequence[str],
    round_: int,
    labels: LabelView | Sequence[str] | None,
    access: ImageAccess,
) -> Selection:
    """The faces among ``sample_ids`` that may go to review, with the label to show.

    Refused (with the reason): samples not in the store, holdout samples, samples a person already
    labeled (human or corrected label), samples without a label to show, images Label Studio cannot
    reach.

    Args:
        store: The label store.
        sample_ids: Faces asked for.
        round_: Round of the labels shown.
        labels: The labels to show: a LabelView, label ids of round ``round_``, or None for the
            round's pseudo-labels (the newest per sample).
        access: How images reach Label Studio.

    Raises:
        ReviewConfigError: local images but no document root configured.
    """
    sel = Selection()
    wanted = list(dict.fromkeys(str(s) for s in sample_ids))
    if not wanted:
        return sel
    rows = _Rows(resolve_labels(store, round_, labels))
    samples = store.samples()
    split = dict(zip(samples["sample_id"], samples["split"], strict=True))
    where = {sid: i for i, sid in enumerate(samples["sample_id"])}
    uri, width, height = (samples[c].to_numpy() for c in ("image_uri", "width", "height"))
    people = set(store.labels(source="human").frame["sample_id"])
    people |= set(store.labels(source="corrected").frame["sample_id"])
    for sid in wanted:
        if sid not in split:
            sel.refused[sid] = "not in the store"
            continue
        if split[sid] == "holdout":
            sel.refused[sid] = "holdout sample: holdout faces are never sent to review"
            continue
        if sid in people:
            sel.refused[sid] = "already labeled by a person (human or corrected label)"
            continue
        if sid not in rows.newest:
            sel.refused[sid] = f"no label of round {round_} to show"
            continue
        s = where[sid]
        try:
            image, storage_dir = image_location(str(uri[s]), str(store.url), access)
        except ReviewConfigError as e:
            if access.document_root is None:
                raise
            sel.refused[sid] = str(e)
            continue
        sel.items.append(rows.item(sid, image, int(width[s]), int(height[s]), storage_dir))
    return sel


def refresh_items(
    store: Any, sample_ids: Sequence[str], round_: int, labels: LabelView | Sequence[str] | None
) -> Selection:
    """The newer prediction of faces already in review: the label of round ``round_`` to add to their task.

    Unlike :func:`collect_items` this needs no image access (the task exists and keeps its image)
    and refuses nothing a person decided: the task is open, its reviewer should see the newest model.

    Args:
        store: The label store.
        sample_ids: Faces whose open task gets the newer prediction.
        round_: The round whose labels are shown now.
        labels: The round's labels to show (a LabelView or label ids); a sample without one there
            falls back to its pseudo-label of round ``round_`` in the store. None: the store's only.

    Returns:
        Items (``image`` empty, ``storage_dir`` None), and the samples without a label of the round.
    """
    sel = Selection()
    wanted = list(dict.fromkeys(str(s) for s in sample_ids))
    if not wanted:
        return sel
    samples = store.samples()
    size = dict(zip(samples["sample_id"], zip(samples["width"], samples["height"], strict=True), strict=True))
    given = _Rows(resolve_labels(store, round_, labels)) if labels is not None else None
    fallback: _Rows | None = None
    for sid in wanted:
        if sid not in size:
            sel.refused[sid] = "not in the store"
            continue
        rows = given if given is not None and sid in given.newest else None
        if rows is None:
            fallback = fallback or _Rows(store.pseudo_labels(round_))
            rows = fallback if sid in fallback.newest else None
        if rows is None:
            sel.refused[sid] = f"no pseudo-label of round {round_} to show"
            continue
        sel.items.append(rows.item(sid, "", int(size[sid][0]), int(size[sid][1]), None))
    return sel


def build_prediction(item: ReviewItem, scheme: Scheme, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The prediction of one face: ``model_version`` = the round's model, ``score`` = face confidence,
    per-landmark ``score`` = landmark confidence; ``names`` = the project's labels (default the scheme's)."""
    return prediction(
        item.landmarks,
        item.width,
        item.height,
        scheme,
        model_version=item.model_version,
        face_confidence=item.face_confidence,
        landmark_confidence=item.landmark_confidence,
        names=names,
    )


def doubts_text(landmark_confidence: np.ndarray | None, scheme: Scheme, k: int = DOUBTS_SHOWN) -> str:
    """The task's ``doubts`` line: the ``k`` least confident landmarks by name, with their scores.

    Args:
        landmark_confidence: (N,) in [0, 1] (NaN: none), or None.
        scheme: Gives the names.
        k: How many to name.
    """
    conf = None if landmark_confidence is None else np.asarray(landmark_confidence, dtype=np.float64)
    if conf is None or not np.isfinite(conf).any():
        return "The model gave no per-landmark confidence for this face."
    order = np.argsort(np.where(np.isfinite(conf), conf, np.inf), kind="stable")[: min(k, int(np.isfinite(conf).sum()))]
    listed = ", ".join(f"{scheme.landmark_names[i]} ({conf[i]:.2f})" for i in order)
    return f"Least sure (check these first): {listed}"


def build_task(item: ReviewItem, scheme: Scheme, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The Label Studio task of one face, with its prediction (labels ``names``, default the scheme's)."""
    data: dict[str, Any] = {
        IMAGE_NAME: item.image,
        "sample_id": item.sample_id,
        "round": item.round,
        "label_id": item.label_id,
        "model_version": item.model_version,
        DOUBTS_NAME: doubts_text(item.landmark_confidence, scheme),
    }
    if item.face_confidence is not None:
        data["face_confidence"] = round(item.face_confidence, 4)
    if item.predicted_nme is not None:
        data["predicted_nme"] = round(item.predicted_nme, 5)
    return {"data": data, "predictions": [build_prediction(item, scheme, names)]}


def _signature(pred: dict[str, Any]) -> tuple[Any, ...]:
    """Everything of a prediction the SDK validates except its numbers."""
    items = tuple(
        (
            it.get("from_name"),
            it.get("to_name"),
            it.get("type"),
            tuple(sorted(it.get("value", {}))),
            tuple(it.get("value", {}).get("keypointlabels") or ()),
        )
        for it in pred.get("result", [])
    )
    return (tuple(sorted(k for k in pred if k not in ("result", "score", "model_version"))), items)


def _number_errors(pred: dict[str, Any]) -> list[str]:
    """The per-task numbers: x, y finite in [0, 100] (the SDK checks only <= 100), scores in [0, 1]."""
    errors = []
    score = pred.get("score")
    if score is not None and not (isinstance(score, int | float) and 0.0 <= score <= 1.0):
        errors.append(f"prediction score {score!r} outside [0, 1]")
    for k, it in enumerate(pred.get("result", [])):
        v = it.get("value", {})
        x, y = v.get("x"), v.get("y")
        if not all(isinstance(c, int | float) and math.isfinite(c) and 0.0 <= c <= 100.0 for c in (x, y)):
            errors.append(f"Region {k}: x, y = {x!r}, {y!r} not within 0..100 percent")
        s = it.get("score")
        if s is not None and not (isinstance(s, int | float) and 0.0 <= s <= 1.0):
            errors.append(f"Region {k}: score {s!r} outside [0, 1]")
    return errors


def validate_tasks(tasks: Sequence[dict[str, Any]], label_config: str) -> list[list[str]]:
    """Errors of each task's predictions against the labeling config (empty lists when valid).

    The SDK's ``LabelInterface.validate_prediction`` (from_name, to_name, type, required value fields,
    labels of the config, x and y <= 100) costs ~2-4 ms per 68-point prediction. Predictions made by
    :func:`build_task` differ only in their numbers, so the SDK validates one prediction per distinct
    structure (names, types, value keys, labels) and the numbers of every prediction are checked here
    (finite, 0 <= x, y <= 100, scores in [0, 1]): the same verdict as validating each one, at ~1/100
    of the cost.
    """
    from label_studio_sdk.label_interface import LabelInterface  # 0.8 s import: only when pushing

    li = LabelInterface(label_config)
    verdicts: dict[tuple[Any, ...], list[str]] = {}
    out = []
    for task in tasks:
        errors: list[str] = []
        for pred in task.get("predictions", []):
            sig = _signature(pred)
            if sig not in verdicts:
                verdicts[sig] = list(li.validate_prediction(pred, return_errors=True) or [])
            errors += verdicts[sig] + _number_errors(pred)
        out.append(errors)
    return out
