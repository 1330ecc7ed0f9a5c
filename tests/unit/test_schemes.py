"""Schemes: built-ins, custom files, and refusal of broken layouts with messages that say what to fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipnet_core.schemes import (
    BUILTIN_SCHEMES,
    SchemeError,
    get_scheme,
    legacy_landmark_names,
    load_scheme,
    scheme_from_dict,
)


@pytest.mark.parametrize(("name", "n", "norm"), [("300w", 68, (36, 45)), ("wflw", 98, (60, 72)),
                                                 ("cofw", 29, (8, 9)), ("aflw", 19, "box")])  # fmt: skip
def test_builtin_schemes(name: str, n: int, norm: object) -> None:
    s = get_scheme(name.upper())
    assert s.num_landmarks == n and s.norm == norm and s.meanface_array.shape == (n, 2)
    assert sorted(i for idx in s.regions.values() for i in idx) == list(range(n))  # every landmark in one region
    assert name in BUILTIN_SCHEMES


def test_custom_scheme_file_round_trip(tmp_path: Path) -> None:
    d = {"name": "eyes4", "num_landmarks": 4, "flip": [1, 0, 3, 2], "norm": [0, 1],
         "regions": {"eyes": [0, 1], "mouth": [2, 3]}}  # fmt: skip
    path = tmp_path / "eyes4.json"
    path.write_text(json.dumps(d))
    s = load_scheme(path)
    assert s.landmark_names == ("lm_0", "lm_1", "lm_2", "lm_3") and s.region_of() == ["eyes", "eyes", "mouth", "mouth"]
    assert get_scheme(str(path)) == s
    assert scheme_from_dict(s.to_dict()) == s
    yaml_path = tmp_path / "eyes4.yaml"
    yaml_path.write_text("name: eyes4\nnum_landmarks: 4\nflip: null\nnorm: box\n")
    assert load_scheme(yaml_path).flip is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flip": [1, 2, 0, 3]}, "not an involution"),
        ({"flip": [0, 1]}, "permutation of 0..3"),
        ({"norm": [0, 7]}, "out of range 0..3"),
        ({"norm": [2, 2]}, "must differ"),
        ({"norm": "iod"}, "'box'"),
        ({"landmark_names": ["a", "b", "c"]}, "one name per landmark"),
        ({"landmark_names": ["a", "a", "b", "c"]}, "unique"),
        ({"regions": {"eyes": [0, 1], "nose": [1, 2]}}, "in both regions"),
        ({"meanface": [0.1, 0.2]}, "expected 8"),
        ({"num_landmarks": "4"}, "integer"),
    ],
)
def test_broken_layouts_are_refused_with_the_fix(change: dict, message: str) -> None:
    d = {"name": "eyes4", "num_landmarks": 4, "flip": [1, 0, 3, 2], "norm": [0, 1]} | change
    with pytest.raises(SchemeError, match=message) as err:
        scheme_from_dict(d, source="my_scheme.json")
    assert "my_scheme.json" in str(err.value)


def test_unknown_scheme_lists_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(SchemeError, match="300w, wflw, cofw, aflw"):
        get_scheme("ibug")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SchemeError, match="not valid JSON"):
        load_scheme(bad)
    with pytest.raises(SchemeError, match="missing required key 'num_landmarks'"):
        scheme_from_dict({"name": "x"})


def _swap_sides(name: str) -> str:
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", name)


@pytest.mark.parametrize("name", BUILTIN_SCHEMES)
def test_builtin_landmark_names_are_anatomical_and_mirror_with_the_flip_table(name: str) -> None:
    s = get_scheme(name)
    assert not any(n.startswith("lm_") for n in s.landmark_names)
    # a mirrored landmark is the same point of the other side: the flip table and the names agree
    assert [s.landmark_names[s.flip[i]] for i in range(s.num_landmarks)] == [_swap_sides(n) for n in s.landmark_names]
    assert {"chin", "nose tip"} <= set(s.landmark_names) or name == "aflw"
    if not isinstance(s.norm, str):  # NME is normalised by the outer eye corners
        assert {s.landmark_names[i] for i in s.norm} == {"left eye outer corner", "right eye outer corner"}


def test_300w_names_follow_the_ibug_markup() -> None:
    names = get_scheme("300w").landmark_names
    assert (names[8], names[30], names[36], names[45], names[48], names[57]) == (
        "chin", "nose tip", "right eye outer corner", "left eye outer corner", "right mouth corner", "lower lip bottom"
    )  # fmt: skip


def test_a_builtin_recorded_with_the_old_lm_names_reads_as_the_builtin() -> None:
    for name in BUILTIN_SCHEMES:
        builtin = get_scheme(name)
        old = builtin.to_dict() | {"landmark_names": list(legacy_landmark_names(builtin.num_landmarks))}
        assert scheme_from_dict(old) == builtin  # stores and checkpoints of older pipstc keep matching
    assert legacy_landmark_names(68)[:2] == ("lm_00", "lm_01") and legacy_landmark_names(19)[-1] == "lm_18"
    custom = {"name": "eyes4", "num_landmarks": 4, "norm": [0, 1]}
    assert scheme_from_dict(custom).landmark_names == ("lm_0", "lm_1", "lm_2", "lm_3")  # custom: untouched
