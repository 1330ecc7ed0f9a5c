"""Landmarks <-> Label Studio KeyPointLabels result items.

Label Studio stores a key point as ``value.x``/``value.y`` in percent (0-100) of the image's
``original_width``/``original_height`` (https://labelstud.io/tags/keypointlabels), so

    px = x * W / 100,  py = y * H / 100   and back   x = 100 * px / W,  y = 100 * py / H

in float64; the round trip is exact to ~1e-13 px (docs/review.md section 4). The landmark index travels as
the item's label (``keypointlabels[0]`` = ``scheme.landmark_names[i]``, or ``lm_XX`` in a project made
before landmarks had names: both are read), never as its position in the list or its ``id`` (JSON_MIN
drops ids, a re-added point gets a random id; docs/review.md section 3.2).

Visibility (COCO's ``v``): a landmark the reviewer deleted is missing (NaN, visibility 0); one they
marked with the per-region choice ``occluded`` keeps its position as an estimate (visibility 1); the
others are visible (2). The per-region choice is a result item of the ``visibility`` control with the
``id`` of the point's region.

Pulling is strict: an annotation with a landmark placed twice, a label the scheme does not know or
an image size that differs is reported with what is wrong and is not turned into a label; so is one
with no landmark at all (a reviewer who cannot place any should skip or reject the face).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotations.review.config import (
    CHOICES_NAME,
    CONTROL_NAME,
    IMAGE_NAME,
    OCCLUDED,
    POINT_WIDTH,
    VISIBILITY_NAME,
)
from pipnet_core.schemes import Scheme, legacy_landmark_names

__all__ = [
    "MOVED_TOLERANCE_PX",
    "ParsedAnnotation",
    "moved_landmarks",
    "parse_annotation",
    "percent_to_pixels",
    "pixels_to_percent",
    "prediction",
    "prediction_result",
]

# A point counts as moved when it lies further than this from the prediction shown. The percent round
# trip is exact to ~1e-13 px and a drag in the UI moves a point by at least a screen pixel, so any
# value in between separates "untouched" from "moved"; 0.01 px also absorbs float32 storage of the
# prediction (~3e-5 px at 1,000 px).
MOVED_TOLERANCE_PX = 0.01


def pixels_to_percent(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """(..., 2) image pixels -> (..., 2) percent of the image size, float64."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack((p[..., 0] * 100.0 / width, p[..., 1] * 100.0 / height), axis=-1)


