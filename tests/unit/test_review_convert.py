"""Landmarks <-> Label Studio result items (annotations/review/convert.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from annotations.review.convert import (
    moved_landmarks,
    parse_annotation,
    percent_to_pixels,
    pixels_to_percent,
    prediction,
    prediction_result,
)
from pipnet_core.schemes import get_scheme

SCHEME = get_scheme("aflw")  # 19 landmarks keep examples small
N = SCHEME.num_landmarks

sizes = st.integers(min_value=1, max_value=8000)


@given(
    pts=arrays(np.float64, (7, 2), elements=st.floats(0, 8000, allow_nan=False)),
    w=sizes,
    h=sizes,
)
def test_pixel_percent_round_trip_is_exact(pts: np.ndarray, w: int, h: int) -> None:
    back = percent_to_pixels(pixels_to_percent(pts, w, h), w, h)
    np.testing.assert_allclose(back, pts, rtol=1e-12, atol=1e-9)


def test_percent_conversion_matches_label_studio_formula() -> None:
    # docs/review.md section 4: px = x * original_width / 100
    np.testing.assert_allclose(percent_to_pixels(np.array([21.078694635245363, 44.86484692101405]), 320, 240),
                               [67.45182283278516, 107.67563261043372], rtol=1e-15)  # fmt: skip


@settings(max_examples=60)
@given(
    w=st.integers(16, 4000),
    h=st.integers(16, 4000),
    seed=st.integers(0, 2**32 - 1),
)
def test_prediction_result_parses_back_to_the_same_landmarks(w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    landmarks = rng.uniform(0, 1, size=(N, 2)) * [w, h]
    conf = rng.uniform(0, 1, size=N)
    items = prediction_result(landmarks, w, h, SCHEME, conf)
    rng.shuffle(items)  # order carries nothing: the label does
    parsed = parse_annotation(items, SCHEME, w, h)
    assert parsed.ok, parsed.problems(SCHEME)
    np.testing.assert_allclose(parsed.landmarks, landmarks, rtol=1e-12, atol=1e-9)
    assert not moved_landmarks(parsed, landmarks, w, h).any()


def test_result_item_has_the_label_studio_shape() -> None:
    landmarks = np.tile([[32.0, 24.0]], (N, 1))
    pred = prediction(landmarks, 320, 240, SCHEME, model_version="r3", face_confidence=0.87,
                      landmark_confidence=np.full(N, 0.9))  # fmt: skip
    assert pred["model_version"] == "r3" and pred["score"] == pytest.approx(0.87)
    item = pred["result"][5]
    assert item["from_name"] == "kp" and item["to_name"] == "image" and item["type"] == "keypointlabels"
    assert item["original_width"] == 320 and item["original_height"] == 240
    assert item["value"]["x"] == pytest.approx(10.0) and item["value"]["y"] == pytest.approx(10.0)
    assert item["value"]["keypointlabels"] == [SCHEME.landmark_names[5]]
    assert item["score"] == pytest.approx(0.9)
    assert len({it["id"] for it in pred["result"]}) == N


def test_nan_landmarks_are_left_out_and_points_outside_are_clipped() -> None:
    landmarks = np.full((N, 2), 50.0)
    landmarks[3] = np.nan
    landmarks[4] = [-10.0, 500.0]
    items = prediction_result(landmarks, 100, 100, SCHEME)
    assert len(items) == N - 1
    by_label = {it["value"]["keypointlabels"][0]: it["value"] for it in items}
    assert (by_label[SCHEME.landmark_names[4]]["x"], by_label[SCHEME.landmark_names[4]]["y"]) == (0.0, 100.0)
    parsed = parse_annotation(items, SCHEME, 100, 100)
    # a point the reviewer deleted is missing: NaN with visibility 0, not an error
    assert parsed.missing == [3] and parsed.ok and np.isnan(parsed.landmarks[3]).all()
    assert parsed.visibility[3] == 0 and (np.delete(parsed.visibility, 3) == 2).all()
    assert not parse_annotation([], SCHEME, 100, 100).ok  # but an annotation with no point at all is
    assert "no landmark placed" in parse_annotation([], SCHEME, 100, 100).problems(SCHEME)


def test_duplicate_unknown_and_size_problems_are_reported() -> None:
    landmarks = np.full((N, 2), 20.0)
    items = prediction_result(landmarks, 200, 100, SCHEME)
    dup = copy.deepcopy(items[2])
    dup["id"] = "x"
    unknown = copy.deepcopy(items[0])
    unknown["value"]["keypointlabels"] = ["nose-ish"]
    other = {"from_name": "bbox", "to_name": "image", "type": "rectanglelabels", "value": {}}
    parsed = parse_annotation(items[1:] + [dup, unknown, other], SCHEME, 200, 100)
    assert parsed.missing == [0] and not parsed.ok
    assert parsed.duplicate == [SCHEME.landmark_names[2]]
    assert "nose-ish" in parsed.unknown and "bbox:rectanglelabels" in parsed.unknown
    text = parsed.problems(SCHEME)
    assert SCHEME.landmark_names[2] in text and "nose-ish" in text
    assert not parse_annotation(items, SCHEME, 201, 100).ok  # the image changed size


def test_choice_is_read_and_json_min_flat_items_parse() -> None:
    landmarks = np.arange(N * 2, dtype=np.float64).reshape(N, 2) + 1
    items = prediction_result(landmarks, 50, 60, SCHEME)
    flat = [{**it["value"], "original_width": 50, "original_height": 60} for it in items]
    parsed = parse_annotation(flat, SCHEME)
    assert parsed.ok
    np.testing.assert_allclose(parsed.landmarks, landmarks, rtol=1e-12)
    choice = {"from_name": "face_status", "to_name": "image", "type": "choices", "value": {"choices": ["no face"]}}
    assert parse_annotation(items + [choice], SCHEME).choice == "no face"


def test_moved_uses_origin_and_distance() -> None:
    landmarks = np.full((N, 2), 40.0)
    items = prediction_result(landmarks, 100, 100, SCHEME)
    for it in items:
        it["origin"] = "prediction"
    items[1]["value"]["x"] += 5.0  # moved through the API: no origin change, only the coordinates
    items[2]["origin"] = "prediction-changed"  # the editor says so even for a tiny drag
    parsed = parse_annotation(items, SCHEME, 100, 100)
    moved = moved_landmarks(parsed, landmarks, 100, 100)
    assert moved.tolist() == [i in (1, 2) for i in range(N)]
    shown = landmarks.copy()
    shown[7] = np.nan  # not shown, placed by the reviewer
    assert moved_landmarks(parsed, shown, 100, 100)[7]
