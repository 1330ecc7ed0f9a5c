"""Dataset formats: each one both ways (round trips exact), each kind of bad input named and rejected."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotations.formats import (
    FORMATS,
    FormatError,
    ImportResult,
    read_any,
    read_coco,
    read_csv,
    read_labelstudio_export,
    read_pts_folder,
    read_wflw,
    write_any,
    write_coco,
    write_csv,
    write_pts,
    write_pts_file,
    write_wflw,
)
from annotations.store.schema import landmarks_to_arrow, rejects_schema, samples_schema
from pipnet_core.schemes import get_scheme

S68 = get_scheme("300w")
S98 = get_scheme("wflw")
W, H = 80, 60


def write_image(path: Path, seed: int = 0, w: int = W, h: int = H) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def landmarks_in(rng: np.random.Generator, n: int, w: int = W, h: int = H) -> np.ndarray:
    """(n, 2) float32 with awkward decimals, inside the image."""
    pts = np.stack([rng.uniform(2, w - 3, n), rng.uniform(2, h - 3, n)], axis=1)
    return (pts + rng.uniform(0, 1e-3, (n, 2)) / 7).astype(np.float32)


def reasons(result: ImportResult) -> dict[str, str]:
    """Reject reason by the name of the file (or the location) it came from."""
    return {
        f"{Path(s).name}:{loc}": r
        for s, loc, r in zip(
            result.rejects["source"], result.rejects["location"], result.rejects["reason"], strict=True
        )
    }


def by_image(result: ImportResult) -> dict[str, np.ndarray]:
    return {Path(u).name: lm for u, lm in zip(result.samples["image_uri"], result.landmarks, strict=True)}


def check_store_ready(result: ImportResult) -> None:
    """The frames convert to the store's Arrow schemas (split filled as the store would)."""
    pa.Table.from_pandas(result.samples.assign(split="train"), schema=samples_schema(), preserve_index=False)
    pa.Table.from_pandas(result.rejects, schema=rejects_schema(), preserve_index=False)
    landmarks_to_arrow(result.landmarks)
    assert list(result.labels["sample_id"]) == list(result.labels["sample_id"])  # aligned frame
    assert set(result.labels["sample_id"]) <= set(result.samples["sample_id"])
    assert (result.labels["source"] == "human").all() and (result.labels["round"] == 0).all()
    assert result.samples["created_at"].dt.tz is not None


# -- 300W .pts ------------------------------------------------------------------------------------


def test_pts_folder_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    truth = {}
    for i, name in enumerate(["a.png", "sub/b.jpg"]):
        write_image(src / name, seed=i)
        truth[Path(name).name] = landmarks_in(rng, 68)
        write_pts_file((src / name).with_suffix(".pts"), truth[Path(name).name])
    write_image(src / "c.png", seed=7)  # two faces in one image: c_1.pts, c_2.pts (the AFW layout)
    c_faces = [landmarks_in(rng, 68), landmarks_in(rng, 68)]
    for k, lm in enumerate(c_faces, start=1):
        write_pts_file(src / f"c_{k}.pts", lm)

    first = read_pts_folder(src, S68)
    assert len(first.samples) == 4 and len(first.labels) == 4 and len(first.rejects) == 0
    check_store_ready(first)
    got = by_image(first)
    np.testing.assert_array_equal(got["a.png"], truth["a.png"])
    np.testing.assert_array_equal(got["b.jpg"], truth["b.jpg"])
    assert (first.samples["box_source"] == "landmarks").all()
    assert first.samples["dataset"].iloc[0] == "src"
    box = np.stack(first.samples["box"])[list(first.samples["image_uri"].map(lambda u: Path(u).name)).index("a.png")]
    np.testing.assert_array_equal(box, [*truth["a.png"].min(0), *truth["a.png"].max(0)])

    out = write_pts(tmp_path / "out", first.samples, first.landmarks, S68)
    assert sorted(p.name for p in out) == ["a.pts", "b.pts", "c_1.pts", "c_2.pts"]
    second = read_pts_folder(tmp_path / "out", S68)
    assert sorted(second.samples["sample_id"]) == sorted(first.samples["sample_id"])  # same bytes, same box
    a = dict(zip(first.samples["sample_id"], first.landmarks, strict=True))
    for sid, lm in zip(second.samples["sample_id"], second.landmarks, strict=True):
        np.testing.assert_array_equal(lm, a[sid])


