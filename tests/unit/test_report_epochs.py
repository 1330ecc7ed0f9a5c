"""The report says how many epochs each round's model has seen in all (warm starts carry the previous round's)."""

from __future__ import annotations

from pathlib import Path

from annotations.store import Store
from flows.report import _warm_note, epochs_trained
from pipnet_core.schemes import get_scheme


def _round(store: Store, k: int, stages: list[dict]) -> None:
    store.write_round_json(k, "training_set.json", {"faces": 10, "stages": stages})


def test_warm_started_rounds_carry_the_previous_rounds_epochs(tmp_path: Path) -> None:
    store = Store.create(str(tmp_path / "s"), get_scheme("300w"))
    root = str(tmp_path / "s" / "rounds")
    _round(store, 0, [{"name": "train", "epochs": 60, "init_from": None}])
    _round(store, 1, [{"name": "train", "epochs": 20, "init_from": f"{root}/round=0/model.pt"}])
    _round(store, 2, [{"name": "train", "epochs": 20, "init_from": None}])  # retrained from scratch (the paper)
    _round(store, 3, [{"name": "pretrain", "epochs": 4, "init_from": f"{root}/round=2/pretrain.pt"},
                      {"name": "fine-tune", "epochs": 20, "init_from": f"{root}/round=3/pretrain.pt"}])  # fmt: skip
    assert epochs_trained(store) == {0: (60, 60), 1: (20, 80), 2: (20, 20), 3: (24, 44)}
    rows = [{"round": 0, "epochs (in all)": "60"}, {"round": 1, "epochs (in all)": "20 (80)"}]
    assert "Round(s) 1 started from the previous round's weights" in _warm_note(rows)
    assert _warm_note(rows[:1]) == ""
