"""Review that pays, against a real Label Studio: one budget per round, rejected and skipped faces, the audit
slice's estimate of the pool's quality, and recalibration on reviewed faces across real rounds.

The reviewer works through the SDK as the editor saves (annotations on the pushed tasks); the truth
of synthetic faces comes from the generator.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest

from annotations.review.audit import audit_outcomes, estimate_pool_quality, read_audit
from annotations.review.client import ENV_DOCUMENT_ROOT, ENV_TOKEN, ENV_URL, LabelStudioClient
from annotations.store import Store
from annotations.store.ids import sample_id
from annotations.store.shards import plan_pool_shards
from annotations.store.training import training_set
from flows.config import STCConfig
from flows.review_steps import pull_corrections, push_round
from pipnet_core.metrics import nme
from synthetic_faces import DOMAINS, generate_batch
from tests.integration.test_review_labelstudio import SCHEME, _reviewer_result, _setup, project_tasks
from tools.labelstudio_server import LabelStudioServer

pytestmark = pytest.mark.labelstudio


@pytest.fixture
def client(label_studio: LabelStudioServer) -> LabelStudioClient:
    from annotations.review.client import connect

    with connect(label_studio.url, label_studio.token) as c:
        yield c


@pytest.fixture
def ls_env(label_studio: LabelStudioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a team sets: push_round and the rounds reach the test server."""
    monkeypatch.setenv(ENV_URL, label_studio.url)
    monkeypatch.setenv(ENV_TOKEN, label_studio.token)
    monkeypatch.setenv(ENV_DOCUMENT_ROOT, str(label_studio.document_root))


def _tasks_by_sample(client: LabelStudioClient, store: Store) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for task in project_tasks(client, store.get_setting("labelstudio.project_id")):
        out.setdefault(task["data"]["sample_id"], []).append(task)
    return out


def _answer_with(client: LabelStudioClient, task: dict[str, Any], truth: np.ndarray, width: int, height: int) -> None:
    """The reviewer drags every landmark of the task's prediction to ``truth`` (N, 2) pixels and submits."""
    moves = {i: (float(x), float(y)) for i, (x, y) in enumerate(truth)}
    client.sdk().annotations.create(id=task["id"], result=_reviewer_result(task["predictions"][0]["result"], moves,
                                                                          width, height, origin=True))  # fmt: skip


def _pseudo(store: Store, k: int, ids: list[str], confidence: np.ndarray, seed: int) -> None:
    """Round-k pseudo-labels of ``ids`` (random landmarks) with the given face confidence."""
    rng = np.random.default_rng(seed)
    size = store.samples().set_index("sample_id").loc[ids, ["width", "height"]].to_numpy(dtype=np.float64)
    landmarks = (rng.uniform(0.1, 0.9, size=(len(ids), SCHEME.num_landmarks, 2)) * size[:, None, :]).astype(np.float32)
    conf = np.full((len(ids), SCHEME.num_landmarks), 0.5, np.float32)
    store.add_labels(pd.DataFrame({"sample_id": ids, "source": "pseudo", "round": k, "model_version": f"round-{k}",
                                   "face_confidence": np.asarray(confidence, np.float32), "level": "std"}),
                     landmarks, landmark_confidence=conf)  # fmt: skip