def percent_to_pixels(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """(..., 2) percent of the image size -> (..., 2) image pixels, float64 (``px = x * W / 100``)."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack((p[..., 0] * width / 100.0, p[..., 1] * height / 100.0), axis=-1)


def prediction_result(
    landmarks: np.ndarray,
    width: int,
    height: int,
    scheme: Scheme,
    landmark_confidence: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Result items of one face's landmarks, as a prediction shows them.

    Args:
        landmarks: (N, 2) image pixels; NaN landmarks are left out (the reviewer places them).
        width: Image width in pixels (``original_width``).
        height: Image height in pixels.
        scheme: Gives the label of landmark i, ``scheme.landmark_names[i]``.
        landmark_confidence: (N,) in [0, 1], shown beside each point as its ``score``.
        names: The project's labels in scheme order, when they are not the scheme's names (``lm_XX``).

    Points outside the image are clipped to its border: the editor cannot show them elsewhere.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (scheme.num_landmarks, 2):
        raise ValueError(
            f"landmarks must have shape ({scheme.num_landmarks}, 2) for scheme {scheme.name}, got {lm.shape}"
        )
    pct = np.clip(pixels_to_percent(lm, width, height), 0.0, 100.0).tolist()  # Python floats, once
    conf = None if landmark_confidence is None else np.asarray(landmark_confidence, dtype=np.float64).tolist()
    w, h = int(width), int(height)
    items = []
    for i, name in enumerate(names or scheme.landmark_names):
        x, y = pct[i]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        item: dict[str, Any] = {
            "id": f"lm{i}",
            "from_name": CONTROL_NAME,
            "to_name": IMAGE_NAME,
            "type": "keypointlabels",
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {"x": x, "y": y, "width": POINT_WIDTH, "keypointlabels": [name]},
        }
        if conf is not None and math.isfinite(conf[i]):
            item["score"] = conf[i]
        items.append(item)
    return items


def prediction(
    landmarks: np.ndarray,
    width: int,
    height: int,
    scheme: Scheme,
    *,
    model_version: str,
    face_confidence: float | None = None,
    landmark_confidence: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A Label Studio prediction (pre-annotation) of one face: ``{"model_version", "score", "result"}``."""
    out: dict[str, Any] = {
        "model_version": model_version,
        "result": prediction_result(landmarks, width, height, scheme, landmark_confidence, names),
    }
    if face_confidence is not None and np.isfinite(face_confidence):
        out["score"] = float(face_confidence)
    return out


@dataclass
class ParsedAnnotation:
    """One annotation's result, read back.

    Attributes:
        landmarks: (N, 2) image pixels, float64; NaN where the landmark is missing (deleted).
        visibility: (N,) int8 COCO visibility: 0 missing, 1 occluded (marked by the reviewer), 2 visible.
        origin: Per landmark, the item's ``origin`` (``prediction``, ``prediction-changed``,
            ``manual``) or None.
        choice: The ``face_status`` choice, or None.
        missing: Indices of landmarks with no point (deleted by the reviewer: NaN, not an error).
        duplicate: Names of landmarks placed more than once.
        unknown: Labels that are not landmarks of the scheme (or items of other controls).
        size_mismatch: ``(W, H)`` of items whose image size differs from the expected one.
    """

    landmarks: np.ndarray
    origin: list[str | None]
    visibility: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    choice: str | None = None
    missing: list[int] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    size_mismatch: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when at least one landmark is placed, none twice, and nothing unknown came along."""
        empty = len(self.missing) == len(self.origin)
        return not (empty or self.duplicate or self.unknown or self.size_mismatch)

    def problems(self, scheme: Scheme) -> str:
        """A one-line description of what is wrong, naming the landmarks."""
        parts = []
        if len(self.missing) == len(self.origin):
            parts.append("no landmark placed (skip the task or choose a face status instead)")
        if self.duplicate:
            parts.append(f"placed more than once: {', '.join(self.duplicate)}")
        if self.unknown:
            parts.append(f"unknown labels: {', '.join(self.unknown)}")
        if self.size_mismatch:
            parts.append(f"image size in Label Studio {self.size_mismatch[0][0]}x{self.size_mismatch[0][1]} differs")
        return "; ".join(parts)


def _first(values: Sequence[Any] | None) -> Any:
    return values[0] if values else None


def parse_annotation(
    result: list[dict[str, Any]],
    scheme: Scheme,
    width: int | None = None,
    height: int | None = None,
) -> ParsedAnnotation:
    """Read an annotation's result items back into (N, 2) pixels.

    Args:
        result: The annotation's ``result`` list (full JSON shape, or the flat JSON_MIN shape).
        scheme: Maps labels back to landmark indices.
        width: Expected image width; items whose ``original_width`` differs are reported. None: no check.
        height: Expected image height.

    Returns:
        The landmarks and everything that is wrong with them; check ``.ok`` before using them.
    """
    n = scheme.num_landmarks
    index = {name: i for i, name in enumerate(legacy_landmark_names(n))}  # projects of older pipstc
    index.update({name: i for i, name in enumerate(scheme.landmark_names)})
    out = ParsedAnnotation(landmarks=np.full((n, 2), np.nan, dtype=np.float64), origin=[None] * n)
    seen = np.zeros(n, dtype=np.int64)
    region: dict[Any, int] = {}  # result item id -> landmark index
    occluded: list[Any] = []  # region ids marked occluded
    for item in result or []:
        value = item.get("value", item)  # full JSON nests the value, JSON_MIN is flat
        from_name = item.get("from_name", CONTROL_NAME)
        kind = str(item.get("type", "keypointlabels")).lower()
        if from_name == VISIBILITY_NAME:
            if OCCLUDED in (value.get("choices") or []):
                occluded.append(item.get("id"))
            continue
        if from_name == CHOICES_NAME or kind == "choices":
            out.choice = _first(value.get("choices"))
            continue
        if kind != "keypointlabels" or from_name != CONTROL_NAME:
            out.unknown.append(f"{from_name}:{kind}")
            continue
        label = _first(value.get("keypointlabels"))
        if label not in index:
            out.unknown.append(str(label))
            continue
        i = index[label]
        seen[i] += 1
        if seen[i] > 1:
            if label not in out.duplicate:
                out.duplicate.append(label)
            continue
        w = item.get("original_width", value.get("original_width"))
        h = item.get("original_height", value.get("original_height"))
        if w is None or h is None:
            out.unknown.append(f"{label} (no original_width/original_height)")
            continue
        if (width is not None and int(w) != int(width)) or (height is not None and int(h) != int(height)):
            out.size_mismatch.append((int(w), int(h)))
        out.landmarks[i] = percent_to_pixels(np.array([value["x"], value["y"]], dtype=np.float64), w, h)
        out.origin[i] = item.get("origin")
        if item.get("id") is not None:
            region[item["id"]] = i
    out.missing = [int(i) for i in np.flatnonzero(seen == 0)]
    out.visibility = np.where(np.isfinite(out.landmarks[:, 0]), 2, 0).astype(np.int8)
    for rid in occluded:
        if rid in region and np.isfinite(out.landmarks[region[rid], 0]):
            out.visibility[region[rid]] = 1
    return out


def moved_landmarks(
    parsed: ParsedAnnotation, shown: np.ndarray, width: int, height: int, tolerance_px: float = MOVED_TOLERANCE_PX
) -> np.ndarray:
    """(N,) bool: which landmarks the reviewer moved away from the prediction shown.

    ``origin == "prediction-changed"`` (written by the editor for a dragged point, docs/review.md section 7.1)
    counts as moved; otherwise the point is compared with the shown prediction (``shown`` (N, 2)
    pixels, clipped to the image as :func:`prediction_result` clipped it). A landmark the prediction
    did not show (NaN) counts as moved when the reviewer placed it.
    """
    shown = np.asarray(shown, dtype=np.float64)
    border = np.array([width, height], dtype=np.float64)
    shown_clipped = np.clip(shown, 0.0, border)
    with np.errstate(invalid="ignore"):
        dist = np.linalg.norm(parsed.landmarks - shown_clipped, axis=1)
    moved = ~(dist <= tolerance_px)  # NaN distance (nothing shown) -> moved
    changed = np.array([o == "prediction-changed" for o in parsed.origin], dtype=bool)
    return (moved | changed) & np.all(np.isfinite(parsed.landmarks), axis=1)
