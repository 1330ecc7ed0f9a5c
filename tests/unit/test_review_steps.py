"""The round's review glue: a Label Studio that is down does not stop a round; a bad setting does."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotations.review.client import ReviewConfigError
from annotations.store import Store
from flows.review_steps import pull_corrections
from pipnet_core.schemes import get_scheme
from tools.labelstudio_server import free_port


def test_pull_goes_on_when_label_studio_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store")
    Store.create(store, get_scheme("300w"))
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_TOKEN", "0123456789abcdef-secret")
    report = pull_corrections(store)  # retries with backoff (~8 s), then gives up without raising
    assert report["corrected"] == 0 and report["error"]
    assert "0123456789abcdef-secret" not in report["error"]


def test_pull_without_a_token_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store")
    Store.create(store, get_scheme("300w"))
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("PIPSTC_LABEL_STUDIO_TOKEN", raising=False)
    with pytest.raises(ReviewConfigError, match="PIPSTC_LABEL_STUDIO_TOKEN"):
        pull_corrections(store)


def test_without_label_studio_the_round_writes_its_budget_to_an_import_file_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import numpy as np

    from flows.config import STCConfig
    from flows.review_steps import push_round
    from tests.unit.review_store import add_pseudo, make_pool_store, pool_ids

    monkeypatch.delenv("PIPSTC_LABEL_STUDIO_URL", raising=False)
    store = make_pool_store(tmp_path, n=40)
    add_pseudo(store, 1, pool_ids(40), np.linspace(0.01, 0.3, 40))
    cfg = STCConfig(review_budget=0.25, audit_min=3)
    first = push_round(str(store.url), 1, cfg)
    assert (first["budget"], first["audit"], first["selected"], first["written"]) == (10, 3, 10, 10)
    assert first["message"].startswith("round 1: 10 of 10 written to ") and "(no Label Studio)" in first["message"]
    tasks = json.loads(Path(first["import_file"]).read_text())
    # Nothing is recorded as sent, so a rerun writes the same faces: the same audit slice, the same picks.
    again = push_round(str(store.url), 1, cfg)
    assert json.loads(Path(again["import_file"]).read_text()) == tasks and again["sent"] == 0


def test_every_nth_sync_is_a_full_one_and_the_cli_asks_for_one(tmp_path: Path) -> None:
    from annotations.review.pull import SETTING_PULL, full_sync_due
    from flows.cli import build_parser

    store = Store.create(tmp_path / "store", get_scheme("300w"))
    assert full_sync_due(store, 3)  # never synced: the first sync is full
    store.set_setting(SETTING_PULL, {"project_id": 1, "updated_at": None, "since_full": 0})
    assert not full_sync_due(store, 3)  # just had one
    store.set_setting(SETTING_PULL, {"project_id": 1, "updated_at": None, "since_full": 2})
    assert full_sync_due(store, 3) and not full_sync_due(store, 0)
    assert build_parser().parse_args(["review", "pull", "s", "--full"]).full
    assert not build_parser().parse_args(["review", "pull", "s"]).full
