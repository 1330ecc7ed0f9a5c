"""Review without a server: the Label Studio import file (annotations/review/export_file.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from label_studio_sdk.label_interface import LabelInterface

from annotations.review.client import ReviewConfigError
from annotations.review.convert import parse_annotation
from annotations.review.export_file import write_import_file
from annotations.review.push import push_reviews
from annotations.store import Store
from pipnet_core.schemes import get_scheme

SCHEME = get_scheme("aflw")


def _store(tmp_path: Path) -> tuple[Store, list[str], np.ndarray]:
    images = tmp_path / "data" / "faces"
    images.mkdir(parents=True)
    store = Store.create(tmp_path / "store", SCHEME)
    ids = [f"s{i}" for i in range(4)]
    for sid in ids:
        (images / f"{sid}.png").write_bytes(b"not decoded here")
    store.add_samples(
        pd.DataFrame(
            {"sample_id": ids, "image_uri": [str(images / f"{s}.png") for s in ids], "width": 200, "height": 100,
             "box": [[0.0, 0.0, 200.0, 100.0]] * 4, "split": ["pool", "pool", "pool", "holdout"], "dataset": "t"}
        )
    )  # fmt: skip
    landmarks = np.random.default_rng(0).uniform(5, 95, size=(3, SCHEME.num_landmarks, 2)).astype(np.float32)
    store.add_labels(
        pd.DataFrame({"sample_id": ids[:3], "source": "pseudo", "round": 2, "model_version": "m2",
                      "face_confidence": [0.5, 0.6, 0.7]}),
        landmarks,
    )  # fmt: skip
    return store, ids, landmarks


def test_import_file_holds_valid_tasks_and_says_how_to_import(tmp_path: Path) -> None:
    store, ids, landmarks = _store(tmp_path)
    report = write_import_file(store, ids, 2, out_dir=tmp_path / "out")
    assert report.tasks == 3 and set(report.refused) == {"s3"}
    assert report.document_root == (tmp_path / "data").resolve()
    tasks = json.loads(report.path.read_text())
    assert [t["data"]["sample_id"] for t in tasks] == ids[:3]
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=faces/s0.png"
    li = LabelInterface((tmp_path / "out" / "labeling_config.xml").read_text())
    for t, lm in zip(tasks, landmarks, strict=True):
        (pred,) = t["predictions"]
        assert pred["model_version"] == "m2" and li.validate_prediction(pred, return_errors=True) == []
        np.testing.assert_allclose(parse_annotation(pred["result"], SCHEME, 200, 100).landmarks, lm, atol=1e-4)
    text = (tmp_path / "out" / "README.txt").read_text()
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={(tmp_path / 'data').resolve()}" in text
    assert str((tmp_path / "data" / "faces").resolve()) in text  # the Local Files storage to add
    assert store.reviews().empty  # nothing counts as pushed


def test_local_images_without_a_document_root_are_a_config_error(tmp_path: Path, monkeypatch) -> None:
    store, ids, _ = _store(tmp_path)
    monkeypatch.delenv("PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT", raising=False)

    class NoServer:  # push refuses before any request when images cannot be served
        url = "http://unused"

    with pytest.raises(ReviewConfigError, match="PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT"):
        push_reviews(store, NoServer(), ids, 2)  # type: ignore[arg-type]
