"""The `pipstc` command line on tiny data (no Prefect needed for these commands)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from annotations.formats.pts import read_pts
from annotations.store import Store
from flows.cli import build_parser, main
from synthetic_faces import DOMAINS, write_dataset


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("init", "import", "pool", "round", "run", "review", "predict", "export", "report", "demo", "serve"):
        assert command in out
    assert build_parser().parse_args(["review", "push", "s"]).action == "push"


def test_labelstudio_config_prints_one_label_per_landmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["labelstudio", "config", "--scheme", "aflw"]) == 0
    xml = capsys.readouterr().out
    assert xml.count("<Label ") == 19 and 'model_index="18"' in xml and "KeyPointLabels" in xml


def test_init_import_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faces = tmp_path / "faces"
    small = dataclasses.replace(DOMAINS["studio"], image_size=96)
    images = write_dataset(faces, 5, small, seed=3)
    store = str(tmp_path / "store")
    assert main(["init", store, "--scheme", "300w"]) == 0
    capsys.readouterr()
    assert main(["import", store, str(faces), "--format", "pts", "--split", "train", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["new_samples"] == 5 and report["new_labels"] == 5
    assert main(["import", store, str(faces), "--format", "pts", "--split", "train"]) == 0  # again: adds nothing
    assert "5 imported, 0 rejected (0 new samples, 0 new labels: all already in the store; train 5)" in (
        capsys.readouterr().out
    )
    out = tmp_path / "labels.csv"
    assert main(["export", store, str(out), "--format", "csv"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    truth = {Path(p).name: read_pts(Path(p).with_suffix(".pts")) for p in images}
    for row in rows:
        expected = truth[Path(row["image"]).name]
        got = np.array([[float(row[f"x{i}"]), float(row[f"y{i}"])] for i in range(68)], dtype=np.float32)
        np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert len(Store.open(store).samples(split="train")) == 5


def test_report_without_rounds_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    main(["init", store])
    assert main(["report", store]) == 1
    assert "pipstc round" in capsys.readouterr().err


def test_predict_writes_landmarks_for_every_boxed_face(tmp_path: Path) -> None:
    from pipnet_core.data import FaceDataset
    from pipnet_core.schemes import get_scheme
    from pipnet_core.train import TrainConfig, train

    faces = tmp_path / "faces"
    small = dataclasses.replace(DOMAINS["studio"], image_size=96)
    images = write_dataset(faces, 4, small, seed=4)
    landmarks = np.stack([read_pts(p.with_suffix(".pts")) for p in images])
    boxes = np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)
    cfg = TrainConfig(epochs=1, batch_size=4, input_size=64, net_stride=16, base_width=8, num_workers=0, augment=None)
    dataset = FaceDataset(images, boxes, landmarks, input_size=64)
    checkpoint = train(cfg, dataset, get_scheme("300w"), tmp_path / "model.pt", progress=False)
    for p in images:
        p.with_suffix(".pts").unlink()  # a plain image folder
    box_file = tmp_path / "boxes.csv"
    with box_file.open("w") as f:
        f.write(
            "image,x0,y0,x1,y1\n"
            + "".join(f"{p.name},{','.join(map(str, b))}\n" for p, b in zip(images, boxes, strict=True))
        )
    out = tmp_path / "out.json"
    assert main(["predict", str(checkpoint), str(faces), "--output", str(out), "--boxes", str(box_file)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 4 and all(np.isfinite(r["x67"]) and np.isfinite(r["predicted_nme"]) for r in rows)
