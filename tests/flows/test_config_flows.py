"""The config a round runs with, through the command line and the flows (issue 11 items 9 and 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotations.store import Store
from flows.cli import main
from flows.config import STCConfig


def test_run_uses_the_schedule_of_its_config_file_and_a_rerun_refuses_a_conflicting_value(
    tiny_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(STCConfig.tiny(schedule="confidence").to_dict()))
    assert main(["run", tiny_store, "--rounds", "0", "--config", str(path)]) == 0
    store = Store.open(tiny_store)
    assert store.read_round_json(0, "config.json")["schedule"] == "confidence"
    capsys.readouterr()

    assert main(["round", tiny_store, "0", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: round 0 was started with another config (") and err.count("\n") == 1
    assert "epochs: saved 2, asked 3" in err and "--force-config" in err
    assert store.read_round_json(0, "config.json")["train"]["epochs"] == 2

    assert main(["round", tiny_store, "0", "--epochs", "3", "--force-config"]) == 0
    assert store.read_round_json(0, "config.json")["train"]["epochs"] == 3
