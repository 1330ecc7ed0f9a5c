"""Store faults of issue 11: one lock per real store, the holdout guard by image content, lock temp files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from annotations.store import Store
from annotations.store._lock import writer_lock
from pipnet_core.schemes import scheme_from_dict
from tests.unit.test_store import make_samples

TINY = scheme_from_dict({"name": "tiny5", "num_landmarks": 5})


def test_a_store_opened_through_a_symlink_shares_the_lock_of_its_real_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Store.create(tmp_path / "store", TINY)
    os.symlink(tmp_path / "store", tmp_path / "link")
    linked = Store.open(tmp_path / "link")
    monkeypatch.setenv("PIPSTC_LOCK_TIMEOUT_S", "1")
    with real.lock():  # the same process writes through the other path inside its own hold
        assert linked.add_samples(make_samples(2)) == 2
    assert writer_lock(real._fs) is writer_lock(linked._fs)
    assert linked.url == str(tmp_path / "link")  # messages keep the path the user gave
