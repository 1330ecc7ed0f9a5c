"""A round's preconditions, checked before its first step (issue 11 item 8; flows/preflight.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from annotations.store import Store
from flows.cli import main
from flows.errors import ConfigFileError, MissingExtra, PreflightError
from flows.ingest_steps import ingest_source
from flows.preflight import PREVIOUS_ROUND_STEPS, check_round, preflight_round, read_config_file
from pipnet_core.schemes import get_scheme
from tests.unit.bad_files import good_faces


def _store(tmp_path: Path, train: int = 2, holdout: int = 2) -> str:
    url = str(tmp_path / "store")
    Store.create(url, get_scheme("300w"))
    if train:
        good_faces(tmp_path / "train", train, seed=1)
        ingest_source(url, str(tmp_path / "train"), "pts", split="train")
    if holdout:
        good_faces(tmp_path / "holdout", holdout, seed=2)
        ingest_source(url, str(tmp_path / "holdout"), "pts", split="holdout")
    return url


def _whats(problems: list) -> list[str]:
    return [p.what for p in problems]


def test_a_ready_store_has_no_problems(tmp_path: Path) -> None:
    url = _store(tmp_path)
    assert check_round(url, 0) == []
    preflight_round(url, 0, {"epochs": 3})


def test_an_empty_store_lacks_training_faces_and_a_holdout(tmp_path: Path) -> None:
    url = _store(tmp_path, train=0, holdout=0)
    whats = _whats(check_round(url, 0))
    assert len(whats) == 2
    assert whats[0].startswith("no human-labeled training faces")
    assert whats[1].startswith("no human-labeled holdout faces")


def test_pool_faces_alone_are_no_training_set(tmp_path: Path) -> None:
    url = _store(tmp_path, train=0)
    images = good_faces(tmp_path / "pool", 2, seed=3)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\n" + "".join(f"{p.name},10,10,86,86\n" for p in images))
    assert ingest_source(url, str(tmp_path / "pool"), "pool", boxes_file=str(boxes))["new_samples"] == 2
    (problem,) = check_round(url, 0)
    assert problem.what.startswith("no human-labeled training faces") and "pipstc import" in problem.fix


def test_a_store_without_holdout_is_refused_with_the_import_to_run(tmp_path: Path) -> None:
    url = _store(tmp_path, holdout=0)
    with pytest.raises(PreflightError) as err:
        preflight_round(url, 0)
    (problem,) = err.value.problems
    assert problem.where == url and "--split holdout" in problem.fix
    assert str(err.value).startswith(f"{url}: no human-labeled holdout faces") and " — " in str(err.value)


def test_round_k_needs_round_k_minus_1_finished(tmp_path: Path) -> None:
    url = _store(tmp_path)
    (problem,) = check_round(url, 1)
    assert "round 0 has not completed train, evaluate, label_pool" in problem.what
    assert f"pipstc round {url} 0" in problem.fix
    store = Store.open(url)
    for step in PREVIOUS_ROUND_STEPS[:-1]:
        store.mark_step(0, step, {})
    assert "has not completed label_pool" in check_round(url, 1)[0].what
    store.mark_step(0, PREVIOUS_ROUND_STEPS[-1], {})
    assert check_round(url, 1) == []


def test_a_resumed_round_skips_the_checks_of_its_completed_steps(tmp_path: Path) -> None:
    url = _store(tmp_path, holdout=0)
    store = Store.open(url)
    store.mark_step(0, "train", {})
    assert len(check_round(url, 0)) == 1  # evaluate still needs the holdout
    store.mark_step(0, "evaluate", {})
    assert check_round(url, 0) == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"bogus": 1}, "unknown STC config field(s) ['bogus']"),
        ({"schedule": "papr"}, "unknown schedule 'papr'"),
        ({"epochs": 0}, "epochs and batch_size must be >= 1"),
        ({"input_size": 250}, "must be a multiple of net_stride"),
    ],
)
def test_an_invalid_config_is_refused_before_anything_runs(tmp_path: Path, config: dict, expected: str) -> None:
    url = _store(tmp_path)
    (problem,) = check_round(url, 0, config)
    assert isinstance(problem, ConfigFileError) and expected in problem.what
    assert not Store.open(url).rounds()  # nothing written: no config.json, no round folder


def test_a_started_round_checks_its_saved_config(tmp_path: Path) -> None:
    url = _store(tmp_path)
    Store.open(url).write_round_json(0, "config.json", {"schedule": "gone"})
    (problem,) = check_round(url, 0)
    assert problem.where.endswith("round=0/config.json") and "unknown schedule 'gone'" in problem.what


def test_missing_training_and_holdout_images_are_named(tmp_path: Path) -> None:
    url = _store(tmp_path)
    lost = sorted((tmp_path / "train").glob("*.jpg"))[0]
    lost.unlink()
    sorted((tmp_path / "holdout").glob("*.jpg"))[1].unlink()
    problems = check_round(url, 0)
    assert [p.what for p in problems] == [
        "image not found (1 of the 2 training images are missing)",
        "image not found (1 of the 2 holdout images are missing)",
    ]
    assert problems[0].where == str(lost.resolve())


def test_dask_pool_labeling_without_its_extra_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _store(tmp_path)
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if prefect-dask were not installed
    (problem,) = check_round(url, 0, {"dask_address": "tcp://10.0.0.5:8786"})
    assert isinstance(problem, MissingExtra) and problem.fix == "pip install 'pipstc[dask]'"


def test_a_round_number_must_be_a_round(tmp_path: Path) -> None:
    assert "is not a round number" in check_round(_store(tmp_path, 0, 0), -1)[0].what


def test_read_config_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read the config file"):
        read_config_file(tmp_path / "none.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigFileError, match="a config file is a JSON object of fields, got a list"):
        read_config_file(tmp_path / "list.json")
    (tmp_path / "ok.json").write_text('{"epochs": 2}')
    assert read_config_file(tmp_path / "ok.json") == {"epochs": 2}


@pytest.mark.parametrize("command", [["run", "{url}", "--rounds", "1", "--small"], ["round", "{url}", "0"]])
def test_run_and_round_fail_before_the_first_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    url = _store(tmp_path, holdout=0)
    code = main([c.format(url=url) for c in command])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [
        f"error: {url}: no human-labeled holdout faces (0 holdout samples, none with a human label): every round is "
        f"measured on the holdout — import labeled faces for it: `pipstc import {url} FOLDER --format pts --split "
        "holdout`"
    ]
    assert Store.open(url).rounds() == []  # no step ran, no round folder was made


def test_run_lists_every_unmet_precondition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _store(tmp_path, train=0, holdout=0)
    (tmp_path / "c.json").write_text('{"schedule": "sure"}')
    assert main(["run", url, "--config", str(tmp_path / "c.json")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "unknown schedule 'sure'" in lines[0]
