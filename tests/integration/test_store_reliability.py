"""Label store reliability with real processes (issue 4): a writer killed mid-write, two writers at once,
a lock held by a live or a dead process, and foreign or truncated files dropped into the store.

The kill is deterministic: ``PIPSTC_STORE_PAUSE_BEFORE_COMMIT`` makes the writer announce its finished
temporary file on stdout and sleep before the rename; the test kills it (SIGKILL) at that moment.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotations.store import CorruptFile, Store, StoreLocked
from annotations.store._fs import PAUSE_ENV
from annotations.store._lock import LOCK_NAME, writer_lock
from pipnet_core.schemes import get_scheme

ROOT = Path(__file__).resolve().parents[2]
N = 68

# The writer process: python -c WRITER <store> <mode> <seed> <first sample> <count> [<batches>]
WRITER = r"""
import sys, time
import numpy as np, pandas as pd
from annotations.store import Store

url, mode, seed, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
batches = int(sys.argv[6]) if len(sys.argv) > 6 else 1
store = Store.open(url)
if mode == "labels":
    go = sys.argv[7] if len(sys.argv) > 7 else None
    while go and not __import__("os").path.exists(go):
        time.sleep(0.005)
    rng = np.random.default_rng(seed)
    lm = rng.uniform(0, 500, size=(count, 68, 2)).astype(np.float32)
    conf = rng.uniform(0, 1, size=(count, 68)).astype(np.float32)
    ids = [f"s{i}" for i in range(first, first + count)]
    for part in np.array_split(np.arange(count), batches):
        rows = pd.DataFrame({"sample_id": [ids[i] for i in part], "source": "pseudo", "round": 1,
                             "model_version": f"m{seed}", "level": "std"})
        store.add_labels(rows, lm[part], landmark_confidence=conf[part])
elif mode == "step":
    store.mark_step(1, f"step{seed}", {"seed": seed})
elif mode == "hold":
    with store.lock():
        print("LOCKED", flush=True)
        time.sleep(120)
print("DONE", flush=True)
"""


def expected(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The landmarks and confidences the writer with ``seed`` writes."""
    rng = np.random.default_rng(seed)
    lm = rng.uniform(0, 500, size=(count, N, 2)).astype(np.float32)
    return lm, rng.uniform(0, 1, size=(count, N)).astype(np.float32)


