"""Event-driven rounds: the review sync's correction events reach the Prefect server and prefect.yaml's
trigger starts the next round (real Prefect server, real Label Studio, prefect.yaml deployed as is)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from annotations.review.client import ENV_TOKEN, connect
from annotations.review.project import ImageAccess
from annotations.review.push import push_reviews
from flows.review_steps import CORRECTION_EVENT, store_resource
from flows.stc import review_sync
from tests.conftest import service_missing
from tests.integration.conftest import start_test_server
from tests.integration.test_review_labelstudio import make_store, project_tasks

pytestmark = [pytest.mark.labelstudio, pytest.mark.prefect]

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENT = "stc-next-round/scheduled-stc-round"
DEADLINE_S = 300  # generous: the server's trigger service evaluates events in the background


def _prefect(*args: str, env: dict[str, str]) -> None:
    out = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def _trigger() -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (round_deployment,) = [d for d in spec["deployments"] if d["name"] == "scheduled-stc-round"]
    (trigger,) = round_deployment["triggers"]
    return trigger


def _until(what: str, probe: Any) -> Any:
    """Poll ``probe`` until it returns something truthy (the server works in the background)."""
    stop = time.monotonic() + DEADLINE_S
    while time.monotonic() < stop:
        found = probe()
        if found:
            return found
        time.sleep(2)
    pytest.fail(f"{what} did not happen within {DEADLINE_S} s")


def _events(resource_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(resource=EventResourceFilter(id=[resource_id]), event=EventNameFilter(name=[CORRECTION_EVENT]))
    with get_client(sync_client=True) as client:
        return list(client.read_events(flt, limit=50).events)  # the API's page limit


def _triggered_runs(deployment: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        flt = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep.id]))
        runs = client.read_flow_runs(flow_run_filter=flt)
    return [r for r in runs if r.created_by is not None and r.created_by.type == "AUTOMATION"]


def _delete_runs(runs: list[Any]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for run in runs:
            client.delete_flow_run(run.id)  # a worker of another test must not run it


def test_corrections_pulled_by_the_review_sync_start_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.environ.get("PREFECT_API_URL"):
        service_missing("Prefect API server", "deployment triggers need PREFECT_API_URL (scripts/test.sh sets it)")
    trigger = _trigger()
    assert trigger["type"] == "event" and trigger["expect"] == [CORRECTION_EVENT] and trigger["posture"] == "Reactive"
    n = int(trigger["threshold"])
    assert n <= 50  # one page of the events API
    server = start_test_server(tmp_path / "ls")  # its own server: a long-lived one is not needed here
    runs: list[Any] = []
    try:
        store, ids = make_store(tmp_path, server.document_root / "faces", n=n + 2)
        env = dict(os.environ, PIPSTC_STORE=str(store.url), PIPSTC_PROJECT_DIR=str(ROOT), PREFECT_CLI_PROMPT="false")
        _prefect("work-pool", "create", "pipstc-process", "--type", "process", "--overwrite", env=env)
        _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(ROOT / "prefect.yaml"), env=env)

        with connect(server.url, server.token) as client:
            pushed = push_reviews(store, client, ids[:n], round=1, access=ImageAccess(server.document_root))
            assert pushed.pushed == n
            ls = client.sdk()
            for task in project_tasks(client, pushed.project_id):  # the reviewer accepts every prediction
                result = [{k: v for k, v in it.items() if k != "score"} for it in task["predictions"][0]["result"]]
                ls.annotations.create(id=task["id"], result=result)
        monkeypatch.setenv("PIPSTC_LABEL_STUDIO_URL", server.url)
        monkeypatch.setenv(ENV_TOKEN, server.token)
        resource = store_resource(store)["prefect.resource.id"]
        assert _events(resource) == []

        synced = review_sync(str(store.url))
        assert synced["corrected"] == n and synced["events"] == n
        arrived = _until(f"{n} correction events", lambda: (e := _events(resource)) and len(e) >= n and e)
        assert len(arrived) == n  # one event per correction, each naming the correction
        corrected = set(store.labels(source="corrected").frame["label_id"])
        assert {e.payload["label_id"] for e in arrived} == corrected
        runs = _until("a flow run started by the trigger", lambda: _triggered_runs(DEPLOYMENT))
        assert runs[0].parameters["store"] == str(store.url)
    finally:
        if runs:
            _delete_runs(runs)
        server.stop()
