"""The round's review glue: a Label Studio that is down does not stop a round; a bad setting does."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from annotations.review.client import ReviewConfigError
from annotations.store import Store
from flows.review_steps import pull_corrections
from pipnet_core.schemes import get_scheme


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


def test_pull_goes_on_when_label_studio_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store")
    Store.create(store, get_scheme("300w"))
    monkeypatch.setenv("PIPSTC_LABEL_STUDIO_URL", f"http://127.0.0.1:{_closed_port()}")
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
