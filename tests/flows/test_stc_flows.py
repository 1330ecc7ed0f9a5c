"""The STC loop end to end on tiny data, on a real Prefect API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from annotations.store import Store
from flows import checkpoints, evaluation, labeling, training
from flows.config import STCConfig
from flows.stc import ROUND_STEPS, next_round, pool_labeling, stc, stc_round

TINY = STCConfig.tiny()


def test_stc_runs_round_zero_and_a_self_training_round(tiny_store: str) -> None:
    results = stc(tiny_store, rounds=1, schedule="confidence", config=TINY.to_dict())
    assert [r["round"] for r in results] == [0, 1]
    store = Store.open(tiny_store)
    for k in (0, 1):
        assert set(ROUND_STEPS) <= set(store.completed_steps(k))
        metrics = store.read_round_json(k, "metrics.json")
        assert metrics["faces"] + metrics["calibration_faces"] == 12 and np.isfinite(metrics["nme"])
        assert store.read_round_json(k, "config.json")["schedule"] == "confidence"
        assert b"holdout metrics per round" in store.read_round_file(k, "report.md").lower()
    pool_ids = set(store.samples(split="pool")["sample_id"])
    pseudo0 = store.pseudo_labels(0).frame
    assert set(pseudo0["sample_id"]) == pool_ids and len(pseudo0) == len(pool_ids)
    assert set(pseudo0["level"]) <= {"std", "cls2", "cls3", "review"}
    # the holdout never gets a pseudo-label and is never sent to review
    holdout = set(store.samples(split="holdout")["sample_id"])
    assert not holdout & set(store.labels(source="pseudo").frame["sample_id"])
    review = store.completed_steps(1)["review"]
    assert review["selected"] >= 1 and review["written"] >= 1 and Path(review["import_file"]).exists()
    tasks = json.loads(Path(review["import_file"]).read_text())
    assert not holdout & {t["data"]["sample_id"] for t in tasks}
    assert next_round(tiny_store) == 2


def test_a_round_that_dies_resumes_after_its_last_completed_step(
    tiny_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TINY.replace(shard_size=8)  # three shards for 24 pool faces
    real = labeling.label_shard
    calls: list[str] = []

    def flaky(store_url: str, k: int, shard: str, cfg_json: str) -> dict[str, int]:
        calls.append(shard)
        if shard.endswith("00001.json"):
            raise RuntimeError("simulated crash while labeling a shard")
        return real(store_url, k, shard, cfg_json)

    monkeypatch.setattr(labeling, "label_shard", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        stc_round(tiny_store, 0, cfg.to_dict())
    store = Store.open(tiny_store)
    done = store.completed_steps(0)
    assert {"train", "evaluate"} <= set(done) and "label_pool" not in done
    checkpoint = Path(checkpoints.checkpoint_path(store, 0))
    stamp = checkpoint.stat().st_mtime_ns

    monkeypatch.setattr(labeling, "label_shard", real)
    stc_round(tiny_store, 0, cfg.to_dict())
    assert checkpoint.stat().st_mtime_ns == stamp  # training was not redone
    assert set(ROUND_STEPS) <= set(store.completed_steps(0))
    pseudo = store.pseudo_labels(0).frame
    assert pseudo["sample_id"].is_unique and len(pseudo) == 24  # each label exactly once


@pytest.mark.dask
def test_label_pool_on_a_dask_cluster_equals_the_thread_runner(tiny_store: str, tmp_path: Path) -> None:
    from distributed import LocalCluster

    from tests.conftest import service_missing
    from tests.flows.conftest import copy_store

    if not os.environ.get("PREFECT_API_URL"):
        service_missing("Prefect API server", "Dask workers need PREFECT_API_URL (each would start its own server)")
    cfg = TINY
    training.train_round(tiny_store, 0, cfg, progress=False)
    Store.open(tiny_store).write_round_json(0, "config.json", cfg.to_dict())
    evaluation.evaluate_round(tiny_store, 0, cfg)
    other = copy_store(tiny_store, tmp_path / "copy")
    threads = pool_labeling(tiny_store, 0, cfg.to_dict())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        dask = pool_labeling(other, 0, cfg.replace(dask_address=cluster.scheduler_address).to_dict())
    assert threads["labeled"] == dask["labeled"] == 24
    a, b = Store.open(tiny_store).pseudo_labels(0), Store.open(other).pseudo_labels(0)
    ia, ib = np.argsort(a.frame["sample_id"].to_numpy()), np.argsort(b.frame["sample_id"].to_numpy())
    assert (a.frame["sample_id"].to_numpy()[ia] == b.frame["sample_id"].to_numpy()[ib]).all()
    np.testing.assert_allclose(a.landmarks[ia], b.landmarks[ib], atol=1e-4)


def test_a_round_finishes_with_its_report_when_label_studio_is_down(
    tiny_store: str, demo_images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from annotations.review.push import SETTING_PENDING

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: Label Studio is down when the review step connects
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_TOKEN", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT", str(demo_images["pool"].parent))
    stc_round(tiny_store, 0, TINY.to_dict())
    store = Store.open(tiny_store)
    assert set(ROUND_STEPS) <= set(store.completed_steps(0))
    assert b"holdout metrics per round" in store.read_round_file(0, "report.md").lower()
    review = store.completed_steps(0)["review"]
    assert review["selected"] >= 1 and review["pending"] == review["selected"] and review["error"]
    pending = store.get_setting(SETTING_PENDING)
    assert len(pending) == review["selected"] and {p["round"] for p in pending} == {0}


def test_cross_fitting_labels_each_pool_half_with_the_fold_model_that_never_trained_on_it(tiny_store: str) -> None:
    from annotations.ingest.crops import inference_crop_boxes
    from flows.report import epochs_trained
    from pipnet_core.predict import Predictor

    cfg = TINY.replace(cross_fit=True, flip_tta=False)
    stc(tiny_store, rounds=1, schedule="confidence", config=cfg.to_dict())
    store = Store.open(tiny_store)
    assert not checkpoints.has_checkpoint(store, 0, training.fold_checkpoint(0))  # round 0 labels with its model
    info = store.read_round_json(1, "training_set.json")
    folds = [st for st in info["stages"] if "fold" in st]
    assert [st["fold"] for st in folds] == [0, 1]
    # fold f trained on people's labels and fold f's pseudo-labels only
    trained = store.read_round_json(1, "training_set.json")
    ids = np.array(trained["sample_ids"])
    is_pseudo = np.isin(ids, store.samples(split="pool")["sample_id"].to_numpy())
    for st in folds:
        pseudo_faces = sum(g["faces"] for g in st["groups"] if g["source"] == "pseudo")
        assert pseudo_faces == int((training.fold_of(ids[is_pseudo]) == st["fold"]).sum())
    assert epochs_trained(store)[1][0] == cfg.train.epochs  # the fold models are not the round's training
    # round 1's pseudo-labels: a fold-0 face is labeled by fold 1's model, not by the round's own model
    labels = store.pseudo_labels(1)
    frame = labels.frame.reset_index(drop=True)
    samples = store.samples().set_index("sample_id").loc[frame["sample_id"]].reset_index()
    boxes = inference_crop_boxes(samples, evaluation.round_mapping(store, 1), cfg.crop_scale)
    uris = samples["image_uri"].tolist()
    fold = training.fold_of(frame["sample_id"])
    for f in (0, 1):
        rows = np.flatnonzero(fold == f)[:3]
        assert len(rows)
        other = checkpoints.checkpoint_path(store, 1, training.fold_checkpoint(1 - f))
        own = checkpoints.checkpoint_path(store, 1)
        by_other = Predictor.from_checkpoint(other, backend="torch").predict([uris[i] for i in rows], boxes[rows])
        by_own = Predictor.from_checkpoint(own, backend="torch").predict([uris[i] for i in rows], boxes[rows])
        np.testing.assert_allclose(labels.landmarks[rows], by_other.landmarks, atol=1e-3)
        assert not np.allclose(labels.landmarks[rows], by_own.landmarks, atol=1e-3)
