"""Store faults of issue 11: one lock per real store, the holdout guard by image content, lock temp files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from annotations.store import Store
from annotations.store._lock import writer_lock
from pipnet_core.schemes import scheme_from_dict
from tests.unit.test_store import make_samples

TINY = scheme_from_dict({"name": "tiny5", "num_landmarks": 5})


def test_a_store_opened_through_a_symlink_shares_the_lock_of_its_real_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Store.create(tmp_path / "store", TINY)
    os.symlink(tmp_path / "store", tmp_path / "link")
    linked = Store.open(tmp_path / "link")
    monkeypatch.setenv("PIPSTC_LOCK_TIMEOUT_S", "1")
    with real.lock():  # the same process writes through the other path inside its own hold
        assert linked.add_samples(make_samples(2)) == 2
    assert writer_lock(real._fs) is writer_lock(linked._fs)
    assert linked.url == str(tmp_path / "link")  # messages keep the path the user gave


def _face(sid: str, digest: str, box: list[float], split: str) -> dict:
    return {"sample_id": sid, "image_uri": f"/img/{digest}.png", "image_digest": digest, "width": 200,
            "height": 200, "box": box, "dataset": "unit", "split": split}  # fmt: skip


def test_a_pool_face_on_a_holdout_image_is_refused_whatever_its_box(tmp_path: Path) -> None:
    import pandas as pd

    from annotations.store import HoldoutLeak

    store = Store.create(tmp_path / "store", TINY)
    store.add_samples(pd.DataFrame([_face("h", "img1", [40, 40, 140, 150], "holdout")]))
    detector_box = _face("p", "img1", [30, 35, 145, 160], "pool")  # same face, other box: another sample id
    other_face = _face("q", "img1", [150, 10, 199, 60], "pool")  # another face of the same image
    other_image = _face("r", "img2", [40, 40, 140, 150], "train")
    batch = pd.DataFrame([detector_box, other_face, other_image])
    refused = store.holdout_conflicts(batch)
    assert refused["sample_id"].tolist() == ["p"] and refused["stage"].tolist() == ["pool"]
    assert "overlaps holdout sample h" in refused["reason"][0] and refused["source"][0] == "/img/img1.png"
    with pytest.raises(HoldoutLeak, match="overlap holdout faces"):
        store.add_samples(batch)
    assert store.add_samples(batch[batch["sample_id"] != "p"]) == 2


def test_a_holdout_face_already_trained_on_is_refused_and_a_batch_keeps_the_holdout(tmp_path: Path) -> None:
    import pandas as pd

    store = Store.create(tmp_path / "store", TINY)
    store.add_samples(pd.DataFrame([_face("t", "img1", [40, 40, 140, 150], "train")]))
    late = store.holdout_conflicts(pd.DataFrame([_face("h", "img1", [42, 40, 140, 152], "holdout")]))
    assert late["sample_id"].tolist() == ["h"] and "overlaps train sample t" in late["reason"][0]
    both = pd.DataFrame([_face("h2", "img3", [0, 0, 100, 100], "holdout"), _face("p2", "img3", [5, 5, 99, 99], "pool")])
    assert store.holdout_conflicts(both)["sample_id"].tolist() == ["p2"]


def test_the_same_image_as_holdout_and_in_the_pool_is_refused_and_recorded_as_a_reject(tmp_path: Path) -> None:
    import dataclasses

    from annotations.formats.pts import read_pts
    from flows.ingest_steps import ingest_source
    from pipnet_core.crop import landmark_box
    from pipnet_core.schemes import get_scheme
    from synthetic_faces import DOMAINS, write_dataset

    images = write_dataset(tmp_path / "faces", 3, dataclasses.replace(DOMAINS["studio"], image_size=96), seed=1)
    url = str(tmp_path / "store")
    Store.create(url, get_scheme("300w"))
    ingest_source(url, str(tmp_path / "faces"), "pts", split="holdout")
    boxes = tmp_path / "boxes.csv"  # detector-like boxes: the landmark box grown by 10%
    lines = ["image,x0,y0,x1,y1"]
    for p in images:
        x0, y0, x1, y1 = landmark_box(read_pts(Path(p).with_suffix(".pts")))
        dx, dy = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        lines.append(f"{Path(p).name},{x0 - dx},{y0 - dy},{x1 + dx},{y1 + dy}")
    boxes.write_text("\n".join(lines) + "\n")
    report = ingest_source(url, str(tmp_path / "faces"), "pool", boxes_file=str(boxes))
    store = Store.open(url)
    assert report["new_samples"] == 0 and report["rejects"] == 3
    assert len(store.samples(split="pool")) == 0
    rejects = store.rejects()
    assert (rejects["reason"].str.contains("overlaps holdout sample")).sum() == 3
    assert set(rejects["stage"]) == {"pool"} and all(Path(s).name in {Path(p).name for p in images}
                                                      for s in rejects["source"])  # fmt: skip
