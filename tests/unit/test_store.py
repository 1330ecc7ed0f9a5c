"""The label store: create/open, schema versions, writes and their validation, dedupe, splits, settings,
round bookkeeping, the writer lock, check(), and the memory:// filesystem (annotations/store.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotations.store import (
    CorruptFile,
    HoldoutLeak,
    RoundFileMissing,
    SchemaVersionError,
    Store,
    StoreError,
    StoreLocked,
)
from annotations.store._lock import LOCK_NAME, writer_lock
from annotations.store.schema import SCHEMA_VERSION, labels_schema
from annotations.store.splits import assign_split, assign_splits, split_fraction
from pipnet_core.schemes import get_scheme, scheme_from_dict

N = 5
TINY = scheme_from_dict({"name": "tiny5", "num_landmarks": N})


def make_samples(n: int, prefix: str = "s", split: str | None = None) -> pd.DataFrame:
    ids = [f"{prefix}{i}" for i in range(n)]
    frame = pd.DataFrame(
        {
            "sample_id": ids,
            "image_uri": [f"img/{i}.jpg" for i in ids],
            "width": 640,
            "height": 480,
            "box": [[10.0, 20.0, 110.0, 140.0]] * n,
            "dataset": "unit",
        }
    )
    if split is not None:
        frame["split"] = split
    return frame


def make_labels(ids: list[str], source: str = "pseudo", round_: int = 1, **cols: object) -> pd.DataFrame:
    frame = pd.DataFrame({"sample_id": ids, "source": source, "round": round_})
    for k, v in cols.items():
        frame[k] = v
    return frame


def lms(r: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 400, size=(r, N, 2)).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.create(tmp_path / "store", TINY)
    s.add_samples(make_samples(6, "t", "train"))
    s.add_samples(make_samples(6, "p", "pool"))
    s.add_samples(make_samples(3, "h", "holdout"))
    return s


# ------------------------------------------------------------------ create / open / versions
def test_create_then_open_round_trips_scheme_and_layout(tmp_path: Path) -> None:
    s = Store.create(tmp_path / "st", get_scheme("300w"), holdout_fraction=0.2)
    meta = json.loads((tmp_path / "st" / "store.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["holdout_fraction"] == 0.2
    assert meta["scheme"]["name"] == s.scheme.name == "300w" and meta["settings"] == {}
    for sub in ("samples", "labels", "reviews", "rejects", "rounds"):
        assert (tmp_path / "st" / sub).is_dir()
    again = Store.open(tmp_path / "st")
    assert again.scheme == get_scheme("300w") and again.holdout_fraction == 0.2
    assert again.url == str(tmp_path / "st")


def test_create_refuses_existing_store_and_non_empty_folder(tmp_path: Path) -> None:
    Store.create(tmp_path / "st", TINY)
    with pytest.raises(StoreError, match="already exists"):
        Store.create(tmp_path / "st", TINY)
    assert Store.create(tmp_path / "st", TINY, exist_ok=True).scheme == TINY
    with pytest.raises(StoreError, match="scheme"):
        Store.create(tmp_path / "st", get_scheme("300w"), exist_ok=True)
    with pytest.raises(StoreError, match="holdout_fraction"):
        Store.create(tmp_path / "st", TINY, holdout_fraction=0.3, exist_ok=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        Store.create(tmp_path / "other", TINY)


def test_open_missing_store_says_how_to_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="Store.create"):
        Store.open(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("version", "match"),
    [(SCHEMA_VERSION + 1, "upgrade pipstc"), ("1", "upgrade pipstc"), (0, "older pipstc")],
)
def test_open_refuses_other_schema_versions(tmp_path: Path, version: object, match: str) -> None:
    Store.create(tmp_path / "st", TINY)
    path = tmp_path / "st" / "store.json"
    meta = json.loads(path.read_text())
    meta["schema_version"] = version
    path.write_text(json.dumps(meta))
    with pytest.raises(SchemaVersionError, match=match):
        Store.open(tmp_path / "st")


def test_open_reports_broken_store_json_by_name(tmp_path: Path) -> None:
    Store.create(tmp_path / "st", TINY)
    (tmp_path / "st" / "store.json").write_text("{not json")
    with pytest.raises(CorruptFile, match="store.json") as e:
        Store.open(tmp_path / "st")
    assert e.value.path.endswith("store.json")


def test_settings_persist_across_opens(store: Store) -> None:
    assert store.get_setting("labelstudio.project_id") is None
    assert store.get_setting("labelstudio.project_id", 7) == 7
    store.set_setting("labelstudio.project_id", 12)
    store.set_setting("review.budget", {"per_round": 50})
    again = Store.open(store.url)
    assert again.get_setting("labelstudio.project_id") == 12
    assert again.get_setting("review.budget") == {"per_round": 50}
    assert again.scheme == TINY  # rewriting store.json kept the rest
    with pytest.raises(StoreError, match="JSON"):
        store.set_setting("bad", object())


# ------------------------------------------------------------------------------ splits
def test_assign_split_is_stable_and_near_the_fraction() -> None:
    ids = [f"face-{i}" for i in range(20000)]
    splits = assign_splits(ids, 0.1, "pool")
    assert set(splits) == {"holdout", "pool"}
    assert 0.09 < np.mean(splits == "holdout") < 0.11
    assert [assign_split(i, 0.1, "pool") for i in ids[:200]] == list(splits[:200])
    assert split_fraction("face-1") == split_fraction("face-1")
    assert assign_split("face-1", 0.0, "train") == "train"
    with pytest.raises(ValueError):
        assign_split("x", 1.0, "train")
    with pytest.raises(ValueError):
        assign_split("x", 0.1, "holdout")


def test_add_samples_assigns_missing_splits_keeps_explicit_ones_and_never_changes_them(tmp_path: Path) -> None:
    s = Store.create(tmp_path / "st", TINY, holdout_fraction=0.5)
    frame = make_samples(40)
    frame["split"] = [None] * 39 + ["pool"]
    assert s.add_samples(frame, default_split="train") == 40
    got = s.samples().set_index("sample_id")["split"]
    expect = [assign_split(f"s{i}", 0.5, "train") for i in range(39)]
    assert list(got.iloc[:39]) == expect and got["s39"] == "pool"
    assert {"holdout", "train"} <= set(expect)
    # re-adding with other splits changes nothing
    again = make_samples(40, split="pool")
    assert s.add_samples(again) == 0
    assert s.samples().set_index("sample_id")["split"].equals(got)
    s.add_samples(make_samples(30, prefix="q"), default_split="pool")
    q = s.samples().query("sample_id.str.startswith('q')")
    assert list(q["split"]) == [assign_split(f"q{i}", 0.5, "pool") for i in range(30)]
    assert set(q["split"]) == {"pool", "holdout"}
    assert set(s.samples("holdout")["sample_id"]) == set(s.samples().query("split == 'holdout'")["sample_id"])


def test_add_samples_dedupes_within_and_across_batches(store: Store) -> None:
    frame = pd.concat([make_samples(3, "n", "pool"), make_samples(2, "n", "pool")], ignore_index=True)
    assert store.add_samples(frame) == 3
    assert store.add_samples(frame) == 0
    assert store.add_samples(store.samples()) == 0  # what samples() returns is valid input
    assert store.samples()["sample_id"].is_unique
    row = store.samples().set_index("sample_id").loc["n1"]
    assert list(row["box"]) == [10.0, 20.0, 110.0, 140.0] and row["width"] == 640


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda f: f.drop(columns=["image_uri"]), "missing required column 'image_uri'"),
        (lambda f: f.assign(extra=1), r"unknown column\(s\) \['extra'\]"),
        (lambda f: f.assign(split="test"), "column 'split' has 'test'"),
        (lambda f: f.assign(box=[[1.0, 2.0, 3.0]] * len(f)), "column 'box'"),
        (lambda f: f.assign(width=0), "'width' must be > 0"),
        (lambda f: f.assign(width="wide"), "column 'width' cannot be read"),
        (lambda f: f.assign(sample_id=[None] + list(f["sample_id"][1:])), "'sample_id' is empty"),
    ],
)
def test_add_samples_validates_with_named_fields(store: Store, change, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        store.add_samples(change(make_samples(3, "v", "pool")))


# ------------------------------------------------------------------------------ labels
def test_add_labels_ids_are_deterministic_and_a_retry_is_a_no_op(store: Store) -> None:
    ids = ["t0", "t1", "p0"]
    frame = make_labels(ids, model_version="m1", level="std")
    first = store.add_labels(frame, lms(3), landmark_confidence=np.full((3, N), 0.5))
    assert len(set(first)) == 3 and all(len(i) == 32 for i in first)
    # retry with a new created_at and slightly different predictions: same pseudo-label ids, nothing new
    later = frame.assign(created_at=pd.Timestamp("2031-01-01", tz="UTC"))
    assert store.add_labels(later, lms(3) + 1e-3) == first
    assert len(store.labels()) == 3
    # another model version is another label
    assert store.add_labels(frame.assign(model_version="m2"), lms(3)) != first
    assert len(store.labels()) == 6


def test_human_label_ids_hash_landmarks_and_keep_explicit_ids(store: Store) -> None:
    frame = make_labels(["t0"], source="human", round_=0, annotator="ann")
    a = store.add_labels(frame, lms(1, seed=1))
    b = store.add_labels(frame, lms(1, seed=2))
    assert a != b and store.add_labels(frame, lms(1, seed=1)) == a
    assert store.add_labels(frame.assign(label_id="mine-1"), lms(1, seed=3)) == ["mine-1"]
    assert len(store.labels(source="human")) == 3


def test_add_labels_dedupes_within_a_batch(store: Store) -> None:
    frame = make_labels(["t0", "t0", "t1"], model_version="m")
    out = store.add_labels(frame, lms(3))
    assert out[0] == out[1] and len(store.labels()) == 2


def test_add_labels_round_trips_values(store: Store) -> None:
    lm = lms(2)
    lm[0, 3] = np.nan
    conf = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [1, 1, 1, 1, 1]], dtype=np.float32)
    moved = np.zeros((2, N), bool)
    moved[1, 2] = True
    frame = make_labels(["t2", "p3"], source="corrected", round_=2, parent_label_id="x", ls_task_id=[5, 6])
    store.add_labels(frame, lm, landmark_confidence=conf, moved=moved)
    view = store.labels(round=2)
    assert list(view.frame["sample_id"]) == ["t2", "p3"] and list(view.frame["split"]) == ["train", "pool"]
    np.testing.assert_array_equal(view.landmarks, lm)
    np.testing.assert_array_equal(view.landmark_confidence, conf)
    np.testing.assert_array_equal(view.moved, moved)
    assert list(view.frame["ls_task_id"]) == [5, 6]
    assert str(view.frame["created_at"].dtype) == "datetime64[us, UTC]"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"landmarks": np.zeros((2, 7, 2))}, "scheme 'tiny5' has 5"),
        ({"landmarks": np.zeros((3, N, 2))}, r"shape \(R, N, 2\)"),
        ({"landmarks": np.full((2, N, 2), np.inf)}, "infinite"),
        ({"landmark_confidence": np.zeros((2, 4))}, "landmark_confidence must have shape"),
        ({"rows": make_labels(["t0", "zz"])}, "samples the store does not have"),
        ({"rows": make_labels(["t0", "t1"], source="model")}, "column 'source' has 'model'"),
        ({"rows": make_labels(["t0", "t1"], level="easy")}, "column 'level' has 'easy'"),
        ({"rows": make_labels(["t0", "t1"], round_=-1)}, "'round' must be >= 0"),
        ({"rows": make_labels(["t0", "t1"]).drop(columns=["round"])}, "missing required column 'round'"),
        ({"rows": make_labels(["t0", "t1"]).assign(landmarks=1)}, "as the array argument"),
    ],
)
def test_add_labels_refuses_bad_input_with_the_reason(store: Store, kwargs: dict, match: str) -> None:
    args = {"rows": make_labels(["t0", "t1"]), "landmarks": lms(2)} | kwargs
    with pytest.raises(StoreError, match=match):
        store.add_labels(**args)
    assert len(store.labels()) == 0


def test_holdout_samples_take_human_labels_only(store: Store) -> None:
    store.add_labels(make_labels(["h0"], source="human", round_=0), lms(1))
    for source in ("pseudo", "corrected"):
        with pytest.raises(HoldoutLeak, match="holdout"):
            store.add_labels(make_labels(["t0", "h1"], source=source), lms(2))
    assert len(store.labels()) == 1


# ----------------------------------------------------------------------- reviews/rejects
def test_reviews_dedupe_latest_and_refuse_holdout(store: Store) -> None:
    t0 = pd.Timestamp("2030-01-01", tz="UTC")
    pushed = pd.DataFrame({"sample_id": ["p0", "p1"], "round": 1, "status": "pushed", "project_id": 3,
                           "task_id": [10, 11], "updated_at": t0})  # fmt: skip
    assert store.add_reviews(pushed) == 2
    assert store.add_reviews(pushed.assign(updated_at=t0 + pd.Timedelta("1h"), note="retry")) == 0
    done = pd.DataFrame({"sample_id": ["p0"], "round": 1, "status": "completed", "project_id": 3, "task_id": [10],
                         "annotation_id": [99], "updated_at": t0 + pd.Timedelta("2h")})  # fmt: skip
    assert store.add_reviews(done) == 1
    assert len(store.reviews(latest=False)) == 3
    latest = store.reviews().set_index("sample_id")
    assert latest.loc["p0", "status"] == "completed" and latest.loc["p1", "status"] == "pushed"
    assert latest.loc["p0", "annotation_id"] == 99
    assert list(store.in_review()["sample_id"]) == ["p1"]
    with pytest.raises(HoldoutLeak, match="never sent"):
        store.add_reviews(pd.DataFrame({"sample_id": ["h0"], "round": 1, "status": "pushed"}))
    with pytest.raises(StoreError, match="does not have"):
        store.add_reviews(pd.DataFrame({"sample_id": ["nope"], "round": 1, "status": "pushed"}))
    with pytest.raises(StoreError, match="'status' has 'lost'"):
        store.add_reviews(pd.DataFrame({"sample_id": ["p0"], "round": 1, "status": "lost"}))


def test_rejects_are_recorded_once(store: Store) -> None:
    rows = pd.DataFrame({"stage": "import", "source": ["a.pts", "b.pts"], "location": ["line 3", None],
                         "reason": "fewer than 68 points"})  # fmt: skip
    assert store.add_rejects(rows) == 2
    assert store.add_rejects(rows) == 0
    got = store.rejects()
    assert list(got["source"]) == ["a.pts", "b.pts"] and got["location"].isna().tolist() == [False, True]
    with pytest.raises(StoreError, match="missing required column 'reason'"):
        store.add_rejects(rows.drop(columns=["reason"]))


# ------------------------------------------------------------------------------- rounds
def test_round_files_json_and_steps(store: Store) -> None:
    assert store.rounds() == []
    assert store.completed_steps(0) == {}
    path = store.write_round_file(0, "model.pt", b"\x00weights")
    assert Path(path).read_bytes() == b"\x00weights" and Path(store.round_path(0)).is_dir()
    assert store.read_round_file(0, "model.pt") == b"\x00weights"
    store.write_round_json(0, "metrics.json", {"nme": np.float32(0.05), "ced": np.arange(3)})
    assert store.read_round_json(0, "metrics.json") == {"nme": pytest.approx(0.05), "ced": [0, 1, 2]}
    store.write_round_json(0, "shards/plan.json", ["a"])
    assert store.read_round_json(0, "shards/plan.json") == ["a"]
    assert store.read_round_json(0, "missing.json", default={"x": 1}) == {"x": 1}
    with pytest.raises(RoundFileMissing):
        store.read_round_file(0, "missing.bin")
    with pytest.raises(FileNotFoundError):
        store.read_round_file(0, "missing.bin")
    store.mark_step(0, "train", {"epochs": 3})
    store.mark_step(0, "evaluate")
    steps = store.completed_steps(0)
    assert list(steps) == ["train", "evaluate"] and steps["train"]["epochs"] == 3
    assert "completed_at" in steps["evaluate"]
    store.write_round_json(2, "config.json", {})
    assert store.rounds() == [0, 2]
    for bad in ("../x", "/abs", "a//b", ".hidden", "_tmp-x"):
        with pytest.raises(StoreError, match="round file name"):
            store.write_round_file(0, bad, b"")
    with pytest.raises(StoreError, match="round must be"):
        store.round_path(-1)


def test_round_json_that_is_not_json_is_reported(store: Store) -> None:
    store.write_round_file(1, "steps.json", b"{broken")
    with pytest.raises(CorruptFile, match="steps.json"):
        store.completed_steps(1)
    assert any("steps.json" in p for p in store.check())


# --------------------------------------------------------------------------------- lock
def test_lock_is_reentrant_and_released(store: Store) -> None:
    lock_file = Path(store.url) / LOCK_NAME
    with store.lock():
        with store.lock():
            store.add_samples(make_samples(1, "L", "pool"))  # writes take the lock again
            assert lock_file.exists()
        assert lock_file.exists()
    assert not lock_file.exists()


def _write_lock(path: Path, **info: object) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "token": uuid.uuid4().hex}
    path.write_text(json.dumps(holder | info))


def test_lock_held_by_a_live_process_times_out_with_its_name(store: Store) -> None:
    lock = writer_lock(store._fs)
    _write_lock(Path(store.url) / LOCK_NAME)  # this very (live) process, as if another Store held it
    lock.timeout_s = 0.3
    try:
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            store.add_samples(make_samples(1, "L", "pool"))
    finally:
        lock.timeout_s = None
        (Path(store.url) / LOCK_NAME).unlink()


def test_stale_locks_are_broken(store: Store) -> None:
    lock_file = Path(store.url) / LOCK_NAME
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(lock_file, pid=int(dead.stdout))  # same host, pid gone
    assert store.add_samples(make_samples(1, "A", "pool")) == 1
    _write_lock(lock_file, host="elsewhere", since=time.time() - 7200)  # other host, older than an hour
    assert store.add_samples(make_samples(1, "B", "pool")) == 1
    lock_file.write_text("")  # a writer died between creating and filling the lock
    old = time.time() - 60
    os.utime(lock_file, (old, old))
    assert store.add_samples(make_samples(1, "C", "pool")) == 1
    assert not lock_file.exists()


@pytest.mark.parametrize("other", [{"host": "elsewhere", "pid": 1}, {"pid": 1, "pid_ns": "pid:[1]"}])
def test_recent_lock_whose_pid_cannot_be_checked_is_respected(store: Store, other: dict) -> None:
    """Another host, or the same host name in another pid namespace (containers): only age can tell."""
    lock = writer_lock(store._fs)
    _write_lock(Path(store.url) / LOCK_NAME, **other)
    lock.timeout_s = 0.2
    try:
        with pytest.raises(StoreLocked, match="pid 1 on host"):
            store.add_samples(make_samples(1, "D", "pool"))
    finally:
        lock.timeout_s = None
        (Path(store.url) / LOCK_NAME).unlink()


@pytest.mark.skipif(not Path("/proc/sys/kernel/random/boot_id").exists(), reason="Linux boot id needed")
def test_lock_from_before_a_reboot_is_stale(store: Store) -> None:
    _write_lock(Path(store.url) / LOCK_NAME, boot_id="another-boot")  # our own live pid, but an older boot
    assert store.add_samples(make_samples(1, "E", "pool")) == 1


# -------------------------------------------------------------------------------- check
def _first_label_part(store: Store) -> Path:
    return sorted((Path(store.url) / "labels").rglob("part-*.parquet"))[0]


def test_check_is_clean_and_reports_foreign_truncated_and_unknown_files(store: Store) -> None:
    store.add_labels(make_labels(["t0", "t1"], model_version="m"), lms(2))
    store.write_round_json(1, "config.json", {})
    assert store.check() == []
    folder = _first_label_part(store).parent
    good = _first_label_part(store).read_bytes()
    (folder / "part-0-truncated.parquet").write_bytes(good[: len(good) // 2])
    pq.write_table(pa.table({"x": [1, 2]}), folder / "part-0-foreign.parquet")
    (folder / "notes.csv").write_text("a,b")
    (Path(store.url) / "labels" / "round=x").mkdir()
    (Path(store.url) / "stray.bin").write_bytes(b"")
    (folder / "_tmp-abc-part.parquet").write_bytes(b"half")  # a crashed write: ignored, not a problem
    problems = store.check()
    for name in ("part-0-truncated.parquet", "part-0-foreign.parquet", "notes.csv", "round=x", "stray.bin"):
        assert sum(name in p for p in problems) == 1, (name, problems)
    assert not any("_tmp-" in p for p in problems)
    with pytest.raises(CorruptFile) as e:
        store.labels()
    assert "labels" in e.value.path


def test_misplaced_label_part_is_reported(store: Store) -> None:
    store.add_labels(make_labels(["t0"], model_version="m"), lms(1))
    part = _first_label_part(store)
    other = Path(store.url) / "labels" / "round=3" / "source=pseudo"
    other.mkdir(parents=True)
    part.rename(other / part.name)
    problems = store.check()
    assert len(problems) == 1 and part.name in problems[0] and "round" in problems[0]
    with pytest.raises(CorruptFile, match=part.name):
        store.labels()


def test_part_of_another_scheme_size_is_refused(store: Store) -> None:
    folder = Path(store.url) / "labels" / "round=1" / "source=pseudo"
    folder.mkdir(parents=True)
    pq.write_table(labels_schema(7).empty_table(), folder / "part-1-n7.parquet")
    with pytest.raises(CorruptFile, match="part-1-n7.parquet: columns differ"):
        store.pseudo_labels(1)


# ---------------------------------------------------------------------- other filesystems
def test_memory_filesystem_url_works_end_to_end() -> None:
    url = f"memory://pipstc-test-{uuid.uuid4().hex}/store"
    s = Store.create(url, TINY)
    assert s.url == url and Store.open(url).scheme == TINY
    s.add_samples(make_samples(4, "m", "pool"))
    ids = s.add_labels(make_labels(["m0", "m1"], model_version="v"), lms(2), landmark_confidence=np.ones((2, N)))
    assert s.add_labels(make_labels(["m0", "m1"], model_version="v"), lms(2)) == ids
    view = s.current_labels()
    assert len(view) == 2 and view.landmark_confidence.shape == (2, N)
    assert set(s.pool_unlabeled()["sample_id"]) == {"m0", "m1", "m2", "m3"}
    s.mark_step(0, "train")
    s.write_round_file(0, "model.pt", b"w")
    assert s.read_round_file(0, "model.pt") == b"w" and s.rounds() == [0]
    assert s.round_path(0).startswith("memory://")
    s.set_setting("k", 1)
    assert Store.open(url).get_setting("k") == 1
    assert s.check() == []


def test_file_url_works(tmp_path: Path) -> None:
    s = Store.create(f"file://{tmp_path}/st", TINY)
    s.add_samples(make_samples(2, "f", "train"))
    assert len(Store.open(tmp_path / "st").samples()) == 2
    assert s.round_path(0) == str(tmp_path / "st" / "rounds" / "round=0")
    assert writer_lock(s._fs) is writer_lock(Store.open(tmp_path / "st")._fs)  # one lock, however it is named
