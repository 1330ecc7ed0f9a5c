"""Which config a round runs with (issue 11 items 9-11): files and flags, the scheduled job, reruns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotations.store import Store
from flows.cli import _config, build_parser
from flows.config import ConfigConflict, STCConfig, merge_overrides, round_config
from flows.stc import resolve_config, resolve_next_config
from pipnet_core.schemes import get_scheme


def _args(argv: list[str]) -> dict | None:
    return _config(build_parser().parse_args(argv))


def test_the_config_file_schedule_is_kept_and_a_flag_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schedule": "confidence", "train": {"epochs": 7}}))
    assert _args(["run", "s", "--config", str(path)]) == {"schedule": "confidence", "train": {"epochs": 7}}
    assert _args(["run", "s", "--config", str(path), "--schedule", "plain"])["schedule"] == "plain"
    assert _args(["run", "s"]) is None  # nothing explicit: defaults for a new round, the saved config for a rerun
    with pytest.raises(ValueError, match="unknown STC config field"):
        path.write_text(json.dumps({"epoch": 3}))
        _args(["round", "s", "0", "--config", str(path)])


def test_run_passes_no_schedule_unless_one_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.cli
    import flows.stc

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schedule": "confidence"}))
    seen: dict = {}
    monkeypatch.setattr(flows.stc, "stc", lambda store, **kw: seen.update(kw))  # what the flow is asked to run
    monkeypatch.setattr(flows.cli, "cmd_report", lambda a: 0)
    import dataclasses

    from flows.ingest_steps import ingest_source
    from synthetic_faces import DOMAINS, write_dataset

    url = str(tmp_path / "store")  # a store every precondition of round 0 holds for
    Store.create(url, get_scheme("300w"))
    small = dataclasses.replace(DOMAINS["studio"], image_size=96)
    for split, seed in (("train", 1), ("holdout", 2)):
        write_dataset(tmp_path / split, 3, small, seed=seed)
        ingest_source(url, str(tmp_path / split), "pts", split=split)
    args = build_parser().parse_args(["run", url, "--config", str(path), "--rounds", "0"])
    assert flows.cli.cmd_run(args) == 0
    assert seen["schedule"] is None and seen["config"]["schedule"] == "confidence"


def test_the_stc_flow_keeps_the_config_schedule_without_a_schedule_argument(tmp_path: Path) -> None:
    import inspect

    import flows.stc

    assert inspect.signature(flows.stc.stc.fn).parameters["schedule"].default is None
    overrides = merge_overrides({"schedule": "confidence"}, None)  # what stc() passes to each round
    assert STCConfig().with_overrides(overrides).schedule == "confidence"


def test_train_overrides_merge_into_the_base_instead_of_replacing_it() -> None:
    base = STCConfig.tiny(review_budget=0.2)
    cfg = base.with_overrides({"train": {"lr": 0.5}, "shard_size": 3})
    assert cfg.train.lr == 0.5 and cfg.train.epochs == base.train.epochs and cfg.train.input_size == 64
    assert cfg.review_budget == 0.2 and cfg.shard_size == 3
    assert merge_overrides({"train": {"lr": 1}}, {"train": {"epochs": 2}}, {"epochs": 3}) == {
        "train": {"lr": 1, "epochs": 2},
        "epochs": 3,
    }


def _store(tmp_path: Path) -> str:
    url = str(tmp_path / "store")
    Store.create(url, get_scheme("300w"))
    return url


def test_the_next_scheduled_round_overrides_the_last_rounds_config(tmp_path: Path) -> None:
    url = _store(tmp_path)
    resolve_config(url, 0, STCConfig.tiny(schedule="confidence").to_dict())
    cfg, _ = resolve_next_config(url, 1, {"review_budget": 0.25})
    assert cfg.review_budget == 0.25
    assert cfg.schedule == "confidence" and cfg.train.epochs == STCConfig.tiny().train.epochs  # kept from round 0
    assert Store.open(url).read_round_json(1, "config.json")["train"]["input_size"] == 64


def test_a_rerun_with_a_conflicting_value_is_refused_unless_forced(tmp_path: Path) -> None:
    url = _store(tmp_path)
    first, note = resolve_config(url, 0, STCConfig.tiny().to_dict())
    assert note is None
    assert resolve_config(url, 0, None)[1] is None  # no step done yet: nothing to say
    Store.open(url).mark_step(0, "sync_reviews", {})
    again, note = resolve_config(url, 0, None)
    assert again == first and "resuming with the config saved" in note
    same, _ = resolve_config(url, 0, {"epochs": first.train.epochs})  # explicit but equal: no conflict
    assert same == first
    with pytest.raises(ConfigConflict, match=r"epochs: saved 2, asked 5.*--force-config"):
        resolve_config(url, 0, {"epochs": 5})
    assert Store.open(url).read_round_json(0, "config.json")["train"]["epochs"] == 2  # left as it was
    forced, note = resolve_config(url, 0, {"epochs": 5}, force=True)
    assert forced.train.epochs == 5 and "config changed on rerun" in note
    assert Store.open(url).read_round_json(0, "config.json")["train"]["epochs"] == 5


def test_where_a_rerun_runs_may_change_without_force() -> None:
    saved = STCConfig.tiny().to_dict()
    cfg, note = round_config(3, saved, {"dask_address": "tcp://10.0.0.5:8786", "num_workers": 0})
    assert cfg.dask_address == "tcp://10.0.0.5:8786" and "dask_address" in note


def test_thresholds_a_round_derived_from_reviews_are_no_conflict_on_a_rerun() -> None:
    saved = STCConfig.tiny().replace(std_below=0.031).to_dict()  # chosen from round k-1's reviewed faces
    cfg, _ = round_config(2, saved, STCConfig.tiny().to_dict())  # the same full config given again
    assert cfg.std_below == 0.031
    with pytest.raises(ConfigConflict):
        round_config(2, {**saved, "thresholds_from_reviews": False}, STCConfig.tiny().to_dict())


def test_round_zero_trains_its_own_length_with_scaled_milestones() -> None:
    from flows.config import STCConfig

    cfg = STCConfig().replace(epochs=30, milestones=(20, 25), round0_epochs=120)
    r0, r1 = cfg.round_train(0), cfg.round_train(1)
    assert (r0.epochs, r0.milestones) == (120, (80, 100))
    assert (r1.epochs, r1.milestones) == (30, (20, 25))
    assert STCConfig().replace(epochs=30).round_train(0).epochs == 30  # unset: every round alike
    assert STCConfig.from_dict(cfg.to_dict()).round0_epochs == 120


def test_the_shipped_default_schedule_is_confidence() -> None:
    from flows.config import STCConfig

    assert STCConfig().schedule == "confidence" and STCConfig.demo().schedule == "confidence"
