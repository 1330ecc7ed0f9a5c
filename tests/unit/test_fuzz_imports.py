"""Fuzz corpus: malformed .pts / WFLW / COCO / Label Studio / CSV files and broken images through the CLI.

Every corpus mixes valid rows with bad ones and goes through the command users type (``pipstc
import`` / ``pipstc pool add``). For each: no traceback, every valid row imported (none lost), and every
bad row recorded as a reject naming its file, its row or line, and a reason. Property tests then throw
random text, and JSON of the formats' shapes with odd values in every field, at the importers: they
may refuse a whole file (FormatError) or a row (a reject), never crash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotations.formats import FormatError, read_pts, read_wflw
from annotations.formats.common import RowError
from annotations.store import Store
from flows.cli import main
from flows.ingest_steps import ingest_source
from pipnet_core.schemes import get_scheme
from tests.unit.bad_files import MALFORMED_PTS, bad_images, good_faces

SCHEME = get_scheme("300w")
N = SCHEME.num_landmarks


def _store(tmp_path: Path) -> str:
    url = str(tmp_path / "store")
    Store.create(url, SCHEME)
    return url


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err, out.err
    return code


def _check(store: str, valid: list[Path], bad: dict[tuple[str, str | None], str]) -> None:
    """Every valid image imported once; every bad (source, location) recorded with a reason containing the hint."""
    s = Store.open(store)
    assert sorted(s.samples()["image_uri"]) == sorted(str(p.resolve()) for p in valid)
    rejects = s.rejects()
    got = {(r.source, None if r.location in (None, "file") else r.location): r.reason for r in rejects.itertuples()}
    assert len(got) == len(rejects) == len(bad), sorted(got)
    for key, hint in bad.items():
        assert key in got, (key, sorted(got))
        assert hint.lower() in got[key].lower(), (key, got[key])


def _landmarks(image: Path) -> np.ndarray:
    return read_pts(image.with_suffix(".pts"))


# ------------------------------------------------------------------------------------------ .pts


def test_fuzz_pts_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "pts"
    valid = good_faces(folder, 3)
    template = _landmarks(valid[0])
    bad: dict[tuple[str, str | None], str] = {}
    for name, text in MALFORMED_PTS.items():
        twin = folder / f"{name}.jpg"
        shutil.copyfile(valid[0], twin)  # the same pixels: the .pts alone is at fault
        pts = twin.with_suffix(".pts")
        pts.write_text(text)
        bad[(str(pts.resolve()), None)] = ""
    for image in bad_images(folder / "images"):  # a good .pts beside every broken image
        pts = image.with_suffix(".pts")
        pts.write_text((folder / f"{valid[1].stem}.pts").read_text())
        bad[(str(pts.resolve()), None)] = "far outside" if image.stem == "one_pixel" else "image"
    orphan = folder / "orphan.pts"
    shutil.copyfile(valid[2].with_suffix(".pts"), orphan)
    bad[(str(orphan.resolve()), None)] = "missing image"
    nan = template.copy()
    nan[3] = np.nan
    (folder / "nan.pts").write_text("version: 1\nn_points: 68\n{\n" + "".join(f"{x} {y}\n" for x, y in nan) + "}\n")
    shutil.copyfile(valid[0], folder / "nan.jpg")
    bad[(str((folder / "nan.pts").resolve()), None)] = "is NaN"

    store = _store(tmp_path)
    assert _cli(["import", store, str(folder), "--format", "pts"], capsys) == 0
    _check(store, valid, bad)
    assert _cli(["import", store, str(folder), "--format", "pts"], capsys) == 0  # again: nothing new, no new rejects
    _check(store, valid, bad)


# ------------------------------------------------------------------------------------------ WFLW


def _wflw_line(landmarks: np.ndarray, box: list[float], name: str, attrs: str = "0 0 0 0 0 0") -> str:
    coords = " ".join(f"{v:.3f}" for v in landmarks.reshape(-1))
    return f"{coords} {' '.join(f'{v:.2f}' for v in box)} {attrs} {name}"


def test_fuzz_wflw_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "wflw"
    valid = good_faces(root, 3)
    broken = {p.stem: p for p in bad_images(root / "broken")}
    lm = _landmarks(valid[0])
    box = [float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max())]
    swapped = box[2], box[3], box[0], box[1]
    text_coords = _wflw_line(lm, box, valid[0].name).split()
    text_coords[7] = "abc"
    rows = [
        (_wflw_line(_landmarks(valid[0]), box, valid[0].name), None),
        ("1 2 3", "only 3 values"),
        (" ".join(text_coords), "is not a number"),
        (_wflw_line(lm, list(swapped), valid[0].name), "is empty"),
        (_wflw_line(lm, box, "nowhere.jpg"), "not found"),
        (_wflw_line(lm, box, valid[0].name, "0 0 x 0 0 0"), "not an integer attribute"),
        (_wflw_line(lm, [500.0, 500.0, 600.0, 600.0], valid[0].name), "lies outside"),
        (_wflw_line(np.full_like(lm, np.nan), box, valid[0].name), "every landmark is missing"),
        (_wflw_line(lm[:60], box, valid[0].name), "landmarks, but the scheme has 68"),
        (_wflw_line(_landmarks(valid[1]), box, valid[1].name), None),
        (_wflw_line(lm, box, valid[0].name), "duplicate sample"),
        *[
            (_wflw_line(lm, box, f"broken/{p.name}"), "image" if k != "one_pixel" else "far outside")
            for k, p in broken.items()
        ],  # fmt: skip
        (_wflw_line(_landmarks(valid[2]), [0.0, 0.0, 96.0, 96.0], valid[2].name), None),
    ]
    path = root / "list_68pt.txt"
    path.write_text("\n".join(line for line, _ in rows) + "\n\n")
    store = _store(tmp_path)
    assert _cli(["import", store, str(path), "--format", "wflw"], capsys) == 0
    bad = {(str(path.resolve()), f"line {i + 1}"): hint for i, (_, hint) in enumerate(rows) if hint is not None}
    _check(store, valid, bad)


# ------------------------------------------------------------------------------------------ COCO


def _coco_keypoints(landmarks: np.ndarray) -> list[float]:
    return [v for x, y in landmarks for v in (float(x), float(y), 2)]


def test_fuzz_coco_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "coco"
    valid = good_faces(root, 2)
    truncated = bad_images(root / "broken")[0]
    kp = _coco_keypoints(_landmarks(valid[0]))
    images = [
        {"id": 1, "file_name": valid[0].name, "width": 96, "height": 96},
        {"id": 2, "file_name": valid[1].name, "width": 96, "height": 96},
        {"id": 3, "file_name": "missing.jpg", "width": 96, "height": 96},
        {"id": 4, "file_name": f"broken/{truncated.name}"},
        {"id": 5, "file_name": valid[0].name, "width": 640, "height": 480},
        {"file_name": "no_id.jpg"},
        "not an object",
    ]
    annotations: list[object] = [
        {"id": 1, "image_id": 1, "category_id": 1, "keypoints": kp, "bbox": [5, 5, 80, 80]},
        {"id": 2, "image_id": 2, "category_id": 1, "keypoints": _coco_keypoints(_landmarks(valid[1]))},
        {"id": 3, "image_id": 1, "category_id": 1, "keypoints": kp, "iscrowd": 1},
        {"id": 4, "image_id": 99, "category_id": 1, "keypoints": kp},
        {"id": 5, "image_id": 1, "category_id": 1, "keypoints": kp[:-3]},
        {"id": 6, "image_id": 1, "category_id": 1, "keypoints": [*kp[:-1], 7]},
        {"id": 7, "image_id": 1, "category_id": 1, "keypoints": kp, "bbox": [1, 2, 3]},
        {"id": 8, "image_id": 1, "category_id": 1, "keypoints": ["a", *kp[1:]]},
        {"id": 9, "image_id": 3, "category_id": 1, "keypoints": kp},
        {"id": 10, "image_id": 4, "category_id": 1, "keypoints": kp},
        {"id": 11, "image_id": 5, "category_id": 1, "keypoints": kp},
        {"id": 12, "image_id": 1, "category_id": 1, "keypoints": kp, "bbox": [200, 200, 10, 10]},
        {"id": 13, "image_id": 1, "category_id": 1, "keypoints": None},
        "not an object",
        {"id": 15, "image_id": 1, "category_id": 2, "keypoints": [1, 2, 2]},  # another category: not ours, no reject
    ]
    categories = [{"id": 1, "name": "face", "keypoints": [f"p{i}" for i in range(N)]},
                  {"id": 2, "name": "dot", "keypoints": ["p"]}]  # fmt: skip
    path = root / "faces.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    store = _store(tmp_path)
    assert _cli(["import", store, str(path), "--format", "coco"], capsys) == 0
    src = str(path.resolve())
    bad = {
        (src, "images[5]"): "needs 'id' (a number) and 'file_name'",
        (src, "images[6]"): "needs 'id' (a number) and 'file_name'",
        (src, "annotations[2] (id 3)"): "crowd",
        (src, "annotations[3] (id 4)"): "is not in 'images'",
        (src, "annotations[4] (id 5)"): "67 landmarks",
        (src, "annotations[5] (id 6)"): "must be 0, 1 or 2",
        (src, "annotations[6] (id 7)"): "expected [x, y, w, h]",
        (src, "annotations[7] (id 8)"): "is not a number",
        (src, "annotations[8] (id 9)"): "not found",
        (src, "annotations[9] (id 10)"): "cannot decode",
        (src, "annotations[10] (id 11)"): "640x480 image",
        (src, "annotations[11] (id 12)"): "lies outside",
        (src, "annotations[12] (id 13)"): "missing or empty",
        (src, "annotations[13]"): "must be an object",
    }
    _check(store, valid, bad)


# ------------------------------------------------------------------------------------------ Label Studio


def _ls_items(landmarks: np.ndarray, width: int = 96, height: int = 96) -> list[dict[str, object]]:
    return [
        {"from_name": "kp", "to_name": "image", "type": "keypointlabels", "original_width": width,
         "original_height": height, "value": {"x": float(x) * 100 / width, "y": float(y) * 100 / height,
                                              "keypointlabels": [name]}}
        for name, (x, y) in zip(SCHEME.landmark_names, landmarks, strict=True)
    ]  # fmt: skip


def test_fuzz_labelstudio_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ls"
    valid = good_faces(root, 2)
    items = _ls_items(_landmarks(valid[0]))

    def edit(k: int, **value: object) -> list[dict[str, object]]:
        out = json.loads(json.dumps(items))
        out[k]["value"].update(value)
        return out

    renamed = json.loads(json.dumps(items))
    renamed[3]["value"]["keypointlabels"] = ["third nostril"]  # no landmark of the scheme has this name
    twice = json.loads(json.dumps(items))
    twice[4]["value"]["keypointlabels"] = [SCHEME.landmark_names[5]]
    rotated = json.loads(json.dumps(items))
    rotated[0]["image_rotation"] = 90
    no_size = json.loads(json.dumps(items))
    del no_size[2]["original_width"]
    anns = [
        (items, None),
        (edit(5, x=140.0), "x = 140.0 % is outside 0-100 %"),
        (edit(6, y=-3.0), "y = -3.0 % is outside 0-100 %"),
        (edit(7, x="left"), "non-numeric"),
        (edit(8, x=float("nan")), "outside 0-100 %"),
        (renamed, "is not a landmark of scheme"),
        (twice, "placed twice"),
        (rotated, "image_rotation"),
        (no_size, "original_width"),
        ([], "no keypoints"),
    ]
    tasks: list[dict[str, object]] = [
        {"id": k + 1, "data": {"image": str(valid[0])}, "annotations": [{"id": 100 + k, "result": res}]}
        for k, (res, _) in enumerate(anns)
    ]
    tasks.append(
        {
            "id": 50,
            "data": {"image": str(valid[1])},
            "annotations": [
                {"id": 150, "result": _ls_items(_landmarks(valid[1]))},
                {"id": 151, "was_cancelled": True, "result": []},
            ],
        }
    )
    tasks.append({"id": 60, "data": {}, "annotations": [{"id": 160, "result": items}]})
    tasks.append({"id": 70, "data": {"image": str(root / "gone.jpg")}, "annotations": [{"id": 170, "result": items}]})
    tasks.append(
        {"id": 80, "data": {"image": str(valid[0]), "box": [1, 2]}, "annotations": [{"id": 180, "result": items}]}
    )
    path = root / "export.json"
    path.write_text(json.dumps(tasks))  # NaN as Label Studio's Python side would write it
    store = _store(tmp_path)
    assert _cli(["import", store, str(path), "--format", "labelstudio"], capsys) == 0
    src = str(path.resolve())
    bad = {(src, f"task {k + 1} annotation {100 + k}"): hint for k, (_, hint) in enumerate(anns) if hint}
    bad[(src, "task 50 annotation 151")] = "skipped in Label Studio"
    bad[(src, "task 60 annotation 160")] = "no 'image'"
    bad[(src, "task 70 annotation 170")] = "not found"
    bad[(src, "task 80 annotation 180")] = "is not [x0, y0, x1, y1]"
    _check(store, valid, bad)


# ------------------------------------------------------------------------------------------ CSV


def test_fuzz_csv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "csv"
    valid = good_faces(root, 2)
    zero = bad_images(root / "broken")[1]
    header = ["image", "box_x0", "box_y0", "box_x1", "box_y1"] + [f"{a}{i}" for i in range(N) for a in "xy"]

    def row(image: str, landmarks: np.ndarray, box: str = ",,,") -> str:
        return ",".join([image, box, *(f"{v:.3f}" for v in landmarks.reshape(-1))])

    lm = _landmarks(valid[0])
    short = row(valid[0].name, lm).rsplit(",", 3)[0]
    text = row(valid[0].name, lm).split(",")
    text[9] = "twelve"  # x2
    rows = [
        (row(valid[0].name, lm), None),
        (short, "cells but the header has"),
        (",".join(text), "is not a number"),
        (row(valid[0].name, lm, "1,2,,4"), "partly empty"),
        (row("", lm), "field image is empty"),
        (row("missing.png", lm), "not found"),
        (row(f"broken/{zero.name}", lm), "empty file"),
        (row(valid[0].name, lm, "300,300,400,400"), "lies outside"),
        (row(valid[0].name, lm * 100), "far outside"),
        (row(valid[1].name, _landmarks(valid[1])), None),
    ]
    path = root / "faces.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(r for r, _ in rows) + "\n")
    store = _store(tmp_path)
    assert _cli(["import", store, str(path), "--format", "csv"], capsys) == 0
    bad = {(str(path.resolve()), f"line {i + 2}"): hint for i, (_, hint) in enumerate(rows) if hint}
    _check(store, valid, bad)


# ------------------------------------------------------------------------------------------ pools, folders of bad files


def test_fuzz_pool_folder_with_a_box_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "pool"
    valid = good_faces(folder, 2)
    for p in valid:
        p.with_suffix(".pts").unlink()
    broken = bad_images(folder / "broken")
    boxes = tmp_path / "boxes.csv"
    lines = [f"{valid[0].name},10,10,86,86", f"{valid[1].name},5,5,90,90", f"{valid[1].name},5,5,90,90",
             f"{valid[0].name},ten,10,86,86", ",1,1,5,5", "elsewhere.jpg,1,1,5,5", f"{valid[0].name},200,200,300,300",
             f"{valid[0].name},50,50,40,40", "broken/one_pixel.png,0.2,0.2,0.8,0.8"]  # fmt: skip
    boxes.write_text("image,x0,y0,x1,y1\n" + "\n".join(lines) + "\n")
    store = _store(tmp_path)
    assert _cli(["pool", "add", store, str(folder), "--boxes", str(boxes)], capsys) == 0
    s = Store.open(store)
    kept = [*valid, folder / "broken" / "one_pixel.png"]  # a 1-pixel image with a box on it is a (tiny) face
    assert sorted(s.samples()["image_uri"]) == sorted(str(p.resolve()) for p in kept)
    box_src = str(boxes.resolve())
    bad = {(box_src, f"line {k}"): hint for k, hint in
           [(4, "duplicate"), (5, "not a number"), (6, "image is empty"), (7, "missing image"), (8, "lies outside"),
            (9, "is empty")]}  # fmt: skip
    bad |= {(str(p.resolve()), None): "" for p in broken if p.stem != "one_pixel"}
    rejects = s.rejects()
    got = {(r.source, None if r.location == "file" else r.location): r.reason for r in rejects.itertuples()}
    assert len(got) == len(bad) == len(rejects), sorted(got)
    for key, hint in bad.items():
        assert hint in got[key], (key, got[key])


def test_folders_of_only_bad_files_import_nothing_and_record_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _store(tmp_path)
    images = bad_images(tmp_path / "bad")
    assert _cli(["pool", "add", store, str(tmp_path / "bad")], capsys) == 1
    for image in images:
        image.with_suffix(".pts").write_text(MALFORMED_PTS["wrong_n"] if image.stem == "zero" else
                                             "version: 1\nn_points: 68\n{\n" + "1 1\n" * 68 + "}\n")  # fmt: skip
    assert _cli(["import", store, str(tmp_path / "bad"), "--format", "pts"], capsys) == 1
    s = Store.open(store)
    assert s.samples().empty and not list((Path(store) / "samples").glob("*.parquet"))
    rejects = s.rejects()
    assert sorted(rejects[rejects["stage"] == "pool"]["source"]) == sorted(str(p.resolve()) for p in images)
    pts = sorted(str(p.with_suffix(".pts").resolve()) for p in images)
    assert sorted(rejects[rejects["stage"] == "import"]["source"]) == pts
    assert rejects["reason"].str.len().min() > 10


# ------------------------------------------------------------------------------------------ property tests

_FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Values a hand-edited or half-converted file holds where a number, a string or a list belongs.
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.sampled_from(["id", "x", "value"]), st.integers(0, 3), max_size=2),
)


def _some(value: st.SearchStrategy, size: int) -> st.SearchStrategy:
    return st.one_of(_ODD, value, st.lists(_ODD | value, min_size=size, max_size=size))


_COCO = st.fixed_dictionaries(
    {
        "images": st.lists(_ODD | st.fixed_dictionaries({}, optional={"id": _some(st.integers(0, 2), 1),
                           "file_name": _ODD | st.just("a.jpg"), "width": _ODD, "height": _ODD}), max_size=3),
        "annotations": st.lists(_ODD | st.fixed_dictionaries({}, optional={"id": _ODD, "image_id": _some(
            st.integers(0, 2), 1), "category_id": _some(st.integers(0, 2), 1), "keypoints": _some(st.integers(0, 2),
            3 * N), "bbox": _some(st.integers(0, 90), 4), "iscrowd": _ODD}), max_size=3),
    },
    optional={"categories": _ODD | st.lists(_ODD | st.fixed_dictionaries({}, optional={
        "id": _some(st.integers(0, 2), 1), "name": _ODD, "keypoints": _some(st.just("p"), N)}), max_size=2)},
)  # fmt: skip
_LS_ITEM = _ODD | st.fixed_dictionaries({}, optional={
    "from_name": st.just("kp") | _ODD, "type": st.just("keypointlabels"), "original_width": _ODD,
    "original_height": _ODD, "image_rotation": _ODD,
    "value": _ODD | st.fixed_dictionaries({}, optional={"x": _ODD, "y": _ODD, "keypointlabels": _some(
        st.sampled_from(SCHEME.landmark_names[:3]), 1)})})  # fmt: skip
_LS_ANNOTATION = _ODD | st.fixed_dictionaries(
    {},
    optional={"id": _ODD, "was_cancelled": _ODD, "completed_by": _ODD, "result": _ODD | st.lists(_LS_ITEM, max_size=3)},
)
_LS_DATA = _ODD | st.fixed_dictionaries(
    {}, optional={"image": _ODD | st.just("a.jpg"), "sample_id": _ODD, "box": _some(st.integers(0, 90), 4)}
)
_LS = st.lists(
    st.fixed_dictionaries({"data": _LS_DATA},
                          optional={"id": _ODD, "annotations": _ODD | st.lists(_LS_ANNOTATION, max_size=2)}),
    max_size=3,
)  # fmt: skip


@_FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 .-{}\nnan:version_points\t\x00é")), max_size=300))
def test_read_pts_refuses_any_text_with_a_row_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "f.pts"
    path.write_text(text)
    try:
        pts = read_pts(path)
    except RowError as e:
        assert str(e)
    else:
        assert pts.ndim == 2 and pts.shape[1] == 2


@_FUZZ
@given(
    lines=st.lists(
        st.lists(st.sampled_from(["1", "2.5", "-3", "nan", "x", "a.jpg", "1e9", "0"]), max_size=150), max_size=5
    )
)
def test_read_wflw_refuses_lines_not_the_file(tmp_path: Path, lines: list[list[str]]) -> None:
    path = tmp_path / "w.txt"
    path.write_text("\n".join(" ".join(tokens) for tokens in lines))
    try:
        result = read_wflw(path, tmp_path, SCHEME)
    except FormatError as e:
        assert str(path) in str(e)
    else:
        assert len(result.samples) == 0 and len(result.rejects) == sum(1 for t in lines if t)


@pytest.fixture
def fuzz_store(tmp_path: Path) -> str:
    return _store(tmp_path)


def _ingest_or_refuse(store: str, path: Path, fmt: str) -> None:
    """Import through the CLI's function: a whole-file FormatError, or every row imported or rejected with a reason."""
    try:
        report = ingest_source(store, str(path), fmt)
    except FormatError as e:
        assert str(path) in str(e)
        return
    assert report["faces"] + report["rejects"] >= 0
    assert all(isinstance(r, str) and r for r in Store.open(store).rejects()["reason"])


@_FUZZ
@given(doc=_COCO)
def test_any_coco_shaped_json_imports_or_is_refused_never_crashes(fuzz_store: str, tmp_path: Path, doc: dict) -> None:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    _ingest_or_refuse(fuzz_store, path, "coco")


@_FUZZ
@given(doc=_LS)
def test_any_labelstudio_shaped_export_imports_or_is_refused_never_crashes(
    fuzz_store: str, tmp_path: Path, doc: list
) -> None:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(doc))
    _ingest_or_refuse(fuzz_store, path, "labelstudio")
