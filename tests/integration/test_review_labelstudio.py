"""Push and pull against a real Label Studio server (annotations/review)."""

from __future__ import annotations

import copy
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import annotations.review.pull as pull_module
from annotations.review.client import (
    ENV_TOKEN,
    LabelStudioClient,
    RetryPolicy,
    ReviewAuthError,
    ReviewUnavailable,
    connect,
)
from annotations.review.config import config_labels, labeling_config
from annotations.review.convert import parse_annotation
from annotations.review.export_file import write_import_file
from annotations.review.project import ImageAccess, default_title
from annotations.review.pull import pull_reviews
from annotations.review.push import push_reviews
from annotations.review.status import review_status
from annotations.store import Store
from tests.integration.conftest import start_test_server
from tests.integration.review_helpers import MODEL, SCHEME, N, make_store, project_tasks
from tests.integration.review_helpers import reviewer_result as _reviewer_result
from tests.integration.review_helpers import setup_store as _setup
from tools.labelstudio_server import LabelStudioServer

pytestmark = pytest.mark.labelstudio


def test_push_50_faces_with_predictions_and_push_again_adds_nothing(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, access = _setup(tmp_path, label_studio)
    pool, holdout, human = ids[:50], ids[50], ids[51]
    report = push_reviews(store, client, ids, round=1, access=access, chunk_size=20, title="push test")
    assert report.pushed == 50 and report.pending == 0 and report.failed == 0
    assert set(report.refused) == {holdout, human}
    assert "holdout" in report.refused[holdout] and "person" in report.refused[human]
    pid = store.get_setting("labelstudio.project_id")
    assert pid == report.project_id
    project = client.project(pid)
    assert config_labels(project["label_config"]) == list(SCHEME.landmark_names)  # the server kept our config
    assert project["model_version"] == MODEL

    tasks = project_tasks(client, pid)
    assert sorted(t["data"]["sample_id"] for t in tasks) == sorted(pool)
    pseudo = store.pseudo_labels(1)
    by_sample = {sid: i for i, sid in enumerate(pseudo.frame["sample_id"])}
    samples = store.samples().set_index("sample_id")
    for task in tasks:
        (pred,) = task["predictions"]
        i = by_sample[task["data"]["sample_id"]]
        assert pred["model_version"] == MODEL
        assert pred["score"] == pytest.approx(float(pseudo.frame["face_confidence"].iat[i]), abs=1e-6)
        assert task["data"]["label_id"] == pseudo.frame["label_id"].iat[i] and task["data"]["round"] == 1
        s = samples.loc[task["data"]["sample_id"]]
        parsed = parse_annotation(pred["result"], SCHEME, int(s["width"]), int(s["height"]))
        assert parsed.ok
        np.testing.assert_allclose(parsed.landmarks, pseudo.landmarks[i], atol=1e-4)
        scores = {it["value"]["keypointlabels"][0]: it["score"] for it in pred["result"]}
        np.testing.assert_allclose([scores[name] for name in SCHEME.landmark_names], pseudo.landmark_confidence[i],
                                   atol=1e-6)  # fmt: skip

    # The image behind a task is served to the token's user (local files + storage).
    task = tasks[0]
    resp = client._http.get(task["data"]["image"], headers={"Authorization": f"Token {label_studio.token}"})
    assert resp.status_code == 200
    assert resp.content == Path(samples.loc[task["data"]["sample_id"], "image_uri"]).read_bytes()

    again = push_reviews(store, client, ids, round=1, access=access, title="push test")
    assert again.pushed == 0 and again.already_in_review == 50 and again.recovered == 0
    assert len(project_tasks(client, pid)) == 50
    status = review_status(store, client)
    assert status["pushed"] == 50 and status["server_tasks"] == 50 and status["pending"] == 0


def test_crash_between_import_and_bookkeeping_is_recovered_without_duplicates(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, access = _setup(tmp_path, label_studio, n=12)
    real_add_reviews = store.add_reviews

    def crash(rows: pd.DataFrame) -> int:
        raise RuntimeError("process died after the import")

    monkeypatch.setattr(store, "add_reviews", crash)
    with pytest.raises(RuntimeError, match="died"):
        push_reviews(store, client, ids[:12], round=1, access=access, title="crash test")
    monkeypatch.setattr(store, "add_reviews", real_add_reviews)
    assert store.reviews().empty  # the store never heard of the import
    report = push_reviews(store, client, ids[:12], round=1, access=access, title="crash test")
    assert report.recovered == 12 and report.pushed == 0
    pid = store.get_setting("labelstudio.project_id")
    tasks = project_tasks(client, pid)
    assert sorted(t["data"]["sample_id"] for t in tasks) == sorted(ids[:12])  # no duplicates
    latest = store.reviews().set_index("sample_id")
    assert set(latest.index) == set(ids[:12]) and (latest["status"] == "pushed").all()
    assert set(latest["task_id"]) == {t["id"] for t in tasks}


def test_reviewer_work_is_pulled_exactly_once_and_updates_supersede(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, access = _setup(tmp_path, label_studio, n=10)
    push = push_reviews(store, client, ids[:10], round=1, access=access, title="pull test")
    assert push.pushed == 10
    pid = push.project_id
    tasks = {t["data"]["sample_id"]: t for t in project_tasks(client, pid)}
    samples = store.samples().set_index("sample_id")
    pseudo = store.pseudo_labels(1)
    shown = {sid: pseudo.landmarks[i] for i, sid in enumerate(pseudo.frame["sample_id"])}
    ls = client.sdk()
    admin = client.whoami()["email"]

    expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, use_origin in ((0, True), (1, False), (2, True)):
        sid = ids[k]
        W, H = int(samples.at[sid, "width"]), int(samples.at[sid, "height"])
        # Targets on a quarter-pixel grid are exact in float32, so "exactly" can be checked to 1e-6 px.
        moves = {i: (float(W // 3) + i * 0.25, float(H // 2) - i * 0.5) for i in (k, 30, 45 + k)}
        result = _reviewer_result(tasks[sid]["predictions"][0]["result"], moves, W, H, origin=use_origin)
        ls.annotations.create(id=tasks[sid]["id"], result=result, lead_time=4.0)
        want = shown[sid].astype(np.float64).copy()
        moved = np.zeros(N, dtype=bool)
        for i, xy in moves.items():
            want[i] = xy
            moved[i] = True
        expected[sid] = (want, moved)
    skipped, rejected, broken = ids[3], ids[4], ids[5]
    ls.annotations.create(id=tasks[skipped]["id"], result=[], was_cancelled=True)
    no_face = {"from_name": "face_status", "to_name": "image", "type": "choices", "value": {"choices": ["no face"]}}
    ls.annotations.create(id=tasks[rejected]["id"], result=[no_face])
    W, H = int(samples.at[broken, "width"]), int(samples.at[broken, "height"])
    twice = _reviewer_result(tasks[broken]["predictions"][0]["result"], {}, W, H, origin=True)
    twice.append({**copy.deepcopy(twice[7]), "id": "again"})  # the nose-bridge point placed a second time
    ann_broken = ls.annotations.create(id=tasks[broken]["id"], result=twice)

    report = pull_reviews(store, client)
    assert (report.completed, report.skipped, report.rejected, report.invalid) == (3, 1, 1, 1)
    corrected = store.labels(source="corrected")
    assert len(corrected) == 3
    for r, sid in enumerate(corrected.frame["sample_id"]):
        want, moved = expected[sid]
        assert np.abs(corrected.landmarks[r].astype(np.float64) - want).max() < 1e-6
        assert corrected.moved[r].tolist() == moved.tolist()
        row = corrected.frame.iloc[r]
        assert row["annotator"] == admin and row["ls_task_id"] == tasks[sid]["id"]
        assert row["parent_label_id"] == tasks[sid]["data"]["label_id"] and row["round"] == 1
        assert row["ls_annotation_id"] > 0
    latest = store.reviews().set_index("sample_id")["status"]
    assert latest[skipped] == "skipped" and latest[rejected] == "rejected" and latest[ids[0]] == "completed"
    assert latest[broken] == "pushed"  # still open: the reviewer must fix it
    rejects = store.rejects()
    assert any("no face" in r for r in rejects["reason"])
    bad = rejects[rejects["sample_id"] == broken].iloc[0]
    assert f"task {tasks[broken]['id']}" in bad["location"] and "placed more than once" in bad["reason"]
    assert SCHEME.landmark_names[7] in bad["reason"]
    assert broken not in set(corrected.frame["sample_id"])  # kept out of training
    st = review_status(store, client)
    assert (st["completed"], st["skipped"], st["rejected"], st["pushed"]) == (3, 1, 1, 5)

    n_rejects = len(rejects)
    again = pull_reviews(store, client)
    assert (again.completed, again.skipped, again.rejected) == (0, 0, 0)
    assert len(store.labels(source="corrected")) == 3 and len(store.rejects()) == n_rejects

    # Incremental: without the safety overlap only the task changed since the last pull comes back, plus
    # the task stamped exactly at the watermark (the filter is inclusive).
    monkeypatch.setattr(pull_module, "OVERLAP_S", 0.0)
    sid = ids[1]
    W, H = int(samples.at[sid, "width"]), int(samples.at[sid, "height"])
    first = client.annotations(tasks[sid]["id"])[0]
    newer = copy.deepcopy(first["result"])
    for it in newer:
        if it["value"]["keypointlabels"][0] == SCHEME.landmark_names[10]:
            it["value"]["x"], it["value"]["y"] = 100.0 * 12.5 / W, 100.0 * 20.25 / H
    ls.annotations.update(id=first["id"], result=newer)
    update = pull_reviews(store, client)
    assert update.tasks_seen == 2 and update.completed == 1 and update.updated == 1
    current = store.current_labels()
    row = int(np.flatnonzero(current.frame["sample_id"].to_numpy() == sid)[0])
    assert current.frame["source"].iat[row] == "corrected"
    np.testing.assert_allclose(current.landmarks[row][10], [12.5, 20.25], atol=1e-6)
    assert (current.landmarks[row][30] == expected[sid][0][30]).all()
    assert len(store.labels(source="corrected")) == 4  # the old version stays, superseded
    assert pull_reviews(store, client).completed == 0

    # The reviewer fixes the broken one: it comes in as a correction.
    ls.annotations.update(id=ann_broken.id, result=_reviewer_result(tasks[broken]["predictions"][0]["result"], {},
                                                                    W, H, origin=True))  # fmt: skip
    assert pull_reviews(store, client).completed == 1


def test_wrong_token_is_a_clear_error_without_the_token(
    label_studio: LabelStudioServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = secrets.token_hex(20)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ReviewAuthError) as err:
        connect(label_studio.url, wrong)
    text = str(err.value)
    assert ENV_TOKEN in text and "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN" in text and "401" in text
    assert wrong not in text and wrong not in caplog.text and wrong not in repr(err.value)
    # From the environment, and a token that looks like a personal access token (a JWT).
    fake_jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJl"
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv(ENV_TOKEN, fake_jwt)
    with pytest.raises(ReviewAuthError) as err2:
        connect()
    assert ENV_TOKEN in str(err2.value) and fake_jwt not in str(err2.value) and fake_jwt not in caplog.text


def test_import_file_without_a_server_then_found_by_push(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, access = _setup(tmp_path, label_studio, n=6)
    out = write_import_file(store, ids, 1, out_dir=tmp_path / "export", document_root=label_studio.document_root)
    assert out.tasks == 6 and len(out.refused) == 2
    assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in out.message and str(out.path) in out.message
    tasks = json.loads(out.path.read_text())
    assert all(t["data"]["image"].startswith("/data/local-files/?d=faces-") for t in tasks)
    # The user imports it by hand into a project of the default title ...
    project = client.create_project(default_title(store), (out.path.parent / "labeling_config.xml").read_text())
    assert client.import_tasks(project["id"], tasks)
    # ... then a push finds those tasks instead of importing them twice.
    report = push_reviews(store, client, ids, round=1, access=access)
    assert report.project_id == project["id"] and report.recovered == 6 and report.pushed == 0
    assert len(project_tasks(client, project["id"])) == 6
    assert labeling_config(SCHEME) == (out.path.parent / "labeling_config.xml").read_text()


def test_a_store_without_a_project_does_not_pull_another_stores_project_of_the_same_title(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    """Two stores in folders of the same name have the same default title; only the one that wrote an
    import file may adopt a project by that title (found by the round test of rounds 0 and 1)."""
    first, ids, access = _setup(tmp_path / "a", label_studio, n=4)
    second, _ = make_store(tmp_path / "b", label_studio.document_root / f"faces-{secrets.token_hex(4)}", n=4, seed=1)
    assert default_title(first) == default_title(second)
    push_reviews(first, client, ids, round=1, access=access, title=default_title(first))
    report = pull_reviews(second, client)
    assert second.get_setting("labelstudio.project_id") is None and report.completed == 0
    write_import_file(second, list(second.samples("pool")["sample_id"]), 1, out_dir=tmp_path / "export",
                      document_root=label_studio.document_root)  # fmt: skip
    pull_reviews(second, client)  # told to create a project of that title: it adopts it
    assert second.get_setting("labelstudio.project_id") == first.get_setting("labelstudio.project_id")


def test_server_killed_mid_push_recovers_without_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_test_server(tmp_path / "ls-kill")  # its own server: this test kills it
    try:
        store, ids = make_store(tmp_path, server.document_root / "faces", n=50)
        access = ImageAccess(server.document_root)
        fast = RetryPolicy(attempts=3, initial_delay_s=0.1, max_delay_s=0.5, timeout_s=20)
        client = connect(server.url, server.token, retry=fast)
        real_import = client.import_tasks
        calls = []

        def import_then_die(project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
            calls.append(len(tasks))
            if len(calls) == 2:
                server.kill()  # kill -9 before the second chunk reaches it
            return real_import(project_id, tasks)

        monkeypatch.setattr(client, "import_tasks", import_then_die)
        report = push_reviews(store, client, ids, round=1, access=access, chunk_size=10)
        assert report.pushed == 10 and report.pending == 40 and report.error
        assert "did not answer" in report.error
        assert store.get_setting("labelstudio.pending_push")
        with pytest.raises(ReviewUnavailable):
            pull_reviews(store, client)
        client.close()

        server.restart()
        with connect(server.url, server.token, retry=fast) as again:
            # The next run is asked for nothing new: the pending faces go first.
            report2 = push_reviews(store, again, [], round=1, access=access, chunk_size=10)
            assert report2.pushed == 40 and report2.pending == 0 and report2.recovered == 0
            tasks = project_tasks(again, report2.project_id)
        sids = [t["data"]["sample_id"] for t in tasks]
        assert len(sids) == 50 and sorted(sids) == sorted(ids[:50])
        assert store.get_setting("labelstudio.pending_push") == []
        assert len(store.in_review()) == 50
    finally:
        server.stop()


def test_cli_helpers_push_pull_and_status_from_the_environment(
    tmp_path: Path, label_studio: LabelStudioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from annotations.review.cli_helpers import pull_if_configured, push_or_export, status_report

    store, ids, _ = _setup(tmp_path, label_studio, n=4)
    monkeypatch.delenv("PIPSTC_LABEL_STUDIO_URL", raising=False)
    offline = push_or_export(str(store.url), ids, 1, out_dir=tmp_path / "offline")
    assert offline["tasks"] == 4 and Path(offline["import_file"]).is_file()
    assert pull_if_configured(store)["configured"] is False
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv(ENV_TOKEN, label_studio.token)
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT", str(label_studio.document_root))
    pushed = push_or_export(str(store.url), ids, 1, title="cli helpers")
    assert pushed["pushed"] == 4 and pushed["refused"] == 2 and pushed["pending"] == 0
    pulled = pull_if_configured(str(store.url))
    assert pulled["configured"] is True and pulled["completed"] == 0 and pulled["tasks_seen"] == 4
    st = status_report(str(store.url))
    assert st["pushed"] == 4 and st["server_tasks"] == 4 and st["project_id"] == pushed["project_id"]
    assert label_studio.token not in json.dumps([offline, pushed, pulled, st], default=str)


MODEL2 = "pipnet-r18-round2"


def _add_round2(store: Store, sids: list[str], seed: int = 7) -> None:
    """Round-2 pseudo-labels (model MODEL2) for ``sids``: new landmarks, face and landmark confidences."""
    rng = np.random.default_rng(seed)
    samples = store.samples().set_index("sample_id").loc[sids]
    sizes = samples[["width", "height"]].to_numpy(dtype=np.float64)
    landmarks = (rng.uniform(0.1, 0.9, size=(len(sids), N, 2)) * sizes[:, None, :]).astype(np.float32)
    store.add_labels(
        pd.DataFrame({"sample_id": sids, "source": "pseudo", "round": 2, "model_version": MODEL2,
                      "face_confidence": rng.uniform(0.2, 0.9, len(sids)).astype(np.float32), "level": "std"}),
        landmarks,
        landmark_confidence=rng.uniform(0, 1, size=(len(sids), N)).astype(np.float32),
    )  # fmt: skip


def test_newer_round_refreshes_open_tasks_of_older_rounds_and_pull_finds_the_parent(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, access = _setup(tmp_path, label_studio, n=9)
    pool = ids[:9]
    first = push_reviews(store, client, pool[:6], round=1, access=access, title="refresh test")
    assert first.pushed == 6 and first.refreshed == 0 and first.not_refreshed == 0
    pid = first.project_id
    tasks1 = {t["data"]["sample_id"]: t for t in project_tasks(client, pid)}
    samples = store.samples().set_index("sample_id")
    ls = client.sdk()
    # Finished on the server but not pulled yet (the store still calls them open): one done, one skipped.
    ls.annotations.create(id=tasks1[pool[0]]["id"], result=tasks1[pool[0]]["predictions"][0]["result"])
    ls.annotations.create(id=tasks1[pool[1]]["id"], result=[], was_cancelled=True)

    # Round 2: new pseudo-labels for the open faces 0-3 and the new faces 6-8; face 4 and 5 get none.
    _add_round2(store, pool[:4] + pool[6:])
    round2 = store.pseudo_labels(2)
    # The caller's view holds the pushed faces and face 2 only: face 3 falls back to the store's round 2.
    given = round2.take(round2.frame["sample_id"].isin(pool[6:] + [pool[2]]).to_numpy())
    second = push_reviews(store, client, pool[6:], round=2, labels=given, access=access, title="refresh test")
    assert second.pushed == 3 and second.error is None
    assert (second.refreshed, second.not_refreshed) == (2, 2)  # faces 2, 3 refreshed; 4, 5 have no round-2 label
    assert second.model_version == MODEL2 and client.project(pid)["model_version"] == MODEL2
    assert second.as_dict()["refreshed"] == 2

    by_sample = {sid: i for i, sid in enumerate(round2.frame["sample_id"])}
    tasks = {t["data"]["sample_id"]: t for t in project_tasks(client, pid)}
    assert len(tasks) == 9
    for sid in pool[2:4]:
        preds = {p["model_version"]: p for p in tasks[sid]["predictions"]}
        assert sorted(preds) == sorted([MODEL, MODEL2])
        i = by_sample[sid]
        W, H = int(samples.at[sid, "width"]), int(samples.at[sid, "height"])
        parsed = parse_annotation(preds[MODEL2]["result"], SCHEME, W, H)
        assert parsed.ok
        np.testing.assert_allclose(parsed.landmarks, round2.landmarks[i], atol=1e-4)
        assert preds[MODEL2]["score"] == pytest.approx(float(round2.frame["face_confidence"].iat[i]), abs=1e-6)
        scores = {it["value"]["keypointlabels"][0]: it["score"] for it in preds[MODEL2]["result"]}
        np.testing.assert_allclose([scores[n] for n in SCHEME.landmark_names], round2.landmark_confidence[i],
                                   atol=1e-6)  # fmt: skip
        assert tasks[sid]["data"]["round"] == 1  # the task itself is unchanged
    for sid in pool[:2] + pool[4:6]:  # finished (not touched) or without a round-2 label
        assert [p["model_version"] for p in tasks[sid]["predictions"]] == [MODEL]
    for sid in pool[6:]:
        assert [p["model_version"] for p in tasks[sid]["predictions"]] == [MODEL2]
    # No review rows for refreshes: each face still has its one "pushed" event of the first push.
    events = store.reviews(latest=False)
    assert len(events) == 9 and (events["status"] == "pushed").all()
    assert set(events.loc[events["sample_id"].isin(pool[2:4]), "round"]) == {1}

    again = push_reviews(store, client, pool[6:], round=2, labels=given, access=access, title="refresh test")
    assert (again.pushed, again.already_in_review, again.refreshed, again.not_refreshed) == (0, 3, 0, 2)
    assert sum(len(t["predictions"]) for t in project_tasks(client, pid)) == 11  # 9 tasks + 2 refreshes
    assert len(store.reviews(latest=False)) == 9

    # Pull: a correction started from the round-2 prediction has the round-2 pseudo-label as parent;
    # one started from the round-1 prediction keeps the round-1 pseudo-label.
    pseudo1 = store.pseudo_labels(1)
    by_sample1 = {sid: i for i, sid in enumerate(pseudo1.frame["sample_id"])}
    want = {}
    for sid, version, k in ((pool[2], MODEL2, 7), (pool[3], MODEL, 9)):
        pred = next(p for p in tasks[sid]["predictions"] if p["model_version"] == version)
        W, H = int(samples.at[sid, "width"]), int(samples.at[sid, "height"])
        target = (float(W // 3) + 0.25, float(H // 2) - 0.5)
        result = _reviewer_result(pred["result"], {k: target}, W, H, origin=False)
        ls.annotations.create(id=tasks[sid]["id"], result=result, parent_prediction=pred["id"])
        want[sid] = (version, k)
    pulled = pull_reviews(store, client)
    assert pulled.completed == 3  # faces 0, 2, 3
    corrected = store.labels(source="corrected")
    rows = {sid: r for r, sid in enumerate(corrected.frame["sample_id"])}
    r2 = corrected.frame.iloc[rows[pool[2]]]
    assert r2["parent_label_id"] == round2.frame["label_id"].iat[by_sample[pool[2]]]
    assert r2["round"] == 2 and r2["model_version"] == MODEL2
    assert np.flatnonzero(corrected.moved[rows[pool[2]]]).tolist() == [7]  # measured against round 2
    r3 = corrected.frame.iloc[rows[pool[3]]]
    assert r3["parent_label_id"] == pseudo1.frame["label_id"].iat[by_sample1[pool[3]]]
    assert r3["round"] == 1 and r3["model_version"] == MODEL
    assert np.flatnonzero(corrected.moved[rows[pool[3]]]).tolist() == [9]
    r0 = corrected.frame.iloc[rows[pool[0]]]  # made before the refresh, no parent prediction given
    assert r0["parent_label_id"] == tasks1[pool[0]]["data"]["label_id"] and not corrected.moved[rows[pool[0]]].any()
    latest = store.reviews().set_index("sample_id")
    assert latest.at[pool[2], "status"] == "completed" and latest.at[pool[2], "round"] == 1

    # A third push finds nothing left to refresh among the finished ones; faces 4, 5 stay not refreshed.
    third = push_reviews(store, client, [], round=2, access=access, title="refresh test")
    assert (third.refreshed, third.not_refreshed) == (0, 2)
