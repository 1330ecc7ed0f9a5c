"""Detector box -> training-crop box mapping: recovers a known mapping, resists outliers, serialises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from annotations.formats.common import landmark_boxes
from annotations.ingest.boxmap import BoxMapping, fit_box_mapping, iou_matrix, match_boxes
from annotations.ingest.detect import create_detector
from synthetic_faces import DOMAINS, iter_faces


def random_boxes(rng: np.random.Generator, m: int) -> np.ndarray:
    x0 = rng.uniform(0, 500, m)
    y0 = rng.uniform(0, 400, m)
    w = rng.uniform(30, 300, m)
    h = w * rng.uniform(0.9, 1.4, m)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def test_fit_recovers_a_known_mapping_despite_noise_and_outliers() -> None:
    rng = np.random.default_rng(0)
    true = BoxMapping(a_x=0.03, a_y=0.12, s_x=0.82, s_y=0.74)
    det = random_boxes(rng, 300)
    target = true.apply(det).astype(np.float64)
    size = (det[:, 2:] - det[:, :2]).repeat(2, axis=0).reshape(-1, 4)
    target += rng.normal(0, 0.01, target.shape) * size  # 1% of the box size: labelling noise
    bad = rng.choice(300, 30, replace=False)  # 10% wrong matches
    target[bad] = random_boxes(rng, 30)
    fit = fit_box_mapping(det, target, detector="yuface")
    assert fit.a_x == pytest.approx(0.03, abs=0.004)
    assert fit.a_y == pytest.approx(0.12, abs=0.004)
    assert fit.s_x == pytest.approx(0.82, rel=0.01)
    assert fit.s_y == pytest.approx(0.74, rel=0.01)
    assert fit.num_pairs == 300 and 250 <= fit.num_fit <= 275  # the outliers were trimmed
    assert fit.detector == "yuface" and fit.median_iou is not None and fit.median_iou > 0.9
    # A plain mean would have been pulled away by the outliers.
    naive = np.exp(np.mean(np.log((target[:, 2] - target[:, 0]) / (det[:, 2] - det[:, 0]))))
    assert abs(naive - 0.82) > abs(fit.s_x - 0.82)


def test_exact_data_is_recovered_exactly_and_identity_changes_nothing() -> None:
    rng = np.random.default_rng(1)
    det = random_boxes(rng, 5)
    true = BoxMapping(a_x=-0.05, a_y=0.2, s_x=1.1, s_y=0.9)
    fit = fit_box_mapping(det, true.apply(det))
    np.testing.assert_allclose([fit.a_x, fit.a_y, fit.s_x, fit.s_y], [-0.05, 0.2, 1.1, 0.9], atol=1e-5)
    assert fit.num_fit == 5
    np.testing.assert_allclose(BoxMapping.identity().apply(det), det, rtol=1e-6)
    assert BoxMapping.identity().apply(det[0]).shape == (4,)


def test_to_dict_from_dict_round_trip_and_validation() -> None:
    m = BoxMapping(a_x=0.1, a_y=-0.2, s_x=0.9, s_y=1.2, num_fit=10, num_pairs=12, median_iou=0.8, detector="haar")
    assert BoxMapping.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(ValueError, match="'s_y'"):
        BoxMapping.from_dict({"a_x": 0, "a_y": 0, "s_x": 1})
    with pytest.raises(ValueError, match="> 0"):
        BoxMapping.from_dict({"a_x": 0, "a_y": 0, "s_x": 1, "s_y": -1})
    with pytest.raises(ValueError, match="kind"):
        BoxMapping.from_dict({**m.to_dict(), "kind": "affine"})


def test_fit_refuses_bad_input() -> None:
    rng = np.random.default_rng(2)
    det = random_boxes(rng, 4)
    with pytest.raises(ValueError, match="at least 3"):
        fit_box_mapping(det[:2], det[:2])
    with pytest.raises(ValueError, match="pair row by row"):
        fit_box_mapping(det, det[:3])
    flipped = det.copy()
    flipped[1, [0, 2]] = flipped[1, [2, 0]]
    with pytest.raises(ValueError, match=r"target_boxes\[1\].*empty"):
        fit_box_mapping(det, flipped)
    with pytest.raises(ValueError, match="NaN"):
        fit_box_mapping(det, np.where(np.arange(4)[:, None] == 0, np.nan, det))


def test_match_boxes_pairs_by_overlap() -> None:
    rng = np.random.default_rng(3)
    targets = np.array([[0, 0, 100, 100], [200, 0, 300, 100], [0, 200, 100, 300]], float)
    det = targets[[2, 0]] + rng.normal(0, 3, (2, 4))
    det = np.vstack([det, [[500, 500, 560, 560]]])  # a false positive overlaps nothing
    pairs = match_boxes(det, targets)
    assert pairs.tolist() == [[0, 2], [1, 0]] or sorted(pairs.tolist()) == [[0, 2], [1, 0]]
    assert match_boxes(np.zeros((0, 4)), targets).shape == (0, 2)
    assert iou_matrix(targets, targets).diagonal() == pytest.approx([1, 1, 1])


def test_mapping_fitted_on_yuface_boxes_of_synthetic_faces_fits_better_than_raw_boxes() -> None:
    detect = create_detector("yuface")
    det, target = [], []
    for img, lm, _ in iter_faces(12, DOMAINS["studio"], seed=8):
        faces = detect(img)
        truth = landmark_boxes(lm[None])
        pairs = match_boxes(np.stack([f.box for f in faces]) if faces else np.zeros((0, 4)), truth)
        for i, j in pairs:
            det.append(faces[i].box)
            target.append(truth[j])
    assert len(det) >= 8  # yuface finds studio faces
    det_a, target_a = np.array(det), np.array(target)
    fit = fit_box_mapping(det_a, target_a, detector="yuface")
    raw = np.median(iou_matrix(det_a, target_a).diagonal())
    assert fit.median_iou is not None and fit.median_iou > raw + 0.05
