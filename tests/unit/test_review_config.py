"""The Label Studio labeling config generated from a scheme (annotations/review/config.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from annotations.review.config import REGION_COLOURS, STATUS_CHOICES, labeling_config
from annotations.review.convert import prediction
from annotations.review.tasks import validate_tasks
from pipnet_core.schemes import BUILTIN_SCHEMES, get_scheme, scheme_from_dict


@pytest.mark.parametrize("name", BUILTIN_SCHEMES)
def test_one_label_per_landmark_in_scheme_order(name: str) -> None:
    scheme = get_scheme(name)
    root = ET.fromstring(labeling_config(scheme))
    controls = root.findall("KeyPointLabels")
    assert len(controls) == 1
    kp = controls[0]
    assert kp.get("name") == "kp" and kp.get("toName") == "image"
    labels = kp.findall("Label")
    assert [lab.get("value") for lab in labels] == list(scheme.landmark_names)
    assert [lab.get("model_index") for lab in labels] == [str(i) for i in range(scheme.num_landmarks)]
    assert all(lab.get("maxUsages") == "1" for lab in labels)
    regions = scheme.region_of()
    assert [lab.get("background") for lab in labels] == [REGION_COLOURS[r] for r in regions]
    image = root.find("Image")
    assert image is not None and image.get("name") == "image" and image.get("value") == "$image"
    assert image.get("zoom") == "true"


def test_reject_choices_are_optional() -> None:
    scheme = get_scheme("aflw")
    with_choices = ET.fromstring(labeling_config(scheme, reject_choices=True))
    choices = with_choices.find("Choices[@name='face_status']")
    assert choices is not None and choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == list(STATUS_CHOICES)
    assert ET.fromstring(labeling_config(scheme, reject_choices=False)).find("Choices[@name='face_status']") is None


def test_odd_landmark_names_are_escaped() -> None:
    scheme = scheme_from_dict(
        {"name": "odd", "num_landmarks": 3, "landmark_names": ['a "quoted"', "b & c", "<d>"], "flip": None}
    )
    labels = ET.fromstring(labeling_config(scheme)).find("KeyPointLabels").findall("Label")
    assert [lab.get("value") for lab in labels] == ['a "quoted"', "b & c", "<d>"]


@pytest.mark.parametrize("name", ["300w", "wflw"])
def test_sdk_label_interface_accepts_config_and_our_predictions(name: str) -> None:
    scheme = get_scheme(name)
    li = LabelInterface(labeling_config(scheme))
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(0, [640, 480], size=(scheme.num_landmarks, 2))
    pred = prediction(
        landmarks, 640, 480, scheme, model_version="r1", face_confidence=0.7,
        landmark_confidence=rng.uniform(0, 1, scheme.num_landmarks),
    )  # fmt: skip
    assert li.validate_prediction(pred, return_errors=True) == []
    pred["result"][0]["value"]["keypointlabels"] = ["not-a-landmark"]
    assert li.validate_prediction(pred, return_errors=True) != []


def test_validate_tasks_flags_exactly_the_bad_predictions() -> None:
    scheme = get_scheme("300w")
    config = labeling_config(scheme)
    rng = np.random.default_rng(1)
    tasks = []
    for _ in range(6):
        lm = rng.uniform(0, [300, 200], size=(scheme.num_landmarks, 2))
        pred = prediction(lm, 300, 200, scheme, model_version="m", face_confidence=0.5)
        tasks.append({"data": {}, "predictions": [pred]})
    tasks[1]["predictions"][0]["result"][4]["value"]["keypointlabels"] = ["lm_99"]  # not in the config
    tasks[3]["predictions"][0]["result"][7]["value"]["x"] = 130.0  # outside the image
    tasks[4]["predictions"][0]["result"][2]["value"]["y"] = -3.0  # the SDK lets this pass; we do not
    tasks[5]["predictions"][0]["result"][0]["from_name"] = "zzz"
    errors = validate_tasks(tasks, config)
    assert [bool(e) for e in errors] == [False, True, False, True, True, True]
    assert "lm_99" in " ".join(errors[1]) and "Region 7" in " ".join(errors[3]) and "zzz" in " ".join(errors[5])