def test_pushing_twice_in_a_round_sends_nothing_new_until_the_budget_is_raised(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, ls_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from flows.cli import main

    store, ids, _ = _setup(tmp_path, label_studio, n=50)
    cfg = STCConfig(review_budget=0.1, audit_min=2, review_project="budget test")
    store.write_round_json(1, "config.json", cfg.to_dict())  # as a round writes it
    first = push_round(store.url, 1)
    assert (first["pushed"], first["audit"], first["budget"]) == (5, 2, 5)
    assert first["message"] == "round 1: 5 of 5 sent"
    again = push_round(store.url, 1)
    assert again["pushed"] == 0 and again["selected"] == 0 and again.get("already_in_review", 0) == 0
    assert again["message"].startswith("round 1: 5 of 5 sent (the round's budget is spent")
    assert len(_tasks_by_sample(client, store)) == 5

    assert main(["review", "push", str(store.url), "--round", "1", "--budget", "0.2"]) == 0
    assert "round 1: 10 of 10 sent" in capsys.readouterr().err
    tasks = _tasks_by_sample(client, store)
    assert len(tasks) == 10 and all(len(t) == 1 for t in tasks.values())  # the difference, no duplicates
    assert len(read_audit(store, 1)["sample_ids"]) == 2  # ceil(20% of 10) = 2: no new audit face was needed
    assert push_round(store.url, 1, budget=0.2)["pushed"] == 0


def test_rejected_faces_leave_the_pool_and_skipped_ones_come_back_in_a_later_budget(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, ls_env: None
) -> None:
    store, ids, _ = _setup(tmp_path, label_studio, n=20)
    pool = ids[:20]
    cfg = STCConfig(review_budget=0.25, audit_share=0.0, reselect_skipped_after=2, review_project="skip test")
    first = push_round(store.url, 1, cfg)
    assert first["pushed"] == 5
    tasks = _tasks_by_sample(client, store)
    rejected, skipped, corrected = list(tasks)[:3]
    no_face = {"from_name": "face_status", "to_name": "image", "type": "choices", "value": {"choices": ["no face"]}}
    ls = client.sdk()
    ls.annotations.create(id=tasks[rejected][0]["id"], result=[no_face])
    ls.annotations.create(id=tasks[skipped][0]["id"], result=[], was_cancelled=True)
    samples = store.samples().set_index("sample_id")
    w, h = int(samples.at[corrected, "width"]), int(samples.at[corrected, "height"])
    _answer_with(client, tasks[corrected][0], store.pseudo_labels(1).landmarks[pool.index(corrected)] + 1.0, w, h)
    pulled = pull_corrections(str(store.url))
    assert (pulled["completed"], pulled["skipped"], pulled["rejected"]) == (1, 1, 1)

    # Round 2: the rejected face is not pseudo-labeled again and not trained on; the skipped one is.
    planned = {s for shard in plan_pool_shards(store, 2, 64) for s in store.read_round_json(2, shard)}
    assert rejected not in planned and skipped in planned and corrected not in planned
    trained = set(training_set(store, 2).sample_ids)
    assert rejected not in trained and skipped in trained and corrected in trained
    conf = np.linspace(0.2, 0.9, len(pool))
    conf[pool.index(skipped)] = 0.01  # the least sure face of rounds 2 and 3
    planned_ids = sorted(planned)
    _pseudo(store, 2, planned_ids, conf[[pool.index(s) for s in planned_ids]], seed=2)
    second = push_round(store.url, 2, cfg)
    assert second["pushed"] == 5 and second.get("already_in_review", 0) == 0 and second["sent"] == 5
    tasks = _tasks_by_sample(client, store)
    assert len(tasks[skipped]) == 1 and rejected in tasks and len(tasks) == 5 + 5  # skipped waits, rejected stays out

    _pseudo(store, 3, planned_ids, conf[[pool.index(s) for s in planned_ids]], seed=3)
    third = push_round(store.url, 3, cfg)
    assert third["pushed"] == 5 and third["message"] == "round 3: 5 of 5 sent"
    tasks = _tasks_by_sample(client, store)
    assert sorted(t["data"]["round"] for t in tasks[skipped]) == [1, 3]  # a new task of the new round
    assert sum(len(t) for t in tasks.values()) == 15 and len(tasks) == 14 and len(tasks[rejected]) == 1
    latest = store.reviews(latest=True).set_index("sample_id")
    assert latest.at[skipped, "status"] == "pushed" and int(latest.at[skipped, "round"]) == 3


def _synthetic_pool(
    tmp_path: Path, server: LabelStudioServer, n: int, seed: int
) -> tuple[Store, np.ndarray, np.ndarray]:
    """``n`` generator faces in the pool, pseudo-labelled with a known error; returns store, truth, real NME."""
    images, truth, _ = generate_batch(n, dataclasses.replace(DOMAINS["wild"], image_size=96), seed=seed)
    folder = server.document_root / f"audit-{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        path = folder / f"face_{i:03d}.png"
        cv2.imwrite(str(path), images[i][:, :, ::-1])
        box = [2.0, 2.0, 94.0, 94.0]
        rows.append({"sample_id": sample_id(path.read_bytes(), box), "image_uri": str(path), "width": 96, "height": 96,
                     "box": box, "split": "pool", "dataset": "synthetic"})  # fmt: skip
    store = Store.create(tmp_path / "store", SCHEME)
    store.add_samples(pd.DataFrame(rows))
    rng = np.random.default_rng(seed)
    d = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=1)
    scale = np.where(rng.random(n) < 0.7, rng.uniform(0.01, 0.06, n), rng.uniform(0.08, 0.3, n))
    pseudo = np.clip(truth + rng.normal(size=truth.shape) * (scale * d)[:, None, None] / np.sqrt(2), 0.5, 95.5)
    real = nme(pseudo, truth, SCHEME)
    predicted = real * rng.lognormal(0.0, 0.3, n)  # the model's doubt follows its real error, with noise
    store.add_labels(pd.DataFrame({"sample_id": [r["sample_id"] for r in rows], "source": "pseudo", "round": 1,
                                   "predicted_nme": predicted.astype(np.float32),
                                   "face_confidence": np.exp(-10 * predicted).astype(np.float32), "level": "std"}),
                     pseudo.astype(np.float32))  # fmt: skip
    return store, truth, nme(store.pseudo_labels(1).landmarks, truth, SCHEME)


