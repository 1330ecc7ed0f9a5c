"""Reviewer aids and review bookkeeping as pure functions: landmark names in the labeling config, the
doubts line, occluded and deleted points, older lm_XX projects, the several-annotations rule and the
disagreement between annotators (annotations/review)."""

from __future__ import annotations

import copy
import csv
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from annotations.formats.csv import read_csv
from annotations.review.agreement import annotator_disagreement
from annotations.review.config import OCCLUDED, VISIBILITY_NAME, config_labels, labeling_config
from annotations.review.convert import parse_annotation, prediction_result
from annotations.review.status import Outcome, task_state
from annotations.review.tasks import ReviewItem, build_task, doubts_text
from annotations.store import Store
from flows.ingest_steps import export_labels
from pipnet_core.schemes import get_scheme, legacy_landmark_names, scheme_from_dict

S68 = get_scheme("300w")


def test_the_labeling_config_names_landmarks_shows_doubts_and_offers_occluded() -> None:
    root = ET.fromstring(labeling_config(S68))
    labels = root.findall("KeyPointLabels/Label")
    assert [lab.get("value") for lab in labels] == list(S68.landmark_names)
    assert labels[30].get("value") == "nose tip" and labels[30].get("hint") == "30: nose tip (nose)"
    assert root.find("Text").get("value") == "$doubts"
    vis = root.find(f"Choices[@name='{VISIBILITY_NAME}']")
    assert vis.get("perRegion") == "true" and [c.get("value") for c in vis] == [OCCLUDED]
    legacy = labeling_config(S68, names=legacy_landmark_names(68))
    assert config_labels(legacy) == list(legacy_landmark_names(68))


def test_doubts_name_the_five_least_confident_landmarks_with_their_scores() -> None:
    conf = np.linspace(0.9, 0.5, 68)
    conf[[8, 30, 36, 45, 48, 3]] = [0.11, 0.05, 0.31, 0.2, 0.4, np.nan]
    text = doubts_text(conf, S68)
    assert text == ("Least sure (check these first): nose tip (0.05), chin (0.11), left eye outer corner (0.20), "
                    "right eye outer corner (0.31), right mouth corner (0.40)")  # fmt: skip
    assert "no per-landmark confidence" in doubts_text(None, S68)
    item = ReviewItem("s", 1, "l", "http://x/a.png", 100, 80, np.full((68, 2), 5.0), conf, 0.5, 0.1, "m1")
    task = build_task(item, S68)
    assert task["data"]["doubts"] == text
    scores = {it["value"]["keypointlabels"][0]: it.get("score") for it in task["predictions"][0]["result"]}
    assert scores["nose tip"] == pytest.approx(0.05)  # every point shows its own score too


def test_occluded_and_deleted_points_become_visibility_1_and_0() -> None:
    lm = np.stack([np.linspace(10, 90, 68), np.linspace(5, 70, 68)], axis=1)
    items = prediction_result(lm, 100, 80, S68)
    items = [it for it in items if it["value"]["keypointlabels"][0] != "chin"]  # the reviewer deleted the chin
    nose = next(it for it in items if it["value"]["keypointlabels"][0] == "nose tip")
    nose["value"]["x"] += 1.0  # moved it to where the hidden nose tip would be, and ticked "occluded"
    items.append({"id": nose["id"], "from_name": VISIBILITY_NAME, "to_name": "image", "type": "choices",
                  "value": {"x": nose["value"]["x"], "y": nose["value"]["y"], "choices": [OCCLUDED]}})  # fmt: skip
    parsed = parse_annotation(items, S68, 100, 80)
    assert parsed.ok and parsed.choice is None
    assert parsed.visibility[8] == 0 and np.isnan(parsed.landmarks[8]).all()
    assert parsed.visibility[30] == 1 and parsed.landmarks[30, 0] == pytest.approx(lm[30, 0] + 1.0)
    assert (np.delete(parsed.visibility, [8, 30]) == 2).all()


def test_an_older_project_with_lm_labels_is_written_and_read_with_its_own_labels() -> None:
    lm = np.full((68, 2), 20.0)
    lm[17] = [31.0, 12.0]
    items = prediction_result(lm, 100, 80, S68, names=legacy_landmark_names(68))
    assert items[17]["value"]["keypointlabels"] == ["lm_17"]
    parsed = parse_annotation(copy.deepcopy(items), S68, 100, 80)
    assert parsed.ok and tuple(parsed.landmarks[17]) == pytest.approx((31.0, 12.0))


def test_several_annotations_the_newest_non_cancelled_one_wins() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    done_old = Outcome("completed", 1, t0)
    rejected = Outcome("rejected", 2, t0 + timedelta(minutes=1))
    skip_new = Outcome("skipped", 3, t0 + timedelta(minutes=5))
    assert task_state([done_old, rejected, skip_new]) == rejected  # a newer skip does not undo a decision
    assert task_state([skip_new, done_old]) == done_old
    assert task_state([skip_new]) == skip_new
    assert task_state([]) is None
    tie = Outcome("completed", 4, t0 + timedelta(minutes=1))
    assert task_state([tie, rejected]) == tie  # same time: the higher annotation id


