"""Refreshing open review tasks when the project shows a newer round (annotations/review/refresh.py).

A fake server plays the few requests the refresh makes, so outages in the middle of a creation can be
staged; the same flow against a real Label Studio is tested in tests/integration/test_review_labelstudio.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from annotations.review.client import LabelStudioClient, RetryPolicy, ReviewRequestError, ReviewUnavailable
from annotations.review.convert import parse_annotation
from annotations.review.push import SETTING_SHOWN_VERSION, _shown
from annotations.review.refresh import _versions, open_older_reviews, refresh_open_tasks
from annotations.review.tasks import refresh_items
from annotations.store import Store
from pipnet_core.schemes import get_scheme

SCHEME = get_scheme("aflw")
N = SCHEME.num_landmarks
PID = 3


class FakeServer:
    """Tasks of one project with their predictions; answers what the refresh asks."""

    def __init__(self, tasks: dict[int, dict[str, Any]]) -> None:
        self.tasks = tasks
        self.created: list[tuple[int, str]] = []
        self.fail_after_create = 0  # creations that are applied, then answered with a timeout

    def iter_tasks(self, project_id: int, *, filters: list[dict[str, Any]], **_: Any) -> Any:
        assert project_id == PID
        wanted = set(filters[0]["value"])
        for tid, t in sorted(self.tasks.items()):
            if t["sample_id"] in wanted:
                yield {
                    "id": tid,
                    "data": {"sample_id": t["sample_id"]},
                    "total_annotations": t.get("annotations", 0),
                    "cancelled_annotations": t.get("skips", 0),
                    "predictions_model_versions": ",".join(p["model_version"] for p in t["predictions"]),
                }

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        return list(self.tasks[task_id]["predictions"])

    def create_prediction(self, task_id: int, result: list[dict[str, Any]], model_version: str, score: Any) -> dict:
        if task_id not in self.tasks:
            raise ReviewRequestError("task gone", 404)
        pred = {"id": 100 + len(self.created), "model_version": model_version, "result": result, "score": score}
        self.tasks[task_id]["predictions"].append(pred)
        self.created.append((task_id, model_version))
        if self.fail_after_create:
            self.fail_after_create -= 1
            raise ReviewUnavailable("POST /api/predictions failed after sending", ambiguous=True)
        return pred


def _store(tmp_path: Path, n: int = 5) -> tuple[Store, list[str], np.ndarray]:
    """Pool faces s0..s{n-1}, pushed in round 1 as tasks 10.. of project PID; round-2 labels for all but the last."""
    store = Store.create(tmp_path / "store", SCHEME)
    ids = [f"s{i}" for i in range(n)]
    store.add_samples(
        pd.DataFrame({"sample_id": ids, "image_uri": [f"/img/{s}.png" for s in ids], "width": 200, "height": 100,
                      "box": [[0.0, 0.0, 200.0, 100.0]] * n, "split": "pool", "dataset": "t"})
    )  # fmt: skip
    rng = np.random.default_rng(1)
    lm1 = rng.uniform(5, 95, size=(n, N, 2)).astype(np.float32)
    labels1 = store.add_labels(
        pd.DataFrame({"sample_id": ids, "source": "pseudo", "round": 1, "model_version": "m1"}), lm1
    )
    lm2 = rng.uniform(5, 95, size=(n - 1, N, 2)).astype(np.float32)
    store.add_labels(
        pd.DataFrame({"sample_id": ids[:-1], "source": "pseudo", "round": 2, "model_version": "m2",
                      "face_confidence": 0.75}),
        lm2,
        landmark_confidence=np.full((n - 1, N), 0.5, dtype=np.float32),
    )  # fmt: skip
    store.add_reviews(
        pd.DataFrame({"sample_id": ids, "round": 1, "status": "pushed", "project_id": PID,
                      "task_id": [10 + i for i in range(n)], "label_id": labels1})
    )  # fmt: skip
    return store, ids, lm2


def _server(ids: list[str]) -> FakeServer:
    return FakeServer(
        {10 + i: {"sample_id": sid, "predictions": [{"id": i, "model_version": "m1"}]} for i, sid in enumerate(ids)}
    )


def test_open_tasks_get_the_newer_prediction_once_finished_ones_are_left_alone(tmp_path: Path) -> None:
    store, ids, lm2 = _store(tmp_path)
    server = _server(ids)
    server.tasks[10]["annotations"] = 1  # finished on the server, not pulled yet
    server.tasks[11]["skips"] = 1
    res = refresh_open_tasks(store, server, PID, 2, "m2")  # type: ignore[arg-type]
    # s2, s3 refreshed; s4 has no round-2 label; s0, s1 finished.
    assert (res.refreshed, res.not_refreshed, res.finished, res.already, res.error) == (2, 1, 2, 0, None)
    assert server.created == [(12, "m2"), (13, "m2")]
    pred = server.tasks[12]["predictions"][-1]
    assert pred["score"] == pytest.approx(0.75)
    np.testing.assert_allclose(parse_annotation(pred["result"], SCHEME, 200, 100).landmarks, lm2[2], atol=1e-4)
    again = refresh_open_tasks(store, server, PID, 2, "m2")  # type: ignore[arg-type]
    assert (again.refreshed, again.already, again.not_refreshed) == (0, 2, 1) and len(server.created) == 2
    assert len(store.reviews(latest=False)) == len(ids)  # no review events for refreshes


def test_an_ambiguous_failure_is_not_resent_and_the_next_run_finds_the_prediction(tmp_path: Path) -> None:
    store, ids, _ = _store(tmp_path)
    server = _server(ids)
    server.fail_after_create = 1  # the first creation reaches the server, its answer is lost
    res = refresh_open_tasks(store, server, PID, 2, "m2")  # type: ignore[arg-type]
    assert res.error and "after sending" in res.error
    assert server.created == [(10, "m2")]  # stopped: nothing re-sent, nothing more tried
    assert res.refreshed == 0 and res.not_refreshed == len(ids)
    again = refresh_open_tasks(store, server, PID, 2, "m2")  # type: ignore[arg-type]
    assert (again.refreshed, again.already, again.not_refreshed, again.error) == (3, 1, 1, None)
    versions = [p["model_version"] for t in server.tasks.values() for p in t["predictions"]]
    assert versions.count("m2") == 4  # one per task with a round-2 label, none twice


def test_tasks_gone_other_versions_and_other_projects(tmp_path: Path) -> None:
    store, ids, _ = _store(tmp_path)
    server = _server(ids)
    del server.tasks[13]  # deleted in Label Studio
    res = refresh_open_tasks(store, server, PID, 2, "m3")  # type: ignore[arg-type]
    assert res.refreshed == 0 and res.not_refreshed == len(ids) and server.created == []  # round 2 is "m2"
    res = refresh_open_tasks(store, server, PID, 2, "m2")  # type: ignore[arg-type]
    assert (res.refreshed, res.not_refreshed) == (3, 2)  # s3 gone, s4 without a label
    assert open_older_reviews(store, PID + 1, 2).empty and len(open_older_reviews(store, PID, 2)) == len(ids)
    assert open_older_reviews(store, PID, 1).empty  # only rounds before the one shown
    store.set_setting(SETTING_SHOWN_VERSION, [2, "m2", PID + 1])
    assert _shown(store, PID) is None and _shown(store, PID + 1) == (2, "m2")
    store.set_setting(SETTING_SHOWN_VERSION, [2, "m2"])  # written by earlier versions: the store's one project
    assert _shown(store, PID) == (2, "m2")


def test_refresh_items_prefer_the_given_labels_then_the_store(tmp_path: Path) -> None:
    store, ids, lm2 = _store(tmp_path)
    round2 = store.pseudo_labels(2)
    only_s1 = round2.take(round2.frame["sample_id"].to_numpy() == "s1")
    only_s1.landmarks[:] = 50.0  # distinguishable from the store's
    sel = refresh_items(store, ["s1", "s2", "s4", "nope"], 2, only_s1)
    got = {it.sample_id: it for it in sel.items}
    assert sorted(got) == ["s1", "s2"] and set(sel.refused) == {"s4", "nope"}
    assert (got["s1"].landmarks == 50.0).all()
    np.testing.assert_array_equal(got["s2"].landmarks, lm2[2])
    assert got["s2"].model_version == "m2" and (got["s2"].width, got["s2"].height) == (200, 100)


def test_model_version_summary_parsing() -> None:
    assert _versions({"predictions_model_versions": "m1,m2"}) == ({"m1", "m2"}, True)
    assert _versions({"predictions_model_versions": "m1, m2"}) == ({"m1", "m2"}, True)  # the PostgreSQL shape
    assert _versions({"predictions_model_versions": ""}) == (set(), True)
    assert _versions({"predictions_model_versions": "x" * 500})[1] is False  # cut by the server: ask the task


def test_create_prediction_is_sent_once_and_not_resent_after_sending() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")  # never sent: safe to retry
        if len(calls) == 2:
            raise httpx.ReadTimeout("no answer")  # sent: the server may have created it
        return httpx.Response(201, json={"id": 5})

    client = LabelStudioClient("http://ls.test", "0" * 40, retry=RetryPolicy(attempts=4, initial_delay_s=0.001),
                               transport=httpx.MockTransport(handler))  # fmt: skip
    with pytest.raises(ReviewUnavailable) as err:
        client.create_prediction(7, [], "m2", 0.5)
    assert err.value.ambiguous and len(calls) == 2
    assert calls[1].method == "POST" and calls[1].url.path.rstrip("/") == "/api/predictions"
    assert json.loads(calls[1].read()) == {"task": 7, "result": [], "model_version": "m2", "score": 0.5}
    assert client.create_prediction(7, [], "m2")["id"] == 5
