"""The round flow checks every precondition before its first step (issue 11 item 8), on a real Prefect API."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotations.store import Store
from flows.config import STCConfig
from flows.errors import PreflightError
from flows.ingest_steps import ingest_source
from flows.stc import stc_round
from pipnet_core.schemes import get_scheme


def test_a_round_without_holdout_fails_before_its_first_step(tmp_path: Path, demo_images: dict[str, Path]) -> None:
    url = str(tmp_path / "store")
    Store.create(url, get_scheme("300w"))
    ingest_source(url, str(demo_images["labeled"]), "pts", split="train")
    with pytest.raises(PreflightError, match="no human-labeled holdout faces") as err:
        stc_round(url, 0, STCConfig.tiny().to_dict())
    assert len(err.value.problems) == 1
    store = Store.open(url)
    assert store.rounds() == [] and store.completed_steps(0) == {}  # no config written, no step run