def test_disagreement_is_the_nme_between_the_winner_and_each_other_annotation(tmp_path: Path) -> None:
    scheme = scheme_from_dict({"name": "eyes5", "num_landmarks": 5, "norm": [0, 1]})
    store = Store.create(tmp_path / "store", scheme, holdout_fraction=0.0)
    store.add_samples(pd.DataFrame({"sample_id": ["a"], "image_uri": ["a.png"], "width": 100, "height": 100,
                                    "box": [[0.0, 0.0, 100.0, 100.0]], "dataset": "u", "split": "pool"}))  # fmt: skip
    base = np.array([[20.0, 50.0], [60.0, 50.0], [40.0, 60.0], [30.0, 80.0], [50.0, 80.0]], np.float32)
    t0 = pd.Timestamp("2026-01-01T00:00:00Z")
    for aid, shift, minute in ((11, 0.0, 2), (12, 4.0, 1), (13, 2.0, 0)):  # 11 is the newest: the winner
        store.add_labels(pd.DataFrame({"sample_id": ["a"], "source": "corrected", "round": 0, "ls_task_id": [5],
                                       "ls_annotation_id": [aid], "annotator": [f"p{aid}"],
                                       "created_at": [t0 + pd.Timedelta(minutes=minute)]}),
                         (base + [shift, 0.0])[None])  # fmt: skip
    out = annotator_disagreement(store).sort_values("other_annotation_id")
    assert out["annotation_id"].tolist() == [11, 11] and out["other_annotation_id"].tolist() == [12, 13]
    np.testing.assert_allclose(out["nme"], [4.0 / 40.0, 2.0 / 40.0])  # shift / the eye distance of the winner
    assert out["other_annotator"].tolist() == ["p12", "p13"]
    assert annotator_disagreement(store, task_ids=[99]).empty


def test_csv_export_carries_source_round_and_model_version_and_reads_back(tmp_path: Path) -> None:
    scheme = scheme_from_dict({"name": "eyes5", "num_landmarks": 5, "norm": [0, 1]})
    store = Store.create(tmp_path / "store", scheme, holdout_fraction=0.0)
    ids = ["h", "c", "p"]
    store.add_samples(pd.DataFrame({"sample_id": ids, "image_uri": [str(tmp_path / f"{i}.png") for i in ids],
                                    "width": 100, "height": 100, "box": [[0.0, 0.0, 100.0, 100.0]] * 3,
                                    "dataset": "u", "split": ["train", "pool", "pool"]}))  # fmt: skip
    lm = np.full((1, 5, 2), 30.0, np.float32)
    store.add_labels(pd.DataFrame({"sample_id": ["h"], "source": "human", "round": 0, "annotator": ["ann"]}), lm)
    store.add_labels(pd.DataFrame({"sample_id": ["c", "p"], "source": "pseudo", "round": 2, "model_version": "r2-ab"}),
                     np.repeat(lm, 2, axis=0))  # fmt: skip
    occluded = lm.copy()
    occluded[0, 4] = np.nan
    store.add_labels(pd.DataFrame({"sample_id": ["c"], "source": "corrected", "round": 2, "model_version": "r2-ab"}),
                     occluded, visibility=np.array([[2, 1, 2, 2, 0]]))  # fmt: skip
    out = tmp_path / "labels.csv"
    assert export_labels(str(store.url), str(out), "csv") == 3
    rows = {r["image"]: r for r in csv.DictReader(out.open())}
    assert {k: (r["source"], r["round"], r["model_version"]) for k, r in rows.items()} == {
        "h.png": ("human", "0", ""), "c.png": ("corrected", "2", "r2-ab"), "p.png": ("pseudo", "2", "r2-ab")}
    assert rows["h.png"]["annotator"] == "ann"
    for name in ids:  # the importer reads the images back
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((100, 100, 3), ord(name), np.uint8))
    back = read_csv(out, scheme, allow_missing=True)
    assert len(back.rejects) == 1 and "pseudo-label" in back.rejects["reason"].iat[0]
    assert back.rejects["location"].iat[0].startswith("line ")

    coco = tmp_path / "labels.json"
    export_labels(str(store.url), str(coco), "coco")
    doc = json.loads(coco.read_text())
    v = {a["image_id"]: a["keypoints"][2::3] for a in doc["annotations"]}
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    assert {files[k]: vals for k, vals in v.items()}["c.png"] == [2, 1, 2, 2, 0]
    assert {files[k]: vals for k, vals in v.items()}["h.png"] == [2] * 5
