"""Embedded face detection for unlabeled pools: no download, no GPU.

The default is yuface 2023.5 (libfacedetection, the YuNet family; BSD-3, weights compiled into the
wheel): measured here on real photos it found 32 of 33 faces, including a tilted face, sunglasses and
profiles (docs/speed.md section 6). It degrades on inputs larger than 960 px, so images are
downscaled to at most ``max_side`` first and the boxes scaled back. OpenCV's Haar cascade
(``haarcascade_frontalface_default.xml``, shipped with opencv 4.x) is the fallback: fewer faces and
many false positives, and no calibrated score (``score`` is None).

Boxes are (x0, y0, x1, y1) in pixels of the image given. Their convention is the detector's own;
:mod:`annotations.ingest.boxmap` maps them to the crop convention the model trains on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = ["DETECTORS", "Detection", "DetectorUnavailable", "create_detector", "detect_faces"]

DETECTORS = ("yuface", "haar")
Detector = Callable[[np.ndarray], list["Detection"]]


class DetectorUnavailable(RuntimeError):
    """The requested detector cannot run in this environment; the message says what to install."""


@dataclass(frozen=True)
class Detection:
    """One detected face.

    Attributes:
        box: (4,) float32 (x0, y0, x1, y1) pixels.
        score: Detector confidence in [0, 1], or None when the detector has none (Haar).
        points: (5, 2) float32 pixels (eyes, nose tip, mouth corners) from yuface, else None.
    """

    box: np.ndarray
    score: float | None
    points: np.ndarray | None = None


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / float(max(h, w)))
    if scale < 1.0:
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale
    return rgb, 1.0


def _import_yuface(threads: int) -> Any:
    """Import yuface with its bundled OpenMP runtime limited to ``threads`` and not spin-waiting.

    yuface ships its own libgomp, which reads OMP_NUM_THREADS / OMP_WAIT_POLICY once, when the
    library loads. With all cores and busy-waiting, a 256 px detection measured 70-870 ms on this
    2-core machine while other processes ran, against 20 ms with one passive thread. Pools scale
    by running shards in parallel processes, so one thread per detector is the right default. The
    variables are set only for the import and restored, so torch and others keep their settings.
    """
    if "yuface" in sys.modules:
        return sys.modules["yuface"]
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import yuface
    except ImportError:  # pragma: no cover - a dependency of pipstc
        raise DetectorUnavailable(
            "yuface is not installed: pip install 'yuface>=2023.5' (weights are inside the wheel)"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return yuface


def _yuface(min_score: float, max_side: int, threads: int) -> Detector:
    yuface = _import_yuface(threads)

    def detect(rgb: np.ndarray) -> list[Detection]:
        small, scale = _downscale(rgb, max_side)
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        confs, boxes, points = yuface.detect(bgr, conf=min_score)
        out = []
        for c, b, p in zip(confs, boxes, points, strict=True):
            x, y, w, h = (float(v) / scale for v in b)
            if w <= 0 or h <= 0:
                continue
            out.append(
                Detection(
                    box=np.array([x, y, x + w, y + h], np.float32),
                    score=float(c) / 100.0,  # yuface reports percent
                    points=(np.asarray(p, np.float32).reshape(5, 2) / scale).astype(np.float32),
                )
            )
        return sorted(out, key=lambda d: -(d.score or 0.0))

    return detect


def _haar(max_side: int, min_neighbors: int = 5) -> Detector:
    data = getattr(cv2, "data", None)
    if data is None:
        raise DetectorUnavailable(
            "this OpenCV build ships no Haar cascades (no cv2.data, as in opencv 5 wheels); use detector='yuface'"
        )
    cascade = cv2.CascadeClassifier(data.haarcascades + "haarcascade_frontalface_default.xml")
    if cascade.empty():
        raise DetectorUnavailable(
            "cannot load haarcascade_frontalface_default.xml from cv2.data; use detector='yuface'"
        )

    def detect(rgb: np.ndarray) -> list[Detection]:
        small, scale = _downscale(rgb, max_side)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        side = min(gray.shape[:2])
        rects = cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(max(20, side // 20),) * 2
        )
        out = []
        for x, y, w, h in np.asarray(rects).reshape(-1, 4):
            box = np.array([x, y, x + w, y + h], np.float32) / scale
            out.append(Detection(box=box.astype(np.float32), score=None))
        return sorted(out, key=lambda d: -float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))

    return detect


def create_detector(name: str = "yuface", min_score: float = 0.5, max_side: int = 960, threads: int = 1) -> Detector:
    """A face detector: ``detect(rgb (H, W, 3) uint8) -> list[Detection]``, best first.

    Args:
        name: ``"yuface"`` (default) or ``"haar"``.
        min_score: yuface confidence threshold in [0, 1].
        max_side: Images are downscaled to at most this many pixels on the long side first.
        threads: OpenMP threads of yuface, fixed by the first yuface detector of the process.

    Raises:
        ValueError: unknown name.
        DetectorUnavailable: the detector cannot be loaded here.
    """
    if not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score must be in [0, 1], got {min_score}")
    if name == "yuface":
        return _yuface(min_score, max_side, threads)
    if name == "haar":
        return _haar(max_side)
    raise ValueError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)} (or give a box file)")


def detect_faces(
    rgb: np.ndarray, detector: str = "yuface", min_score: float = 0.5, max_side: int = 960
) -> list[Detection]:
    """Detect faces in one RGB image (see :func:`create_detector`; build the detector once for many images)."""
    return create_detector(detector, min_score, max_side)(rgb)