def test_pts_bad_inputs_are_rejected_and_good_ones_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    good = landmarks_in(rng, 68)
    write_image(tmp_path / "good.png", seed=1)
    write_pts_file(tmp_path / "good.pts", good)
    write_image(tmp_path / "short.png", seed=2)
    write_pts_file(tmp_path / "short.pts", good[:67])
    write_image(tmp_path / "text.png", seed=3)
    lines = (tmp_path / "good.pts").read_text().splitlines()
    lines[8] = "12.5 abc"
    (tmp_path / "text.pts").write_text("\n".join(lines) + "\n")
    write_image(tmp_path / "nan.png", seed=4)
    bad = good.copy()
    bad[5] = np.nan
    write_pts_file(tmp_path / "nan.pts", bad)
    write_pts_file(tmp_path / "nopic.pts", good)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_pts_file(tmp_path / "broken.pts", good)
    shutil.copyfile(tmp_path / "good.png", tmp_path / "zdup.png")  # same bytes, same landmarks: same sample
    shutil.copyfile(tmp_path / "good.pts", tmp_path / "zdup.pts")
    write_image(tmp_path / "far.png", seed=5)
    far = good.copy()
    far[30] = (10 * W, 20.0)
    write_pts_file(tmp_path / "far.pts", far)

    result = read_pts_folder(tmp_path, S68)
    assert list(result.samples["image_uri"].map(lambda u: Path(u).name)) == ["good.png"]
    r = reasons(result)
    assert "67 landmarks" in r["short.pts:file"] and "68" in r["short.pts:file"]
    assert "line 9" in r["text.pts:file"] and "'abc' is not a number" in r["text.pts:file"]
    assert "NaN" in r["nan.pts:file"] and f"5 ({S68.landmark_names[5]})" in r["nan.pts:file"]
    assert "missing image" in r["nopic.pts:file"]
    assert "cannot decode" in r["broken.pts:file"]
    assert "duplicate sample" in r["zdup.pts:file"] and "good.pts" in r["zdup.pts:file"]
    assert "far outside" in r["far.pts:file"] and "landmark 30" in r["far.pts:file"]
    assert len(result.rejects) == 7
    assert (result.rejects["stage"] == "import").all()
    check_store_ready(result)

    kept = read_pts_folder(tmp_path, S68, allow_missing=True)
    assert "nan.png" in set(kept.samples["image_uri"].map(lambda u: Path(u).name))
    lm = by_image(kept)["nan.png"]
    assert np.isnan(lm[5]).all() and np.isfinite(np.delete(lm, 5, axis=0)).all()


