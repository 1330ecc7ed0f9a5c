"""From the boxes a store holds to the crops the model sees, and the fit of a detector's boxes to them.

Training crops are the landmark box enlarged by the round's scale (the GSSL convention,
docs/algorithm.md section 3.3). Faces without landmarks (pool, holdout at inference) only have a
detector or given box; a :class:`~annotations.ingest.boxmap.BoxMapping` fitted on human-labeled faces
turns it into the landmark box first, because crop conventions differ between detectors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from annotations.ingest.boxmap import BoxMapping, fit_box_mapping, match_boxes
from annotations.ingest.detect import DetectorUnavailable, create_detector
from annotations.store.store import Store
from pipnet_core.crop import enlarge_box, landmark_box
from pipnet_core.images import ImageReadError, read_image

__all__ = ["fit_crop_mapping", "inference_crop_boxes", "pool_detector", "training_crop_boxes"]


def training_crop_boxes(landmarks: np.ndarray, scale: float) -> np.ndarray:
    """(R, N, 2) px -> (R, 4) training crops: the landmark box enlarged by ``scale``."""
    return enlarge_box(landmark_box(landmarks), scale=scale)


def inference_crop_boxes(samples: pd.DataFrame, mapping: BoxMapping | None, scale: float) -> np.ndarray:
    """(R, 4) crops for faces without landmarks: each sample box mapped to a landmark box, then enlarged.

    Boxes that already are landmark boxes (``box_source == "landmarks"``) need no mapping; detector and
    given boxes go through ``mapping``.
    """
    if not len(samples):
        return np.zeros((0, 4))
    boxes = np.stack(samples["box"].map(lambda b: np.asarray(b, dtype=np.float64)).to_numpy())
    need = (samples["box_source"].fillna("given") != "landmarks").to_numpy()
    if need.any() and mapping is not None:
        boxes[need] = mapping.apply(boxes[need])
    return enlarge_box(boxes, scale=scale)


def pool_detector(store: Store) -> str | None:
    """The detector that boxed most of the pool (``box_source`` ``detector:<name>``), if any."""
    sources = store.samples(split="pool")["box_source"].dropna()
    sources = sources[sources.str.startswith("detector:")]
    return None if sources.empty else str(sources.value_counts().index[0]).split(":", 1)[1]


def _detected_pairs(detector: str, samples: pd.DataFrame, targets: np.ndarray, max_faces: int) -> tuple[list, list]:
    """Run ``detector`` on labeled images and match each detection to its face's landmark box by IoU."""
    detect = create_detector(detector)
    det_boxes, target_boxes = [], []
    for uri, group in list(samples.groupby("image_uri").groups.items())[:max_faces]:
        try:
            found = detect(read_image(str(uri)).rgb)
        except ImageReadError:
            continue
        if not found:
            continue
        boxes = np.stack([d.box for d in found]).astype(np.float64)
        rows = np.asarray(list(group))
        for i, j in match_boxes(boxes, targets[rows]):
            det_boxes.append(boxes[i])
            target_boxes.append(targets[rows[j]])
    return det_boxes, target_boxes


def fit_crop_mapping(store: Store, max_faces: int = 200) -> BoxMapping:
    """Fit the pool detector's box -> landmark box on human-labeled train faces.

    Pairs come from labeled faces that carry a box of the same kind as the pool's. When the labeled
    faces only have landmark boxes, the pool's detector is run on (up to ``max_faces``) labeled
    images and each detection is matched to its face by IoU. Identity when there is nothing to fit.
    """
    view = store.current_labels(splits=("train",), for_training=True)
    frame = view.frame.reset_index(drop=True)
    human = frame["source"].isin(["human", "corrected"]).to_numpy()
    if not human.any():
        return BoxMapping.identity()
    samples = store.samples().set_index("sample_id").loc[frame.loc[human, "sample_id"]].reset_index()
    targets = landmark_box(view.landmarks[human].astype(np.float64))
    detector = pool_detector(store)
    kind = f"detector:{detector}" if detector else None
    same = (samples["box_source"] == kind).to_numpy() if kind else (samples["box_source"] != "landmarks").to_numpy()
    if same.sum() >= 3:
        det = np.stack(samples["box"].to_numpy()[same]).astype(np.float64)
        return fit_box_mapping(det, targets[same], detector=detector)
    if detector is None:
        return BoxMapping.identity()
    try:
        det_boxes, target_boxes = _detected_pairs(detector, samples, targets, max_faces)
    except DetectorUnavailable:
        return BoxMapping.identity(detector)
    if len(det_boxes) < 3:
        return BoxMapping.identity(detector)
    return fit_box_mapping(np.stack(det_boxes), np.stack(target_boxes), detector=detector)
