"""prefect.yaml deploys to a process work pool and a worker runs a deployment (real server only)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from annotations.store import Store
from pipnet_core.schemes import get_scheme
from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _prefect(*args: str, env: dict[str, str], timeout: int = 300) -> str:
    out = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


async def _deployment(name: str):  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_deployment_by_name(name)


def test_prefect_yaml_deploys_and_a_worker_runs_the_ingestion_deployment(
    tmp_path: Path, demo_images: dict[str, Path]
) -> None:
    if not os.environ.get("PREFECT_API_URL"):
        service_missing("Prefect API server", "deployments and workers need PREFECT_API_URL (scripts/test.sh sets it)")
    store = tmp_path / "store"
    Store.create(str(store), get_scheme("300w"))
    pool = "pipstc-process"  # the pool prefect.yaml names (`deploy --all` ignores --pool)
    env = dict(os.environ, PIPSTC_STORE=str(store), PIPSTC_PROJECT_DIR=str(ROOT), PREFECT_CLI_PROMPT="false")
    _prefect("work-pool", "create", pool, "--type", "process", "--overwrite", env=env)
    _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(ROOT / "prefect.yaml"), env=env)

    scheduled = asyncio.run(_deployment("stc-next-round/scheduled-stc-round"))
    assert scheduled.parameters["store"] == str(store)
    assert scheduled.schedules and not any(s.active for s in scheduled.schedules)  # inactive until a user turns it on
    assert scheduled.global_concurrency_limit is not None and scheduled.global_concurrency_limit.limit == 1
    sync = asyncio.run(_deployment("review-sync/review-sync"))
    assert sync.schedules and sync.schedules[0].active

    _prefect(
        "deployment", "run", "ingestion/ingestion",
        "-p", f"source={demo_images['labeled']}", "-p", "format=pts", "-p", "split=train",
        env=env,
    )  # fmt: skip
    _prefect("worker", "start", "--pool", pool, "--run-once", env=env, timeout=400)
    samples = Store.open(str(store)).samples()
    assert len(samples) == 24 and set(samples["split"]) == {"train"}