def test_pts_folder_whole_problems_raise(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not a folder"):
        read_pts_folder(tmp_path / "nope", S68)
    write_image(tmp_path / "x.png")
    with pytest.raises(FormatError, match="no .pts files"):
        read_pts_folder(tmp_path, S68)


# -- WFLW -----------------------------------------------------------------------------------------


def wflw_line(lm: np.ndarray, box: list[float], attrs: list[int], name: str) -> str:
    return " ".join([*(repr(float(v)) for v in lm.reshape(-1)), *(repr(float(v)) for v in box), *map(str, attrs), name])


def test_wflw_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "WFLW_images"
    write_image(root / "51--Dancing" / "a.jpg", seed=1)
    write_image(root / "2--Demo" / "b.jpg", seed=2)
    faces = [
        (landmarks_in(rng, 98), [1.5, 2.25, 60.0, 50.5], [1, 0, 0, 1, 0, 1], "51--Dancing/a.jpg"),
        (landmarks_in(rng, 98), [3.0, 4.0, 70.0, 55.0], [0, 1, 1, 0, 1, 0], "51--Dancing/a.jpg"),
        (landmarks_in(rng, 98), [0.0, 0.0, 79.0, 59.0], [0, 0, 0, 0, 0, 0], "2--Demo/b.jpg"),
    ]
    ann = tmp_path / "list_98pt_rect_attr_test.txt"
    ann.write_text("\n".join(wflw_line(*f) for f in faces) + "\n\n")
    first = read_wflw(ann, root, S98)
    assert len(first.samples) == 3 and len(first.rejects) == 0
    check_store_ready(first)
    np.testing.assert_array_equal(first.landmarks, np.stack([f[0] for f in faces]))
    np.testing.assert_array_equal(np.stack(first.samples["box"]), np.array([f[1] for f in faces], np.float32))
    assert (first.samples["box_source"] == "given").all()
    assert first.extras is not None
    assert first.extras[["pose", "expression", "illumination", "makeup", "occlusion", "blur"]].values.tolist() == [
        f[2] for f in faces
    ]

    out = write_wflw(
        tmp_path / "again.txt", first.samples, first.landmarks, S98, image_root=root, attributes=first.extras
    )
    assert out.read_text().split("\n")[0].endswith("51--Dancing/a.jpg")
    second = read_wflw(out, root, S98)
    np.testing.assert_array_equal(second.landmarks, first.landmarks)
    assert list(second.samples["sample_id"]) == list(first.samples["sample_id"])
    assert second.extras is not None and second.extras.drop(columns="sample_id").equals(
        first.extras.drop(columns="sample_id")
    )


def test_wflw_bad_lines_are_rejected(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_image(tmp_path / "a.jpg", seed=1)
    good = wflw_line(landmarks_in(rng, 98), [1, 1, 70, 50], [0] * 6, "a.jpg")
    short = wflw_line(landmarks_in(rng, 97), [1, 1, 70, 50], [0] * 6, "a.jpg")
    tokens = wflw_line(landmarks_in(rng, 98), [1, 1, 70, 50], [0] * 6, "a.jpg").split()
    tokens[7] = "oops"
    attr = wflw_line(landmarks_in(rng, 98), [1, 1, 70, 50], [0, 0, 2.5, 0, 0, 0], "a.jpg")  # type: ignore[list-item]
    missing = wflw_line(landmarks_in(rng, 98), [1, 1, 70, 50], [0] * 6, "gone.jpg")
    empty_box = wflw_line(landmarks_in(rng, 98), [70, 1, 1, 50], [0] * 6, "a.jpg")
    ann = tmp_path / "ann.txt"
    ann.write_text("\n".join([good, short, " ".join(tokens), attr, missing, empty_box]) + "\n")
    result = read_wflw(ann, tmp_path, S98)
    assert len(result.samples) == 1
    r = reasons(result)
    assert "97 landmarks" in r["ann.txt:line 2"]
    assert "field y3" in r["ann.txt:line 3"] and "'oops'" in r["ann.txt:line 3"]
    assert "illumination" in r["ann.txt:line 4"]
    assert "not found" in r["ann.txt:line 5"]
    assert "empty" in r["ann.txt:line 6"]


def test_wflw_file_for_another_scheme_raises(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ann = tmp_path / "ann.txt"
    ann.write_text("\n".join(wflw_line(landmarks_in(rng, 68), [1, 1, 9, 9], [0] * 6, "a.jpg") for _ in range(3)))
    with pytest.raises(FormatError, match="68 landmarks"):
        read_wflw(ann, tmp_path, S98)
    with pytest.raises(FormatError, match="cannot read"):
        read_wflw(tmp_path / "nope.txt", tmp_path, S98)


# -- COCO -----------------------------------------------------------------------------------------


def _labeled_folder(tmp_path: Path, n: int = 3, missing: bool = False) -> ImportResult:
    rng = np.random.default_rng(5)
    for i in range(n):
        write_image(tmp_path / "imgs" / f"f{i}.png", seed=10 + i)
        lm = landmarks_in(rng, 68)
        if missing and i == 0:
            lm[[3, 40]] = np.nan
        write_pts_file(tmp_path / "imgs" / f"f{i}.pts", lm)
    return read_pts_folder(tmp_path / "imgs", S68, allow_missing=missing)


def test_coco_round_trip_is_exact_with_missing_landmarks(tmp_path: Path) -> None:
    first = _labeled_folder(tmp_path, missing=True)
    path = write_coco(
        tmp_path / "coco" / "faces.json", first.samples, first.landmarks, S68, image_root=tmp_path / "imgs"
    )
    doc = json.loads(path.read_text())
    assert doc["categories"][0]["keypoints"] == list(S68.landmark_names)
    assert doc["images"][0]["file_name"] == "f0.png"
    ann0 = doc["annotations"][0]
    assert ann0["keypoints"][3 * 3 : 3 * 3 + 3] == [0, 0, 0] and ann0["num_keypoints"] == 66
    second = read_coco(path, tmp_path / "imgs", S68)
    assert len(second.rejects) == 0
    check_store_ready(second)
    np.testing.assert_array_equal(second.landmarks, first.landmarks)  # NaN in the same places, exact elsewhere
    np.testing.assert_array_equal(np.stack(second.samples["box"]), np.stack(first.samples["box"]))
    assert list(second.samples["sample_id"]) == list(first.samples["sample_id"])
    assert second.extras is not None and second.extras["visibility"].iloc[0][3] == 0


def test_coco_bad_annotations_are_rejected(tmp_path: Path) -> None:
    first = _labeled_folder(tmp_path, n=1)
    path = write_coco(tmp_path / "c.json", first.samples, first.landmarks, S68, image_root=tmp_path / "imgs")
    doc = json.loads(path.read_text())
    good = doc["annotations"][0]
    doc["annotations"] += [
        {**good, "id": 2, "keypoints": good["keypoints"][:-3]},
        {**good, "id": 3, "image_id": 99},
        {**good, "id": 4, "keypoints": [*good["keypoints"][:-1], 3]},
        {**good, "id": 5, "keypoints": ["x", *good["keypoints"][1:]]},
        {**good, "id": 6, "iscrowd": 1},
        {**good, "id": 7},  # the same face again
        {**good, "id": 8, "category_id": 2},  # another category: not ours, silently not imported
    ]
    path.write_text(json.dumps(doc))
    result = read_coco(path, tmp_path / "imgs", S68)
    assert len(result.samples) == 1
    r = {loc: reason for loc, reason in zip(result.rejects["location"], result.rejects["reason"], strict=True)}
    assert "67 landmarks" in r["annotations[1] (id 2)"]
    assert "image_id" in r["annotations[2] (id 3)"]
    assert "visibility" in r["annotations[3] (id 4)"]
    assert "keypoints[0]" in r["annotations[4] (id 5)"] and "not a number" in r["annotations[4] (id 5)"]
    assert "crowd" in r["annotations[5] (id 6)"]
    assert "duplicate" in r["annotations[6] (id 7)"]
    assert len(result.rejects) == 6


def test_coco_whole_file_problems_raise(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_coco(bad, None, S68)
    bad.write_text("[]")
    with pytest.raises(FormatError, match="'images' and 'annotations'"):
        read_coco(bad, None, S68)
    bad.write_text(
        json.dumps(
            {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person", "keypoints": ["a"] * 17}]}
        )
    )
    with pytest.raises(FormatError, match=r"\[17\] keypoints but the scheme has 68"):
        read_coco(bad, None, S68)


# -- CSV ------------------------------------------------------------------------------------------


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    first = _labeled_folder(tmp_path)
    path = write_csv(
        tmp_path / "labels.csv", first.samples.assign(split=["train", "holdout", "train"]), first.landmarks, S68
    )
    header = path.read_text().splitlines()[0].split(",")
    assert header[:7] == ["image", "box_x0", "box_y0", "box_x1", "box_y1", "x0", "y0"] and header[-4:] == [
        "x67",
        "y67",
        "split",
        "dataset",
    ]
    assert path.read_text().splitlines()[1].startswith("imgs/f0.png,")  # relative to the CSV's folder
    second = read_csv(path, S68)
    check_store_ready(second)
    np.testing.assert_array_equal(second.landmarks, first.landmarks)
    assert list(second.samples["sample_id"]) == list(first.samples["sample_id"])
    assert list(second.samples["split"]) == ["train", "holdout", "train"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    coords=st.lists(
        st.floats(min_value=-20.0, max_value=90.0, width=32, allow_nan=False, allow_subnormal=True),
        min_size=136,
        max_size=136,
    ),
    corner=st.tuples(st.floats(0, 30, width=32), st.floats(0, 30, width=32)),
    size=st.tuples(st.floats(0.5, 40, width=32), st.floats(0.5, 40, width=32)),
)
def test_csv_round_trip_property(coords: list[float], corner: tuple[float, float], size: tuple[float, float]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_image(root / "face.png")
        lm = np.asarray(coords, np.float32).reshape(1, 68, 2)
        box = np.array([corner[0], corner[1], corner[0] + size[0], corner[1] + size[1]], np.float32)
        if not (box[2] > box[0] and box[3] > box[1]):
            return  # float32 rounding made the box empty; the reader would rightly reject it
        samples = pd.DataFrame({"image_uri": [str(root / "face.png")], "box": [box]})
        write_csv(root / "l.csv", samples, lm, S68)
        back = read_csv(root / "l.csv", S68)
        assert len(back.rejects) == 0, back.rejects["reason"].tolist()
        np.testing.assert_array_equal(back.landmarks, lm)
        np.testing.assert_array_equal(back.samples["box"].iloc[0], box)


def test_csv_bad_rows_are_rejected(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    write_image(tmp_path / "a.png", seed=1)
    write_image(tmp_path / "b.png", seed=2)
    header = (
        ["image", "box_x0", "box_y0", "box_x1", "box_y1"] + [f"{a}{i}" for i in range(68) for a in "xy"] + ["split"]
    )

    def row(image: str, lm: np.ndarray, box: list[str] | None = None, split: str = "") -> list[str]:
        return [image, *(box or ["", "", "", ""]), *(repr(float(v)) for v in lm.reshape(-1)), split]

    good = landmarks_in(rng, 68)
    rows = [
        row("a.png", good),  # line 2: kept
        row("b.png", good, split="pool"),  # line 3: kept
    ]
    bad = row("b.png", landmarks_in(rng, 68))
    bad[5 + 7] = "seven"  # y3... cell 12 is y3
    rows.append(bad)  # line 4
    nan = row("b.png", landmarks_in(rng, 68))
    nan[5 + 10] = ""  # x5 empty
    rows.append(nan)  # line 5
    rows.append(row("b.png", good)[:-5])  # line 6: too few cells
    rows.append(row("b.png", landmarks_in(rng, 68), box=["1", "2", "", "4"]))  # line 7
    rows.append(row("b.png", landmarks_in(rng, 68), split="validation"))  # line 8
    rows.append(row("gone.png", landmarks_in(rng, 68)))  # line 9
    rows.append(row("a.png", good))  # line 10: duplicate of line 2
    far = landmarks_in(rng, 68)
    far[0, 1] = -2 * H
    rows.append(row("b.png", far))  # line 11
    path = tmp_path / "l.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    result = read_csv(path, S68)
    assert len(result.samples) == 2 and list(result.samples["split"]) == [None, "pool"]
    r = {loc: reason for loc, reason in zip(result.rejects["location"], result.rejects["reason"], strict=True)}
    assert "field y3" in r["line 4"] and "'seven'" in r["line 4"]
    assert "NaN" in r["line 5"] and f"5 ({S68.landmark_names[5]})" in r["line 5"]
    assert "cells" in r["line 6"]
    assert "partly empty" in r["line 7"]
    assert "split" in r["line 8"]
    assert "not found" in r["line 9"]
    assert "duplicate" in r["line 10"] and "line 2" in r["line 10"]
    assert "far outside" in r["line 11"]
    assert len(result.rejects) == 8
    kept = read_csv(path, S68, allow_missing=True)
    assert len(kept.samples) == 3


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("name,box_x0,box_y0,box_x1,box_y1", "first column 'name'"),
        ("image,box_x0,box_y0,box_x1,box_y1," + ",".join(f"x{i},y{i}" for i in range(98)), "98 landmark column pairs"),
        (
            "image,box_x0,box_y0,box_x1,box_y1," + ",".join(f"x{i},y{i}" for i in range(68)) + ",colour",
            "unknown column",
        ),
        ("image,box_x0,box_y0,box_x1," + ",".join(f"x{i},y{i}" for i in range(68)), "missing column"),
    ],
)
def test_csv_wrong_header_raises(tmp_path: Path, header: str, match: str) -> None:
    path = tmp_path / "l.csv"
    path.write_text(header + "\n")
    with pytest.raises(FormatError, match=match):
        read_csv(path, S68)


# -- Label Studio exports -------------------------------------------------------------------------


def _ls_items(lm: np.ndarray, w: int, h: int, full: bool, skip: tuple[int, ...] = ()) -> list[dict]:
    items = []
    for i, (x, y) in enumerate(lm):
        if i in skip:
            continue
        value = {"x": float(x) * 100.0 / w, "y": float(y) * 100.0 / h, "width": 0.6, "keypointlabels": [f"lm_{i:02d}"]}
        if full:
            items.append({"id": f"lm_{i:02d}", "from_name": "kp", "to_name": "image", "type": "keypointlabels",
                          "original_width": w, "original_height": h, "image_rotation": 0, "value": value})  # fmt: skip
        else:
            items.append({**value, "original_width": w, "original_height": h})
    return items


def test_labelstudio_json_export(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    write_image(tmp_path / "root" / "faces" / "a.png", seed=1)
    write_image(tmp_path / "root" / "faces" / "b.png", seed=2)
    la, lb = landmarks_in(rng, 68), landmarks_in(rng, 68)
    bad_items = _ls_items(lb, W, H, True)
    bad_items[4]["value"]["keypointlabels"] = ["nose"]
    export = [
        {"id": 1, "data": {"image": "/data/local-files/?d=faces/a.png", "sample_id": "s-a"}, "predictions": [1],
         "annotations": [
             {"id": 11, "completed_by": 3, "was_cancelled": False, "result": _ls_items(la, W, H, True)},
             {"id": 12, "completed_by": {"id": 4, "email": "b@x.org"}, "was_cancelled": False,
              "result": _ls_items(la + 1, W, H, True, skip=(7,))},
             {"id": 13, "completed_by": 3, "was_cancelled": True, "result": []},
         ]},
        {"id": 2, "data": {"image": "/data/local-files/?d=faces/b.png", "sample_id": "s-b"},
         "annotations": [{"id": 21, "completed_by": 3, "result": bad_items}]},
        {"id": 3, "data": {"image": "/data/local-files/?d=faces/b.png"},
         "annotations": [{"id": 31, "completed_by": 3, "result": _ls_items(lb, W + 10, H, True)}]},
    ]  # fmt: skip
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    result = read_labelstudio_export(path, S68, image_root=tmp_path / "root")
    assert list(result.samples["sample_id"]) == ["s-a"]  # two annotations, one sample
    assert result.samples["image_uri"].iloc[0] == str((tmp_path / "root" / "faces" / "a.png").resolve())
    assert list(result.labels["annotator"]) == ["3", "b@x.org"]
    assert list(result.labels["ls_annotation_id"]) == [11, 12] and list(result.labels["ls_task_id"]) == [1, 1]
    np.testing.assert_allclose(result.landmarks[0], la, atol=1e-4)  # percent -> pixels
    assert np.isnan(result.landmarks[1][7]).all()  # the point nobody placed is missing
    r = {loc: reason for loc, reason in zip(result.rejects["location"], result.rejects["reason"], strict=True)}
    assert "skipped" in r["task 1 annotation 13"]
    assert "'nose' is not a landmark" in r["task 2 annotation 21"]
    assert "90x60" in r["task 3 annotation 31"] and "80x60" in r["task 3 annotation 31"]
    check_store_ready(result)


def test_labelstudio_json_min_export_without_local_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    lm = landmarks_in(rng, 68)
    rows = [
        {"image": "/data/local-files/?d=faces/a.png", "sample_id": "s-a", "id": 1, "kp": _ls_items(lm, W, H, False),
         "annotator": 1, "annotation_id": 5, "lead_time": 3.0},
        {"image": "/data/local-files/?d=faces/c.png", "id": 2, "annotator": 1, "annotation_id": 6},
    ]  # fmt: skip
    path = tmp_path / "min.json"
    path.write_text(json.dumps(rows))
    result = read_labelstudio_export(path, S68)
    assert list(result.samples["sample_id"]) == ["s-a"]
    assert result.samples["image_uri"].iloc[0] == "/data/local-files/?d=faces/a.png"  # known sample, image elsewhere
    assert (result.samples["width"].iloc[0], result.samples["height"].iloc[0]) == (W, H)
    np.testing.assert_allclose(result.landmarks[0], lm, atol=1e-4)
    assert len(result.rejects) == 1 and "no keypoints" in result.rejects["reason"].iloc[0]


def test_labelstudio_whole_file_problems_raise(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text("[{")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_labelstudio_export(path, S68)
    path.write_text(json.dumps({"tasks": []}))
    with pytest.raises(FormatError, match="list of objects"):
        read_labelstudio_export(path, S68)
    path.write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(FormatError, match="neither a JSON export"):
        read_labelstudio_export(path, S68)


# -- registry -------------------------------------------------------------------------------------


def test_registry_dispatches_by_name(tmp_path: Path) -> None:
    assert set(FORMATS) == {"pts", "wflw", "coco", "csv", "labelstudio"}
    first = _labeled_folder(tmp_path)
    write_any("csv", tmp_path / "l.csv", first.samples, first.landmarks, S68)
    via_registry = read_any("csv", tmp_path / "l.csv", S68)
    np.testing.assert_array_equal(via_registry.landmarks, first.landmarks)
    np.testing.assert_array_equal(FORMATS["pts"](tmp_path / "imgs", S68).landmarks, first.landmarks)
    with pytest.raises(FormatError, match="import-only"):
        write_any("labelstudio", tmp_path / "x.json", first.samples, first.landmarks, S68)
    with pytest.raises(FormatError, match="unknown format"):
        read_any("yolo", tmp_path, S68)
    with pytest.raises(ValueError, match="must align"):
        write_csv(tmp_path / "x.csv", first.samples.iloc[:2], first.landmarks, S68)


def test_import_result_goes_into_the_store(tmp_path: Path) -> None:
    """The store (annotations/store.py) takes an import as it is, and a second import adds nothing."""
    from annotations.store import Store

    first = _labeled_folder(tmp_path)
    (tmp_path / "imgs" / "bad.pts").write_text("version: 1\n")
    result = read_pts_folder(tmp_path / "imgs", S68)
    store = Store.create(tmp_path / "store", S68)
    assert store.add_samples(result.samples) == 3
    assert len(store.add_labels(result.labels, result.landmarks)) == 3
    assert store.add_rejects(result.rejects) == 1
    assert store.add_samples(read_pts_folder(tmp_path / "imgs", S68).samples) == 0
    assert len(first.samples) == 3
