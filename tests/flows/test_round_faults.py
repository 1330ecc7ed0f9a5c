"""A round's steps under retries and reruns (issue 11 items 12, 17 and 20), on tiny data."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipnet_core.export
from annotations.store import Store
from annotations.store.shards import plan_pool_shards
from flows import checkpoints, labeling, training
from flows.config import STCConfig
from flows.stc import pool_labeling

TINY = STCConfig.tiny()


def _train(url: str, k: int, cfg: STCConfig) -> dict:
    result = training.train_round(url, k, cfg, progress=False)
    Store.open(url).mark_step(k, "train", result)  # as the flow's recorded() does
    return result


def _label(url: str, k: int, cfg: STCConfig) -> int:
    return sum(labeling.label_shard(url, k, s, cfg.to_json())["labeled"] for s in plan_pool_shards(
        Store.open(url), k, cfg.shard_size))  # fmt: skip


def _forget_round_files(url: str, k: int, *names: str) -> None:
    folder = Path(Store.open(url).round_path(k))
    for name in names:
        for path in folder.glob(name):
            path.unlink()


def test_new_weights_give_new_pseudo_labels_and_a_retry_adds_nothing(tiny_store: str) -> None:
    first = _train(tiny_store, 0, TINY)
    assert re.fullmatch(r"round-0-[0-9a-f]{8}", first["model_version"])
    assert first["model_version"] == checkpoints.model_version(0, checkpoints.file_sha256(first["checkpoint"]))
    assert _label(tiny_store, 0, TINY) == 24
    pseudo = Store.open(tiny_store).pseudo_labels(0).frame
    assert set(pseudo["model_version"]) == {first["model_version"]}

    _forget_round_files(tiny_store, 0, "shards/*.done.json")  # a retried shard, same checkpoint
    _label(tiny_store, 0, TINY)
    assert len(Store.open(tiny_store).pseudo_labels(0)) == 24

    # the round retrained (its train step redone with other weights): its pool is labeled again
    _forget_round_files(tiny_store, 0, "model.pt", "steps.json", "shards/*", "training_set.json")
    second = _train(tiny_store, 0, TINY.replace(seed=7))
    assert second["model_version"] != first["model_version"]
    _label(tiny_store, 0, TINY)
    pseudo = Store.open(tiny_store).pseudo_labels(0).frame
    assert len(pseudo) == 48 and set(pseudo["model_version"]) == {first["model_version"], second["model_version"]}


def test_the_pool_labeling_flow_exports_onnx_once_and_its_shards_load_it(
    tiny_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TINY.replace(backend="onnx", shard_size=8, max_workers=2)  # three shards on two threads
    _train(tiny_store, 0, cfg)
    exports: list[int] = []
    real = pipnet_core.export._export
    monkeypatch.setattr(pipnet_core.export, "_export", lambda *a, **kw: (exports.append(1), real(*a, **kw))[1])
    result = pool_labeling(tiny_store, 0, cfg.to_dict())
    assert result["labeled"] == 24 and result["failed"] == 0
    assert len(exports) == 1
    store = Store.open(tiny_store)
    onnx = Path(checkpoints.checkpoint_path(store, 0, "model.onnx"))
    assert onnx.parent == Path(checkpoints.checkpoint_path(store, 0)).parent and onnx.is_file()
    assert checkpoints.export_round_onnx(store, 0) == str(onnx) and len(exports) == 1  # current: not redone


def test_an_onnx_file_of_older_weights_is_not_used(tiny_store: str) -> None:
    _train(tiny_store, 0, TINY)
    store = Store.open(tiny_store)
    checkpoints.export_round_onnx(store, 0)
    _forget_round_files(tiny_store, 0, "model.pt", "steps.json", "training_set.json")
    _train(tiny_store, 0, TINY.replace(seed=3))
    with pytest.raises(FileNotFoundError, match="no ONNX export of its model round-0-"):
        checkpoints.round_onnx(store, 0)
    path = checkpoints.export_round_onnx(store, 0)  # exported again, from the new checkpoint
    assert checkpoints.round_onnx(store, 0) == path


def test_a_resumed_training_uses_the_training_set_recorded_when_it_started(tiny_store: str) -> None:
    store = Store.open(tiny_store)
    started = training.round_training_set(store, 0)  # the train step starts: its set is recorded ...
    record = store.read_round_json(0, "training_set.json")
    assert record["label_ids"] == started.label_ids and record["faces"] == 24
    # ... and dies; a correction arrives before the rerun (a pool face a reviewer labeled)
    pool_face = store.samples(split="pool")["sample_id"].iloc[0]
    rows = pd.DataFrame({"sample_id": [pool_face], "source": ["corrected"], "round": [0], "annotator": ["r"]})
    store.add_labels(rows, np.full((1, 68, 2), 50.0, np.float32))
    result = _train(tiny_store, 0, TINY)
    assert result["faces"] == 24  # the recorded set, not the 25 faces the store now offers
    assert os.path.isfile(result["checkpoint"])
    # a new training of a later round chooses again and sees the correction
    assert len(training.round_training_set(store, 1)) >= 25


def test_metrics_come_from_the_evaluation_part_and_confidence_from_the_calibration_part(tiny_store: str) -> None:
    from flows.evaluation import evaluate_round

    _train(tiny_store, 0, TINY)
    metrics = evaluate_round(tiny_store, 0, TINY)
    store = Store.open(tiny_store)
    split = store.read_round_json(0, "holdout_split.json")
    calib, evaluation = set(split["calibration"]), set(split["evaluation"])
    assert not calib & evaluation and calib | evaluation == set(store.samples(split="holdout")["sample_id"])
    assert len(calib) >= 4 and metrics["calibration_faces"] == len(calib)
    assert metrics["faces"] == len(evaluation)
    arrays = np.load(io.BytesIO(store.read_round_file(0, "holdout_predictions.npz")))
    assert set(arrays["sample_ids"]) == evaluation  # the report's curves and worst faces: evaluation faces only
    assert metrics["nme"] == pytest.approx(float(np.mean(arrays["per_face"])))