def test_the_audit_slice_is_random_and_its_estimate_holds_the_truth(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, ls_env: None
) -> None:
    store, truth, real = _synthetic_pool(tmp_path, label_studio, n=100, seed=31)
    share = float(np.mean(real < 0.08))  # the truth: the pool's share of good pseudo-labels
    cfg = STCConfig(review_budget=0.4, audit_share=0.5, audit_min=20, audit_seed=7, review_project="audit test")
    pushed = push_round(store.url, 1, cfg)
    assert (pushed["pushed"], pushed["audit"]) == (40, 20)
    record = read_audit(store, 1)
    assert record["seed"] == 7 and record["p"] == pytest.approx(0.2)
    where = {s: i for i, s in enumerate(store.samples()["sample_id"])}
    audit = [where[s] for s in record["sample_ids"]]
    selected = [i for s, i in where.items() if s not in set(record["sample_ids"])]
    tasks = _tasks_by_sample(client, store)
    for sid, (task,) in tasks.items():
        _answer_with(client, task, truth[where[sid]], 96, 96)
    assert pull_corrections(str(store.url))["completed"] == 40

    est = estimate_pool_quality(audit_outcomes(store), 0.08)
    assert est["n"] == 20 and est["rounds"] == [1]
    assert est["share"] == pytest.approx(np.mean(real[audit] < 0.08))  # from the audited faces only
    assert est["low"] <= share <= est["high"], (est, share)
    chosen = [i for i in selected if store.samples()["sample_id"][i] in tasks]
    assert np.mean(real[chosen] < 0.08) < est["low"]  # the faces chosen by confidence are much worse
    assert np.median(real[audit]) < np.median(real[chosen])


def test_rounds_recalibrate_on_reviewed_faces_and_the_next_round_records_the_thresholds(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, ls_env: None
) -> None:
    """Round 0 pushes to Label Studio, a reviewer answers with the generator's truth, round 1's sync pulls the
    corrections and its calibrate step refits the confidence and chooses thresholds; round 2's config records them."""
    from annotations.formats.pts import read_pts
    from flows.calibration import CALIBRATION_FILE
    from flows.demo import make_demo_data
    from flows.ingest_steps import ingest_source
    from flows.stc import resolve_config, stc_round
    from pipnet_core.curriculum import create_policy

    images = make_demo_data(label_studio.document_root / f"demo-{secrets.token_hex(4)}", sizes=(24, 12, 24), seed=5)
    url = str(tmp_path / "store")
    Store.create(url, SCHEME)
    ingest_source(url, str(images["labeled"]), "pts", split="train")
    ingest_source(url, str(images["holdout"]), "pts", split="holdout")
    ingest_source(url, str(images["pool"]), "pool", boxes_file=str(images["labeled"].parent / "pool_boxes.csv"))
    cfg = STCConfig.tiny(schedule="confidence", review_budget=0.5, audit_min=4, recalibrate_min_faces=6,
                         review_project="rounds test")  # fmt: skip

    stc_round(url, 0, cfg.to_dict())
    store = Store.open(url)
    assert store.read_round_json(0, CALIBRATION_FILE)["recalibrated"] is False  # nobody has reviewed anything yet
    review = store.completed_steps(0)["review"]
    assert (review["pushed"], review["audit"], review["budget"]) == (12, 4, 12)
    samples = store.samples().set_index("sample_id")
    for sid, (task,) in _tasks_by_sample(client, store).items():
        truth = read_pts(images["pool_truth"] / (Path(samples.at[sid, "image_uri"]).stem + ".pts"))
        _answer_with(client, task, truth, int(samples.at[sid, "width"]), int(samples.at[sid, "height"]))

    stc_round(url, 1, cfg.to_dict())
    assert store.completed_steps(1)["sync_reviews"]["completed"] == 12
    record = store.read_round_json(1, CALIBRATION_FILE)
    assert record["recalibrated"] is True and record["fitted_on"]["reviewed"] == 12
    assert record["fitted_on"]["audit"] == 4 and record["fitted_on"]["rounds"] == [0]
    assert record["holdout_model"] is not None and record["holdout_evaluation_spearman"]["faces"] > 0
    chosen = record["thresholds"]
    assert chosen != {n: getattr(cfg, n) for n in chosen}
    assert store.read_round_json(1, "confidence.json") != record["holdout_model"]  # the refitted model is used
    # Round 1's pseudo-labels were routed with the chosen thresholds ...
    pseudo = store.pseudo_labels(1).frame
    policy = create_policy("confidence", **chosen)
    assert pseudo["level"].tolist() == policy.levels(2, pseudo["predicted_nme"].to_numpy()).tolist()
    # ... and round 2's resolved config records them.
    resolve_config(url, 2, cfg.to_dict())
    recorded = store.read_round_json(2, "config.json")
    assert {n: recorded[n] for n in chosen} == chosen
    report = store.read_round_file(1, "report.md").decode()
    assert "estimated share of the pool under NME 0.08:" in report and "no audited face" not in report
    assert "Correction deltas" in report and "from reviews" in report
