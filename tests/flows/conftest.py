"""Flow tests run on a real Prefect API: the server scripts/test.sh starts (PREFECT_API_URL), or locally
Prefect's temporary server. Under CI a missing or unhealthy server is a failure."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI, service_missing


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    url = os.environ.get("PREFECT_API_URL")
    if url:
        try:
            ok = httpx.get(url.rstrip("/") + "/health", timeout=30).status_code == 200
        except httpx.HTTPError as e:
            ok, why = False, str(e)
        else:
            why = "health check did not return 200"
        if not ok:
            service_missing("Prefect API server", f"{url}: {why}")
        yield url
        return
    if IN_CI:
        pytest.fail("PREFECT_API_URL is not set: CI runs the flow tests against the server scripts/test.sh starts")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield "ephemeral"


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from flows.demo import make_demo_data

    root = tmp_path_factory.mktemp("faces")
    return make_demo_data(root / "images", sizes=(24, 12, 24), seed=5)


@pytest.fixture
def tiny_store(tmp_path: Path, demo_images: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh store with 24 labeled studio faces, 12 wild holdout faces and a wild pool of 24."""
    from annotations.store import Store
    from flows.ingest_steps import ingest_source
    from pipnet_core.schemes import get_scheme

    monkeypatch.delenv("PIPSTC_LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("PIPSTC_LABEL_STUDIO_TOKEN", raising=False)
    url = str(tmp_path / "store")
    Store.create(url, get_scheme("300w"))
    ingest_source(url, str(demo_images["labeled"]), "pts", split="train")
    ingest_source(url, str(demo_images["holdout"]), "pts", split="holdout")
    boxes = demo_images["labeled"].parent / "pool_boxes.csv"
    ingest_source(url, str(demo_images["pool"]), "pool", boxes_file=str(boxes))
    return url


def copy_store(src: str, dst: Path) -> str:
    shutil.copytree(src, dst)
    return str(dst)
