"""What review brings into the store: retraction records, per-landmark visibility, review events as a
state log, and parts written before these columns existed (annotations/store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotations.store import Store, StoreError
from annotations.store.retractions import retract_labels, retraction_id
from annotations.store.schema import ADDED_COLUMNS, labels_schema, reviews_schema
from annotations.store.training import training_set
from pipnet_core.schemes import scheme_from_dict

N = 5
TINY = scheme_from_dict({"name": "tiny5", "num_landmarks": N})


def _store(tmp_path: Path, n: int = 3) -> Store:
    store = Store.create(tmp_path / "store", TINY, holdout_fraction=0.0)
    ids = [f"s{i}" for i in range(n)]
    store.add_samples(pd.DataFrame({"sample_id": ids, "image_uri": [f"{i}.png" for i in ids], "width": 100,
                                    "height": 80, "box": [[0.0, 0.0, 100.0, 80.0]] * n, "dataset": "unit",
                                    "split": "pool"}))  # fmt: skip
    return store


def _pseudo(store: Store, ids: list[str], value: float = 10.0) -> None:
    store.add_labels(pd.DataFrame({"sample_id": ids, "source": "pseudo", "round": 0, "model_version": "m0",
                                   "level": "std"}), np.full((len(ids), N, 2), value, np.float32))  # fmt: skip


def _correction(store: Store, sid: str, value: float, annotation: int) -> str:
    (lid,) = store.add_labels(
        pd.DataFrame({"sample_id": [sid], "source": "corrected", "round": 0, "ls_task_id": [7],
                      "ls_annotation_id": [annotation]}),
        np.full((1, N, 2), value, np.float32),
    )  # fmt: skip
    return lid


def test_a_retracted_correction_no_longer_counts_but_stays_in_the_lineage(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _pseudo(store, ["s0", "s1", "s2"])
    lid = _correction(store, "s0", 50.0, annotation=3)
    assert store.current_labels().frame.set_index("sample_id").at["s0", "source"] == "corrected"
    assert "s0" not in set(store.pool_unlabeled()["sample_id"])

    assert retract_labels(store, [lid]) == 1
    current = store.current_labels()
    row = int(np.flatnonzero(current.frame["sample_id"].to_numpy() == "s0")[0])
    assert current.frame["source"].iat[row] == "pseudo" and (current.landmarks[row] == 10.0).all()
    assert len(store.labels(source="corrected")) == 0  # neither the correction nor its retraction
    assert "s0" in set(store.pool_unlabeled()["sample_id"])  # back in the pool to pseudo-label
    assert "corrected" not in training_set(store, 0).sources
    history = store.lineage("s0").frame
    assert list(history["source"]) == ["pseudo", "corrected", "corrected"]
    assert history["retracts"].iat[2] == lid and history["label_id"].iat[2] == retraction_id(lid)
    log = store.labels(source="corrected", retracted=True)
    assert len(log) == 2 and np.isnan(log.landmarks[1]).all()

    assert retract_labels(store, [lid]) == 0  # retrying adds nothing
    assert retract_labels(store, [retraction_id(lid), "no-such-label"]) == 0
    assert len(store.labels(retracted=True)) == 5


def test_a_newer_correction_of_the_same_face_still_counts_after_an_older_one_is_retracted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _pseudo(store, ["s0"])
    old = _correction(store, "s0", 40.0, annotation=3)
    _correction(store, "s0", 60.0, annotation=4)
    retract_labels(store, [old])
    current = store.current_labels()
    assert current.frame["source"].iat[0] == "corrected" and (current.landmarks[0] == 60.0).all()


def test_visibility_is_stored_checked_against_the_landmarks_and_derived_when_absent(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _pseudo(store, ["s1"])
    lm = np.full((1, N, 2), 30.0, np.float32)
    lm[0, 2] = np.nan
    vis = np.array([[2, 1, 0, 2, 2]], np.int8)
    store.add_labels(pd.DataFrame({"sample_id": ["s0"], "source": "corrected", "round": 0}), lm, visibility=vis)
    view = store.labels()
    by = dict(zip(view.frame["sample_id"], range(len(view)), strict=True))
    assert view.visibility[by["s0"]].tolist() == [2, 1, 0, 2, 2]
    assert view.visibility[by["s1"]].tolist() == [2] * N  # recorded none: every placed point is visible
    with pytest.raises(StoreError, match="row 0, landmark 2 has visibility 2 but its position is NaN"):
        store.add_labels(pd.DataFrame({"sample_id": ["s2"], "source": "corrected", "round": 0}), lm,
                         visibility=np.full((1, N), 2))  # fmt: skip
    with pytest.raises(StoreError, match="visibility 3 in row 0, landmark 0"):
        store.add_labels(pd.DataFrame({"sample_id": ["s2"], "source": "corrected", "round": 0}), lm,
                         visibility=np.array([[3, 1, 0, 2, 2]]))  # fmt: skip


def test_review_events_are_a_state_log_a_flip_ends_in_the_latest_state(tmp_path: Path) -> None:
    store = _store(tmp_path)
    t = pd.Timestamp("2026-01-01T10:00:00Z")

    def event(status: str, minute: int) -> pd.DataFrame:
        return pd.DataFrame({"sample_id": ["s0"], "round": [0], "status": [status], "project_id": [1],
                             "task_id": [5], "annotation_id": [9],
                             "annotated_at": [t + pd.Timedelta(minutes=minute)]})  # fmt: skip

    pushed = pd.DataFrame({"sample_id": ["s0"], "round": [0], "status": ["pushed"], "project_id": [1], "task_id": [5]})
    assert store.add_reviews(pushed) == 1
    assert store.add_reviews(pushed) == 0  # a retried write: the same state
    assert store.add_reviews(event("completed", 1)) == 1
    assert store.add_reviews(event("rejected", 2)) == 1
    assert store.add_reviews(event("completed", 1)) == 1  # back to the first version's state
    assert store.reviews().set_index("sample_id").at["s0", "status"] == "completed"
    assert store.add_reviews(event("completed", 1)) == 0  # seen again by the next pull: nothing new
    assert list(store.reviews(latest=False)["status"]) == ["pushed", "completed", "rejected", "completed"]


def _write_old_part(folder: Path, table: pa.Table, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"part-00000000T000000-{name}.parquet")


def test_parts_written_before_the_new_columns_are_read_with_them_null(tmp_path: Path) -> None:
    _store(tmp_path)
    old_labels = labels_schema(N)
    for name in ADDED_COLUMNS["labels"]:
        old_labels = old_labels.remove(old_labels.get_field_index(name))
    arrays = {
        "label_id": ["old1"], "sample_id": ["s0"], "source": ["corrected"], "round": [0],
        "landmarks": [[[1.0, 2.0]] * N], "created_at": [pd.Timestamp("2025-01-01T00:00:00Z")],
    }  # fmt: skip
    table = pa.table({f.name: pa.array(arrays.get(f.name, [None]), f.type) for f in old_labels}, schema=old_labels)
    _write_old_part(tmp_path / "store" / "labels" / "round=0" / "source=corrected", table, "old")
    old_reviews = reviews_schema().remove(reviews_schema().get_field_index("annotated_at"))
    rev = {"sample_id": ["s0"], "round": [0], "status": ["completed"],
           "updated_at": [pd.Timestamp("2025-01-01", tz="UTC")]}  # fmt: skip
    rev_table = pa.table({f.name: pa.array(rev.get(f.name, [None]), f.type) for f in old_reviews}, schema=old_reviews)
    _write_old_part(tmp_path / "store" / "reviews", rev_table, "old")

    again = Store.open(tmp_path / "store")
    assert again.check() == []
    view = again.labels()
    assert view.frame["label_id"].tolist() == ["old1"] and view.frame["retracts"].isna().all()
    assert view.visibility is None and (view.landmarks[0] == [1.0, 2.0]).all()
    assert again.reviews()["annotated_at"].isna().all()
    retract_labels(again, ["old1"])  # and new rows go beside them
    assert len(again.labels()) == 0 and len(again.labels(retracted=True)) == 2


def test_a_training_set_does_not_depend_on_the_order_its_pseudo_label_shards_finished(tmp_path: Path) -> None:
    from tests.unit.review_store import add_pseudo, make_pool_store, pool_ids

    ids = pool_ids(12)
    sets = []
    for name, halves in (("a", (ids[:6], ids[6:])), ("b", (ids[6:], ids[:6]))):  # shard B finished first in "b"
        store = make_pool_store(tmp_path / name, n=12)
        for half in halves:
            add_pseudo(store, 0, half, np.full(len(half), 0.03))
        sets.append(training_set(store, 1))
    a, b = sets
    assert a.sample_ids == b.sample_ids and a.label_ids == b.label_ids
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert a.sources[:3] == ["human"] * 3 and a.sample_ids[3:] == sorted(ids)  # people first, then by sample id