def start(url: str, *args: object, pause: float | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(PAUSE_ENV, None)
    if pause is not None:
        env[PAUSE_ENV] = str(pause)
    cmd = [sys.executable, "-c", WRITER, url, *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> str:
    """The first stdout line of ``proc`` starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line.strip()
            if line == "" and proc.poll() is not None:
                break
    proc.kill()
    raise AssertionError(f"no {prefix!r} line from the writer; stderr: {proc.stderr.read()}")


def finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "DONE" in out, err


def run(url: str, *args: object) -> None:
    finish(start(url, *args))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.create(tmp_path / "store", get_scheme("300w"))
    ids = [f"s{i}" for i in range(12000)]
    n = len(ids)
    s.add_samples(pd.DataFrame({"sample_id": ids, "image_uri": ids, "width": 640, "height": 480,
                                "box": [[0.0, 0.0, 99.0, 99.0]] * n, "split": "pool", "dataset": "r"}))  # fmt: skip
    return s


def snapshot(store: Store) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    view = Store.open(store.url).labels()
    return view.frame, view.landmarks, view.landmark_confidence


def temp_files(store: Store) -> list[Path]:
    return sorted(Path(store.url).rglob("_tmp-*"))


def test_writer_killed_mid_write_leaves_the_store_as_before_and_the_retry_lands_once(store: Store) -> None:
    run(store.url, "labels", 1, 0, 3000)  # state before: 3000 labels
    before = snapshot(store)
    victim = start(store.url, "labels", 2, 3000, 8000, pause=120)
    tmp = Path(wait_line(victim, "PIPSTC_PAUSED").split(" ", 1)[1])
    assert tmp.exists() and tmp.name.startswith("_tmp-") and tmp.parent.name == "source=pseudo"
    assert (Path(store.url) / LOCK_NAME).exists()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    # readable and equal to its state before the write; the leftover temp is invisible
    after = snapshot(store)
    pd.testing.assert_frame_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])
    assert tmp.exists() and Store.open(store.url).check() == []
    assert (Path(store.url) / LOCK_NAME).exists()  # the dead writer's lock is still there...

    run(store.url, "labels", 2, 3000, 8000)  # ...and does not block the retry
    view = Store.open(store.url).labels()
    assert len(view) == 11000 and view.frame["label_id"].is_unique
    lm, conf = expected(2, 8000)
    np.testing.assert_array_equal(view.landmarks[3000:], lm)
    np.testing.assert_array_equal(view.landmark_confidence[3000:], conf)
    assert temp_files(store) == [] and not (Path(store.url) / LOCK_NAME).exists()
    run(store.url, "labels", 2, 3000, 8000)  # repeated once more: nothing new
    assert len(Store.open(store.url).labels()) == 11000


def test_writer_killed_while_marking_a_step_keeps_the_steps_before(store: Store) -> None:
    run(store.url, "step", 1, 0, 0)
    victim = start(store.url, "step", 2, 0, 0, pause=120)
    wait_line(victim, "PIPSTC_PAUSED")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert list(Store.open(store.url).completed_steps(1)) == ["step1"]
    run(store.url, "step", 2, 0, 0)
    assert list(Store.open(store.url).completed_steps(1)) == ["step1", "step2"]


def test_two_writers_at_once_both_land_whole(store: Store, tmp_path: Path) -> None:
    go = tmp_path / "go"
    a = start(store.url, "labels", 11, 0, 6000, 3, go)  # s0..s5999 in 3 batches
    b = start(store.url, "labels", 12, 6000, 6000, 3, go)  # s6000..s11999 in 3 batches
    same = [start(store.url, "labels", 13, 0, 2000, 1, go) for _ in range(3)]  # the same batch, 3 times at once
    time.sleep(1.5)  # let all five import and wait at the barrier
    go.touch()
    for p in (a, b, *same):
        finish(p)
    view = Store.open(store.url).labels()
    assert len(view) == 14000 and view.frame["label_id"].is_unique
    frame = view.frame.assign(row=np.arange(len(view)))
    for seed, first, count in ((11, 0, 6000), (12, 6000, 6000), (13, 0, 2000)):
        rows = (
            frame[frame["model_version"] == f"m{seed}"]
            .sort_values("sample_id", key=lambda s: s.str[1:].astype(int))["row"]
            .to_numpy()
        )
        assert frame["sample_id"].to_numpy()[rows].tolist() == [f"s{i}" for i in range(first, first + count)]
        lm, conf = expected(seed, count)
        np.testing.assert_array_equal(view.landmarks[rows], lm)
        np.testing.assert_array_equal(view.landmark_confidence[rows], conf)
    assert Store.open(store.url).check() == []


def test_a_live_lock_holder_blocks_writers_until_it_dies(store: Store) -> None:
    holder = start(store.url, "hold", 0, 0, 0)
    wait_line(holder, "LOCKED")
    lock = writer_lock(store._fs)
    lock.timeout_s = 0.5
    extra = pd.DataFrame({"sample_id": ["x1"], "image_uri": ["x"], "width": 1, "height": 1,
                          "box": [[0.0, 0.0, 1.0, 1.0]], "split": "pool", "dataset": "r"})  # fmt: skip
    try:
        with pytest.raises(StoreLocked, match=f"pid {holder.pid}"):
            store.add_samples(extra)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert store.add_samples(extra) == 1  # the dead holder's lock is broken
    finally:
        lock.timeout_s = None
        holder.kill()


def test_truncated_and_foreign_parquet_files_are_reported_by_name(store: Store) -> None:
    run(store.url, "labels", 1, 0, 2000)
    folder = Path(store.url) / "labels" / "round=1" / "source=pseudo"
    good = next(folder.glob("part-*.parquet")).read_bytes()
    truncated = folder / "part-20990101T000000000000Z-deadbeef.parquet"
    truncated.write_bytes(good[: len(good) - 100])
    with pytest.raises(CorruptFile, match=truncated.name) as e:
        Store.open(store.url).labels()
    assert e.value.path == str(truncated)
    assert any(truncated.name in p and "truncated" in p for p in Store.open(store.url).check())
    truncated.unlink()

    foreign = folder / "part-20990101T000000000000Z-f0f0f0f0.parquet"
    pq.write_table(pa.table({"sample_id": ["s1"], "x": [1.0]}), foreign)  # valid Parquet, not ours
    with pytest.raises(CorruptFile, match=foreign.name):
        Store.open(store.url).current_labels()
    assert any(foreign.name in p and "not a pipstc" in p for p in Store.open(store.url).check())
    foreign.rename(folder / "export.parquet")  # under any other name: still reported, never read
    with pytest.raises(CorruptFile, match="export.parquet"):
        Store.open(store.url).pseudo_labels(1)
    (folder / "export.parquet").unlink()
    assert Store.open(store.url).check() == [] and len(Store.open(store.url).labels()) == 2000
