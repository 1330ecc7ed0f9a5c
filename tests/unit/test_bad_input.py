"""Bad input through the commands users type (issue 11, items 1-7): one clear line, an exit status, nothing lost."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from annotations.formats import read_labelstudio_export
from annotations.formats.pts import read_pts
from annotations.store import Store
from flows.cli import main
from flows.ingest_steps import ingest_source
from pipnet_core.schemes import get_scheme
from tests.unit.bad_files import MALFORMED_PTS, bad_images, good_faces, write_pts_beside

SCHEME = get_scheme("300w")


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = str(tmp_path / "store")
    Store.create(url, SCHEME)
    return url


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


# ---------------------------------------------------------------- 1. every row bad


def test_pool_add_of_only_broken_images_records_every_reject_and_exits_1(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = bad_images(tmp_path / "broken")
    code, out, err = _run(["pool", "add", store, str(tmp_path / "broken")], capsys)
    assert code == 1, err
    assert f"0 imported, {len(files)} rejected (0 new samples)" in out
    assert "Traceback" not in err and "nothing imported" in err
    s = Store.open(store)
    assert s.samples().empty
    rejects = s.rejects()
    assert sorted(rejects["source"]) == sorted(str(f.resolve()) for f in files)
    assert (rejects["stage"] == "pool").all() and rejects["reason"].str.len().gt(10).all()


def test_pts_import_of_only_malformed_files_records_every_reject_and_exits_1(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pts"
    image = good_faces(folder, 1)[0]
    image.with_suffix(".pts").unlink()
    for name, text in MALFORMED_PTS.items():
        (folder / f"{image.stem}_{len(name)}{name}.pts").write_text(text)  # multi-face names find the one image
    code, out, err = _run(["import", store, str(folder), "--format", "pts"], capsys)
    assert code == 1, err
    assert f"0 imported, {len(MALFORMED_PTS)} rejected (0 new samples, 0 new labels)" in out
    s = Store.open(store)
    assert s.samples().empty and len(s.labels().frame) == 0
    assert len(s.rejects()) == len(MALFORMED_PTS) and set(s.rejects()["stage"]) == {"import"}


def test_an_import_with_one_good_row_exits_0(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    good_faces(folder, 1)
    (folder / "broken.pts").write_text(MALFORMED_PTS["unclosed"])
    code, out, _ = _run(["import", store, str(folder), "--format", "pts", "--split", "train"], capsys)
    assert code == 0 and "1 imported, 1 rejected (1 new samples, 1 new labels; train 1)" in out


def test_the_store_takes_empty_batches_and_writes_nothing(store: str) -> None:
    from annotations.formats import empty_result

    empty = empty_result(SCHEME.num_landmarks)
    s = Store.open(store)
    assert s.add_samples(empty.samples) == 0
    ids = s.add_labels(empty.labels, empty.landmarks)
    assert ids == [] and ids.new == ()
    assert s.add_rejects(empty.rejects) == 0
    assert not any(p.suffix == ".parquet" for p in Path(store).rglob("*"))


# ---------------------------------------------------------------- 2. predict with no face


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipnet_core.data import FaceDataset
    from pipnet_core.train import TrainConfig, train

    root = tmp_path_factory.mktemp("model")
    images = good_faces(root / "faces", 2, seed=4)
    landmarks = np.stack([read_pts(p.with_suffix(".pts")) for p in images])
    boxes = np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)
    cfg = TrainConfig(epochs=1, batch_size=2, input_size=64, net_stride=16, base_width=8, num_workers=0, augment=None)
    return Path(train(cfg, FaceDataset(images, boxes, landmarks, input_size=64), SCHEME, root / "model.pt",
                      progress=False))  # fmt: skip


def test_predict_on_a_folder_without_faces_says_so_in_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "walls"
    folder.mkdir()
    for k in range(2):
        cv2.imwrite(str(folder / f"wall{k}.png"), np.full((80, 80, 3), 90 + 40 * k, np.uint8))
    out = tmp_path / "out.csv"
    code, _, err = _run(["predict", str(checkpoint), str(folder), "--output", str(out)], capsys)
    assert code == 1 and not out.exists()
    (line,) = _error_lines(err)
    assert line.startswith(f"error: {folder}: no face to predict (2x no face found by yuface") and "--boxes" in line
    assert "Traceback" not in err and "KeyError" not in err


# ---------------------------------------------------------------- 3. whole-file errors: one line, exit 2


def _broken_coco(tmp_path: Path, store: str) -> tuple[list[str], str]:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [')
    return ["import", store, str(path), "--format", "coco"], f"{path}: not valid JSON"


def _wflw_of_another_scheme(tmp_path: Path, store: str) -> tuple[list[str], str]:
    path = tmp_path / "list_98pt.txt"
    path.write_text(" ".join(["1"] * (2 * 98 + 10)) + " a.jpg\n")
    return ["import", store, str(path), "--format", "wflw"], "lines have 98 landmarks"


def _no_store(tmp_path: Path, store: str) -> tuple[list[str], str]:
    return ["import", str(tmp_path / "nowhere"), str(tmp_path), "--format", "pts"], "no pipstc store here"


def _no_pts_files(tmp_path: Path, store: str) -> tuple[list[str], str]:
    (tmp_path / "empty").mkdir()
    return ["import", store, str(tmp_path / "empty"), "--format", "pts"], "no .pts files found"


def _empty_pool_folder(tmp_path: Path, store: str) -> tuple[list[str], str]:
    (tmp_path / "nothing").mkdir()
    return ["pool", "add", store, str(tmp_path / "nothing")], "no files in the folder"


def _no_holdout(tmp_path: Path, store: str) -> tuple[list[str], str]:
    good_faces(tmp_path / "faces", 1)
    ingest_source(store, str(tmp_path / "faces"), "pts", split="train")
    return ["run", store, "--rounds", "1"], "no human-labeled holdout faces"


def _config_not_json(tmp_path: Path, store: str) -> tuple[list[str], str]:
    (tmp_path / "c.json").write_text("epochs: 3\n")
    return ["round", store, "0", "--config", str(tmp_path / "c.json")], f"{tmp_path / 'c.json'}: not valid JSON"


def _boxes_file_header(tmp_path: Path, store: str) -> tuple[list[str], str]:
    good_faces(tmp_path / "imgs", 1)
    (tmp_path / "boxes.csv").write_text("file,left,top,right,bottom\n")
    return ["pool", "add", store, str(tmp_path / "imgs"), "--boxes", str(tmp_path / "boxes.csv")], "wrong header"


WHOLE_FILE_ERRORS = [
    _broken_coco,
    _wflw_of_another_scheme,
    _no_store,
    _no_pts_files,
    _empty_pool_folder,
    _no_holdout,
    _config_not_json,
    _boxes_file_header,
]


@pytest.mark.parametrize("case", WHOLE_FILE_ERRORS, ids=lambda f: f.__name__.strip("_"))
def test_whole_file_errors_print_one_line_and_exit_2(
    case: object, store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, expected = case(tmp_path, store)  # type: ignore[operator]
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert expected in line and " — " in line, line


def test_debug_adds_the_traceback(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = _broken_coco(tmp_path, store)
    code, _, err = _run([*argv, "--debug"], capsys)
    assert code == 2 and "Traceback (most recent call last)" in err and "FormatError" in err
    assert expected in _error_lines(err)[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "{missing}"],
        ["export", "{missing}", "{tmp}/out.csv", "--format", "csv"],
        ["rejects", "{missing}"],
        ["review", "status", "{missing}"],
        ["round", "{missing}", "0"],
        ["pool", "add", "{missing}", "{tmp}"],
    ],
    ids=lambda a: a[0] + ("-" + a[1] if a[0] in ("pool", "review") else ""),
)
def test_every_command_reports_a_missing_store_in_one_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-store"
    code, _, err = _run([a.format(missing=missing, tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and "Traceback" not in err
    (line,) = _error_lines(err)
    assert line.startswith(f"error: {missing}: no pipstc store here") and "pipstc init" in line


def test_push_before_any_round_and_a_missing_checkpoint_are_one_line_user_errors(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["review", "push", store], capsys)
    assert code == 2 and _error_lines(err) == [
        f"error: {store}: no pseudo-labels yet, so nothing to review — run a round first: `pipstc round {store} 0`"
    ]
    good_faces(tmp_path / "imgs", 1)
    missing = tmp_path / "model.pt"
    code, _, err = _run(["predict", str(missing), str(tmp_path / "imgs"), "--output", str(tmp_path / "o.csv")], capsys)
    assert code == 2 and _error_lines(err) == [
        f"error: {missing}: checkpoint not found — give a round's <store>/rounds/round=<k>/model.pt"
    ]


def test_an_unknown_format_is_a_usage_error(store: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["import", store, str(tmp_path), "--format", "ibug"])
    assert exit_.value.code == 2


def test_an_unexpected_error_is_named_as_a_bug_with_the_debug_hint(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.ingest_steps

    def broken(*args: object, **kwargs: object) -> dict[str, object]:
        raise KeyError("box")  # a bug in pipstc, as item 2 was

    monkeypatch.setattr(flows.ingest_steps, "ingest_source", broken)
    code, _, err = _run(["import", store, str(tmp_path), "--format", "pts"], capsys)
    assert code == 1 and "Traceback" not in err
    (line,) = _error_lines(err)
    assert "unexpected KeyError: 'box'" in line and "--debug" in line


# ---------------------------------------------------------------- 4. Label Studio percentages


def _ls_task(task_id: int, image: Path, points: np.ndarray, width: int, height: int) -> dict[str, object]:
    result = [
        {"from_name": "kp", "to_name": "image", "type": "keypointlabels", "original_width": width,
         "original_height": height, "value": {"x": float(x), "y": float(y), "keypointlabels": [name]}}
        for name, (x, y) in zip(SCHEME.landmark_names, points, strict=True)
    ]  # fmt: skip
    return {"id": task_id, "data": {"image": str(image)}, "annotations": [{"id": 10 + task_id, "result": result}]}


def test_label_studio_points_outside_the_image_are_refused_naming_the_row(tmp_path: Path) -> None:
    images = good_faces(tmp_path / "faces", 3)
    h, w = cv2.imread(str(images[0])).shape[:2]
    pct = [read_pts(p.with_suffix(".pts")) * (100.0 / w, 100.0 / h) for p in images]
    pct[1][5] = (140.0, pct[1][5][1])  # the case: 140 % of a 256 px image became 358 px
    pct[2][0] = (100.004, pct[2][0][1])  # a rounding hair past the edge is fine
    export = tmp_path / "export.json"
    export.write_text(json.dumps([_ls_task(k + 1, p, pct[k], w, h) for k, p in enumerate(images)]))
    result = read_labelstudio_export(export, SCHEME)
    assert len(result.samples) == 2 and len(result.rejects) == 1
    reject = result.rejects.iloc[0]
    assert reject["location"] == "task 2 annotation 12"
    assert f"({SCHEME.landmark_names[5]}): x = 140.0 % is outside 0-100 %" in reject["reason"]


# ---------------------------------------------------------------- 5. a box must overlap its image


def test_a_pool_box_that_misses_its_image_is_rejected(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(folder / "ok.png"), np.zeros((200, 200, 3), np.uint8))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\ntiny.png,64,64,192,192\nok.png,64,64,192,192\nok.png,-50,-50,-1,-1\n")
    code, out, _ = _run(["pool", "add", store, str(folder), "--boxes", str(boxes)], capsys)
    assert code == 0 and "1 imported" in out and "2 rejected" in out
    rejects = Store.open(store).rejects()
    assert sorted(rejects["location"]) == ["line 2", "line 4"]
    assert rejects["reason"].str.contains("lies outside the 1x1 image").sum() == 1
    assert rejects["reason"].str.contains("lies outside the 200x200 image").sum() == 1


def test_a_labeled_face_whose_box_misses_its_image_is_rejected(tmp_path: Path) -> None:
    from annotations.formats import read_coco, read_pts_folder

    images = good_faces(tmp_path / "faces", 2)
    # pts: landmarks left of the image but within the far-outside margin, so only the box check sees it
    pts = read_pts(images[1].with_suffix(".pts"))
    pts[:, 0] = pts[:, 0] * 0.3 - 40.0  # x in [-40, -11]: within 50% of the width, left of the image
    write_pts_beside(images[1], pts)
    result = read_pts_folder(tmp_path / "faces", SCHEME)
    assert len(result.samples) == 1 and "lies outside the 96x96 image" in result.rejects["reason"].iloc[0]
    # coco: a bbox beyond the image
    keypoints = [v for x, y in read_pts(images[0].with_suffix(".pts")) for v in (float(x), float(y), 2)]
    doc = {"images": [{"id": 1, "file_name": images[0].name, "width": 96, "height": 96}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "keypoints": keypoints,
                            "bbox": [120.0, 10.0, 40.0, 40.0]}]}  # fmt: skip
    (tmp_path / "faces" / "c.json").write_text(json.dumps(doc))
    coco = read_coco(tmp_path / "faces" / "c.json", None, SCHEME)
    assert coco.samples.empty and "lies outside the 96x96 image" in coco.rejects["reason"].iloc[0]


def test_predict_with_boxes_skips_a_box_outside_its_image(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    face = good_faces(folder, 1)[0]
    face.with_suffix(".pts").unlink()
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image,x0,y0,x1,y1\n{face.name},10,10,86,86\ntiny.png,64,64,192,192\n")
    out = tmp_path / "out.json"
    code, _, err = _run(["predict", str(checkpoint), str(folder), "--output", str(out), "--boxes", str(boxes)], capsys)
    assert code == 0
    rows = json.loads(out.read_text())
    assert [Path(r["image"]).name for r in rows] == [face.name]
    assert "lies outside the 1x1 image" in err


# ---------------------------------------------------------------- 6. the report counts what is new


def test_reimport_reports_zero_new_labels_and_counts_only_the_new_ones(store: str, tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    good_faces(folder, 3)
    first = ingest_source(store, str(folder), "pts", split="train")
    again = ingest_source(store, str(folder), "pts", split="train")
    assert (first["new_samples"], first["new_labels"]) == (3, 3)
    assert (again["faces"], again["new_samples"], again["new_labels"]) == (3, 0, 0)
    good_faces(folder, 2, seed=1)
    grown = ingest_source(store, str(folder), "pts", split="train")
    assert (grown["faces"], grown["new_samples"], grown["new_labels"]) == (5, 2, 2)
    assert len(Store.open(store).labels().frame) == 5


def test_add_labels_returns_every_id_and_says_which_are_new(store: str, tmp_path: Path) -> None:
    from annotations.formats import read_pts_folder

    good_faces(tmp_path / "faces", 2)
    result = read_pts_folder(tmp_path / "faces", SCHEME)
    s = Store.open(store)
    s.add_samples(result.samples)
    first = s.add_labels(result.labels.iloc[:1], result.landmarks[:1])
    both = s.add_labels(result.labels, result.landmarks)
    assert len(both) == 2 and both[0] == first[0] and both.new == (both[1],)
    assert s.add_labels(result.labels, result.landmarks).new == ()


# ---------------------------------------------------------------- 7. pipstc rejects


def test_rejects_lists_file_line_and_reason_with_filters(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "faces"
    good_faces(folder, 1)
    (folder / "a.pts").write_text(MALFORMED_PTS["three_values"])
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "empty.jpg").write_bytes(b"")
    code, out, _ = _run(["import", store, str(folder), "--format", "pts"], capsys)
    assert code == 0 and f"all rejects: pipstc rejects {store} --stage import" in out
    assert main(["pool", "add", store, str(tmp_path / "pool")]) == 1

    code, out, err = _run(["rejects", store], capsys)
    pts_line = f"{(folder / 'a.pts').resolve()}: line 4: landmark 0 needs 2 values 'x y', found 3: '1 2 3'"
    pool_line = f"{(tmp_path / 'pool' / 'empty.jpg').resolve()}: empty file, not an image"
    assert code == 0 and out.splitlines() == [pts_line, pool_line]
    assert "2 rejects (import: 1, pool: 1)" in err
    assert _run(["rejects", store, "--stage", "pool"], capsys)[1].splitlines() == [pool_line]
    assert _run(["rejects", store, "--round", "0"], capsys)[1].splitlines() == [pts_line]
    assert _run(["rejects", store, "--source", str(folder)], capsys)[1].splitlines() == [pts_line]
    code, out, err = _run(["rejects", store, "--stage", "review"], capsys)
    assert out == "" and "no rejects match (stages with rejects in this store: import, pool)" in err
    rows = list(csv.DictReader(io.StringIO(_run(["rejects", store, "--csv"], capsys)[1])))
    assert [(r["stage"], r["round"], r["location"]) for r in rows] == [("import", "0", "file"), ("pool", "", "file")]


def test_the_import_summary_shows_the_first_rejects_and_where_the_rest_are(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "faces"
    good_faces(folder, 1)
    for k in range(7):
        (folder / f"bad{k}.pts").write_text(MALFORMED_PTS["unclosed"])
    code, out, _ = _run(["import", store, str(folder), "--format", "pts"], capsys)
    assert code == 0
    assert sum(line.startswith("  rejected ") for line in out.splitlines()) == 5
    assert f"  ... and 2 more; all rejects: pipstc rejects {store} --stage import" in out
