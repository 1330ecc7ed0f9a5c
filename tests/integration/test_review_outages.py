"""Label Studio down when a push starts, and a review sync running during a push (issue 11 items 15, 16),
against a real Label Studio and a second process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from annotations.review.cli_helpers import pull_if_configured, push_or_export
from annotations.review.client import ENV_DOCUMENT_ROOT, ENV_TOKEN, ENV_URL, LabelStudioClient, RetryPolicy, connect
from annotations.review.push import SETTING_PENDING, push_reviews
from annotations.store import Store
from tests.integration.review_helpers import project_tasks, reviewer_result, setup_store
from tools.labelstudio_server import LabelStudioServer, free_port

pytestmark = pytest.mark.labelstudio

ROOT = Path(__file__).resolve().parents[2]


def test_label_studio_down_at_push_start_keeps_the_faces_for_the_next_sync_without_duplicates(
    tmp_path: Path, label_studio: LabelStudioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, _ = setup_store(tmp_path, label_studio, n=5)
    monkeypatch.setenv(ENV_TOKEN, label_studio.token)
    monkeypatch.setenv(ENV_DOCUMENT_ROOT, str(label_studio.document_root))
    monkeypatch.setenv(ENV_URL, f"http://127.0.0.1:{free_port()}")
    quick = RetryPolicy(attempts=2, initial_delay_s=0.05)  # give up on the dead URL quickly
    down = push_or_export(store, ids[:3], 1, title="outage", retry=quick)
    assert down["pending"] == 3 and down["pushed"] == 0 and "did not answer" in down["error"]
    assert label_studio.token not in json.dumps(down)
    pending = store.get_setting(SETTING_PENDING)
    assert [(p["sample_id"], p["title"]) for p in pending] == [(i, "outage") for i in ids[:3]]
    down2 = push_or_export(store, ids[:4], 1, title="outage", retry=quick)  # still down: one more, none twice
    assert down2["pending"] == 4 and len(store.get_setting(SETTING_PENDING)) == 4

    monkeypatch.setenv(ENV_URL, label_studio.url)
    synced = pull_if_configured(store)  # the next sync sends them
    assert synced["pending_sent"] == 4 and synced["pending"] == 0 and not synced["error"]
    with connect(label_studio.url, label_studio.token) as c:  # the project the push was for
        assert c.project(synced["project_id"])["title"] == "outage"
    assert store.get_setting(SETTING_PENDING) == []
    again = push_or_export(store, ids[:5], 1, title="outage")  # the next push: only the new face
    assert again["pushed"] == 1 and again["already_in_review"] == 4
    tasks = project_tasks_of(store, label_studio)
    assert sorted(t["data"]["sample_id"] for t in tasks) == sorted(ids[:5])  # every face once


def project_tasks_of(store: Store, server: LabelStudioServer) -> list[dict[str, Any]]:
    with connect(server.url, server.token) as c:
        return project_tasks(c, int(store.get_setting("labelstudio.project_id")))


def test_a_review_sync_in_another_process_writes_while_a_push_waits_on_the_server(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ids, access = setup_store(tmp_path, label_studio, n=6)
    first = push_reviews(store, client, ids[:2], round=1, access=access, title="concurrent")
    task = next(t for t in project_tasks(client, first.project_id) if t["data"]["sample_id"] == ids[0])
    s = store.samples().set_index("sample_id").loc[ids[0]]
    result = reviewer_result(task["predictions"][0]["result"], {3: (10.25, 12.5)}, int(s["width"]),
                             int(s["height"]), origin=True)  # fmt: skip
    client.sdk().annotations.create(id=task["id"], result=result)

    env = {**os.environ, ENV_URL: label_studio.url, ENV_TOKEN: label_studio.token,
           ENV_DOCUMENT_ROOT: str(label_studio.document_root), "PYTHONPATH": str(ROOT),
           "PIPSTC_LOCK_TIMEOUT_S": "5"}  # a sync blocked by the push would fail after 5 s  # fmt: skip
    real_import = client.import_tasks
    synced: list[subprocess.CompletedProcess[str]] = []

    def import_while_a_sync_runs(project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        # The push is between its look-up and its import: run a whole sync in another process now.
        cmd = [sys.executable, "-m", "flows.cli", "review", "pull", str(store.url)]
        synced.append(subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300))
        return real_import(project_id, tasks)

    monkeypatch.setattr(client, "import_tasks", import_while_a_sync_runs)
    report = push_reviews(store, client, ids[2:6], round=1, access=access, title="concurrent")
    (run,) = synced
    assert run.returncode == 0, run.stderr[-2000:]
    pulled = json.loads(run.stdout[run.stdout.index("{"):])
    assert pulled["completed"] == 1 and "StoreLocked" not in run.stderr
    assert report.pushed == 4 and report.error is None
    corrected = Store.open(store.url).labels(source="corrected")
    assert corrected.frame["sample_id"].tolist() == [ids[0]]
    assert tuple(corrected.landmarks[0, 3]) == pytest.approx((10.25, 12.5))
    assert len(project_tasks(client, first.project_id)) == 6
