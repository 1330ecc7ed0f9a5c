"""Review tasks: which faces may go to people, and the Label Studio task JSON of each.

A task (LABEL_STUDIO.md 5.1) carries in ``data`` the image URL and pipstc's own ids (``sample_id``,
``round``, ``label_id`` of the pseudo-label shown; never keys named ``id``, ``annotator`` or the control
name, which collide in JSON_MIN exports), plus the face's scores so reviewers can sort by them in the
Data Manager; its one prediction is the pseudo-label (``model_version`` = the round's model, ``score``
= face confidence, per-landmark ``score`` = landmark confidence). Predictions are validated with the
SDK's offline ``LabelInterface`` before they leave, because the server accepts anything and only the
editor breaks on a bad one (LABEL_STUDIO.md pitfall 12).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotations.review.client import ReviewConfigError
from annotations.review.config import IMAGE_NAME
from annotations.review.convert import prediction
from annotations.review.project import ImageAccess, image_location
from annotations.views import LabelView
from pipnet_core.schemes import Scheme

__all__ = ["ReviewItem", "Selection", "build_task", "collect_items", "validate_tasks"]


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


def _newest_per_sample(view: LabelView) -> dict[str, int]:
    """Row of the newest label of each sample in ``view`` (by created_at, then write order)."""
    frame = view.frame
    order = np.lexsort((np.arange(len(frame)), frame["created_at"].to_numpy()))
    return {str(frame["sample_id"].iat[i]): int(i) for i in order}  # later rows overwrite earlier ones


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
    if labels is None:
        view = store.pseudo_labels(round_)
    elif isinstance(labels, LabelView):
        view = labels
    else:
        ids = set(labels)
        all_round = store.labels(round=round_)
        view = all_round.take(all_round.frame["label_id"].isin(ids).to_numpy())
    rows = _newest_per_sample(view)
    samples = store.samples()
    split = dict(zip(samples["sample_id"], samples["split"], strict=True))
    where = {sid: i for i, sid in enumerate(samples["sample_id"])}
    uri, width, height = (samples[c].to_numpy() for c in ("image_uri", "width", "height"))
    people = set(store.labels(source="human").frame["sample_id"])
    people |= set(store.labels(source="corrected").frame["sample_id"])
    frame = view.frame
    label_ids, rounds = frame["label_id"].astype(str).to_numpy(), frame["round"].to_numpy()
    columns = {c: frame[c].to_numpy() if c in frame else np.full(len(frame), None) for c in
               ("face_confidence", "predicted_nme", "model_version")}  # fmt: skip
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
        if sid not in rows:
            sel.refused[sid] = f"no label of round {round_} to show"
            continue
        r, s = rows[sid], where[sid]
        try:
            image, storage_dir = image_location(str(uri[s]), str(store.url), access)
        except ReviewConfigError as e:
            if access.document_root is None:
                raise
            sel.refused[sid] = str(e)
            continue
        rnd = int(rounds[r])
        mv = columns["model_version"][r]
        sel.items.append(
            ReviewItem(
                sample_id=sid,
                round=rnd,
                label_id=str(label_ids[r]),
                image=image,
                width=int(width[s]),
                height=int(height[s]),
                landmarks=view.landmarks[r],
                landmark_confidence=None if view.landmark_confidence is None else view.landmark_confidence[r],
                face_confidence=_opt_float(columns["face_confidence"][r]),
                predicted_nme=_opt_float(columns["predicted_nme"][r]),
                model_version=str(mv) if isinstance(mv, str) and mv else f"round-{rnd}",
                storage_dir=storage_dir,
            )
        )
    return sel


def build_task(item: ReviewItem, scheme: Scheme) -> dict[str, Any]:
    """The Label Studio task of one face, with its prediction."""
    data: dict[str, Any] = {
        IMAGE_NAME: item.image,
        "sample_id": item.sample_id,
        "round": item.round,
        "label_id": item.label_id,
        "model_version": item.model_version,
    }
    if item.face_confidence is not None:
        data["face_confidence"] = round(item.face_confidence, 4)
    if item.predicted_nme is not None:
        data["predicted_nme"] = round(item.predicted_nme, 5)
    pred = prediction(
        item.landmarks,
        item.width,
        item.height,
        scheme,
        model_version=item.model_version,
        face_confidence=item.face_confidence,
        landmark_confidence=item.landmark_confidence,
    )
    return {"data": data, "predictions": [pred]}


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
