"""Detector box -> training-crop box: a mapping fitted on faces where both are known.

A landmark model trained on one box convention loses much of its accuracy on another detector's
boxes (dlib's 68-point model: 3.4-4.3% NME with its own boxes, up to 38% with another detector's;
docs/algorithm.md section 3.4). So pipstc fits, on the human-labeled faces, how the detector's box
relates to the box the model's crops are made from (the target, e.g. the tight landmark box), stores
the mapping with the round, and applies it to every pool box.

The model is four numbers, each relative to the detector box's size so that it holds at every scale::

    cx_t = cx_d + a_x * w_d        w_t = s_x * w_d
    cy_t = cy_d + a_y * h_d        h_t = s_y * h_d

Each face gives one estimate of each number (``log s`` for the scales); the fit takes the median,
drops faces more than ``trim`` robust standard deviations (1.4826 MAD, the normal-consistent MAD;
Rousseeuw & Croux 1993) from it in any of the four, and averages the rest: least squares on the
inliers, unmoved by the odd wrong match or mislabeled face.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["BoxMapping", "fit_box_mapping", "iou_matrix", "match_boxes"]

_MAD_TO_STD = 1.4826  # MAD of a normal distribution times this = its standard deviation


@dataclass(frozen=True)
class BoxMapping:
    """How to turn a detector box into a target (training-crop) box.

    Attributes:
        a_x: Centre x shift in units of the detector box width.
        a_y: Centre y shift in units of the detector box height.
        s_x: Target width / detector width.
        s_y: Target height / detector height.
        num_fit: Faces the fit used (after trimming); 0 for the identity.
        num_pairs: Faces given to the fit.
        median_iou: Median IoU of mapped detector boxes and targets over all given faces (fit quality).
        detector: Name of the detector the mapping belongs to (``box_source`` of the pool samples).
    """

    a_x: float = 0.0
    a_y: float = 0.0
    s_x: float = 1.0
    s_y: float = 1.0
    num_fit: int = 0
    num_pairs: int = 0
    median_iou: float | None = None
    detector: str | None = None

    @classmethod
    def identity(cls, detector: str | None = None) -> BoxMapping:
        """The mapping that changes nothing (targets already in the detector's convention)."""
        return cls(detector=detector)

    def apply(self, boxes: np.ndarray) -> np.ndarray:
        """Map (M, 4) or (4,) detector boxes (x0, y0, x1, y1) to target boxes of the same shape (float32)."""
        b = np.asarray(boxes, dtype=np.float64)
        single = b.ndim == 1
        b = b.reshape(-1, 4)
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        cx = (b[:, 0] + b[:, 2]) / 2 + self.a_x * w
        cy = (b[:, 1] + b[:, 3]) / 2 + self.a_y * h
        hw, hh = self.s_x * w / 2, self.s_y * h / 2
        out = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1).astype(np.float32)
        return out[0] if single else out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; stored with the round (config.json) and read back by :meth:`from_dict`."""
        return {"kind": "center_scale_v1", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BoxMapping:
        """Inverse of :meth:`to_dict`. Raises ValueError naming a missing or bad field."""
        kind = d.get("kind", "center_scale_v1")
        if kind != "center_scale_v1":
            raise ValueError(f"box mapping kind {kind!r} is not known to this pipstc (expected 'center_scale_v1')")
        try:
            m = cls(
                a_x=float(d["a_x"]),
                a_y=float(d["a_y"]),
                s_x=float(d["s_x"]),
                s_y=float(d["s_y"]),
                num_fit=int(d.get("num_fit", 0)),
                num_pairs=int(d.get("num_pairs", 0)),
                median_iou=None if d.get("median_iou") is None else float(d["median_iou"]),
                detector=d.get("detector"),
            )
        except KeyError as e:
            raise ValueError(f"box mapping lacks the field {e.args[0]!r} (need a_x, a_y, s_x, s_y)") from None
        if not (m.s_x > 0 and m.s_y > 0) or not np.isfinite([m.a_x, m.a_y, m.s_x, m.s_y]).all():
            raise ValueError(f"box mapping scales must be finite and > 0, got s_x={m.s_x}, s_y={m.s_y}")
        return m


def _check_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must be (M, 4) boxes (x0, y0, x1, y1), got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name} contain NaN or infinite values; drop those faces first")
    bad = np.flatnonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
    if len(bad):
        raise ValueError(f"{name}[{bad[0]}] = {b[bad[0]].tolist()} is empty: need x1 > x0 and y1 > y0")
    return b


def fit_box_mapping(
    detector_boxes: np.ndarray,
    target_boxes: np.ndarray,
    detector: str | None = None,
    trim: float = 3.0,
    min_pairs: int = 3,
) -> BoxMapping:
    """Fit the mapping from detector boxes to target boxes of the same faces.

    Args:
        detector_boxes: (M, 4) boxes as the detector gave them, pixels.
        target_boxes: (M, 4) boxes in the training-crop convention for the same faces (row i ~ row i).
        detector: Name stored with the mapping.
        trim: Faces further than this many robust standard deviations from the median (in any of
            the four numbers) are left out of the average.
        min_pairs: Fewer faces than this raise, since a mapping from one or two faces is noise.

    Returns:
        The fitted :class:`BoxMapping`, with its fit quality.

    Raises:
        ValueError: shapes differ, empty or non-finite boxes, or too few faces.
    """
    d = _check_boxes(detector_boxes, "detector_boxes")
    t = _check_boxes(target_boxes, "target_boxes")
    if d.shape != t.shape:
        raise ValueError(f"detector_boxes {d.shape} and target_boxes {t.shape} must pair row by row")
    if len(d) < min_pairs:
        raise ValueError(f"need at least {min_pairs} faces with both a detector box and a target box, got {len(d)}")
    wd, hd = d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
    wt, ht = t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]
    est = np.stack(
        [
            ((t[:, 0] + t[:, 2]) - (d[:, 0] + d[:, 2])) / 2 / wd,
            ((t[:, 1] + t[:, 3]) - (d[:, 1] + d[:, 3])) / 2 / hd,
            np.log(wt / wd),
            np.log(ht / hd),
        ],
        axis=1,
    )
    med = np.median(est, axis=0)
    spread = _MAD_TO_STD * np.median(np.abs(est - med), axis=0)
    spread = np.maximum(spread, 1e-3)  # 0.1% of the box: float noise and exact data are never trimmed
    inliers = (np.abs(est - med) <= trim * spread + 1e-9).all(axis=1)
    mean = est[inliers].mean(axis=0) if inliers.any() else med
    mapping = BoxMapping(
        a_x=float(mean[0]),
        a_y=float(mean[1]),
        s_x=float(np.exp(mean[2])),
        s_y=float(np.exp(mean[3])),
        num_fit=int(inliers.sum()),
        num_pairs=len(d),
        detector=detector,
    )
    iou = np.diag(iou_matrix(mapping.apply(d), t)) if len(d) else np.zeros(0)
    return BoxMapping(**{**asdict(mapping), "median_iou": float(np.median(iou))})


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 4) x (B, 4) boxes -> (A, B) intersection over union."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_boxes(detector_boxes: np.ndarray, target_boxes: np.ndarray, min_iou: float = 0.3) -> np.ndarray:
    """Pair detections with labeled faces of one image, greedily by IoU (highest first).

    Use it to collect the pairs for :func:`fit_box_mapping`: run the detector on the labeled images,
    match each detection to the face whose target box it overlaps most.

    Returns:
        (K, 2) int indices (detection, target); each used at most once, IoU >= ``min_iou``.
    """
    iou = iou_matrix(detector_boxes, target_boxes)
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None), iou.shape))[0]
    used_d: set[int] = set()
    used_t: set[int] = set()
    for i, j in order:
        if iou[i, j] < min_iou:
            break
        if i in used_d or j in used_t:
            continue
        pairs.append((int(i), int(j)))
        used_d.add(int(i))
        used_t.add(int(j))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
