"""Label store benchmark: 1M pseudo-labels of 68 landmarks written and read the way the flows do.

Reports, measured side by side in one run (docs/speed.md section 1):

* write rate (labels/s) of ``Store.add_labels`` in batches (10 x 100k by default: a pool-labelling
  round writes shard by shard), everything included (validation, label ids, dedupe, lock, fsync);
* the rate of a retried batch (all duplicates: must be a cheap no-op);
* bytes per label on disk (zstd + byte-stream-split floats);
* read rate of ``Store.labels()`` into a LabelView (DataFrame + (R, 68, 2) numpy landmarks);
* the current-label view over all rows against a plain pyarrow read of the same files and columns
  (target: under 2x);
* memory: the resident memory (RSS) the current-label view holds and its peak while it is built, at
  three store sizes on the way to ``--rows`` (the growth per label; docs/scale.md), and the same for
  reading one round's partition with a filter instead of the whole view;
* the store's write rate against the model's label rate (target: at least 20x). The model rate is
  measured in the same run with the core benchmark's end-to-end pool labelling
  (``bench_core.pool_labeling``: JPEG -> crop -> ONNX Runtime -> decode -> confidence, on 64 faces),
  or given with ``--model-rate`` (faces/s); if neither works it is left out and said so.

Labels are random (the worst case for compression: real landmarks compress better). Timings are the
best of ``--repeats`` runs; the CPU share the process got is printed beside them (the machine is
shared; docs/speed.md section 5).

Usage: ``python bench/bench_store.py [--rows 1000000] [--batches 10] [--quick] [--dir PATH]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotations.store import Store  # noqa: E402
from annotations.store.views import SCALAR_COLUMNS  # noqa: E402
from pipnet_core.schemes import get_scheme  # noqa: E402

N = 68
# The core benchmark's end-to-end pool-labelling measurement (bench/bench_core.py): faces per second
# from JPEG to decoded landmarks with confidences, on this many faces.
_CORE_FACES = 64


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, CPU share of that run, last result)."""
    best, share, out = float("inf"), 0.0, None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
        if wall < best:
            best, share = wall, (time.process_time() - c0) / wall
    return best, share, out


_PROBE = """
import gc, json, os, sys, time
sys.path.insert(0, {root!r})
import pyarrow.dataset as ds
from annotations.store import Store

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

store = Store.open({url!r})
what = {what!r}
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
base, t0 = rss(), time.perf_counter()
if what == "current":
    out = store.current_labels(splits=("pool",), for_training=False)
elif what == "partition":
    out = store.labels(round=1, source="pseudo")
else:
    import glob
    paths = sorted(glob.glob(os.path.join({url!r}, "labels", "**", "part-*.parquet"), recursive=True))
    ids = [f"s{{i}}" for i in range(0, {rows}, max(1, {rows} // 10_000))]
    out = ds.dataset(paths).to_table(filter=ds.field("sample_id").isin(ids))
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "rows": len(out), "held": rss() - base, "peak": peak() - base}}))
"""


def _memory(url: Path, what: str, rows: int) -> tuple[float, int, int, int]:
    """(seconds, rows, bytes the result holds, peak bytes above the start) of one read, in a fresh process.

    A fresh interpreter per measurement: Arrow's and the C allocator's pools keep freed memory
    resident, so deltas measured one after another in one process under-count.
    """
    code = _PROBE.format(root=str(Path(__file__).resolve().parents[1]), url=str(url), what=what, rows=rows)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    return m["seconds"], m["rows"], m["held"], m["peak"]


def _memory_lines(points: list[tuple[str, int, tuple[float, int, int, int]]]) -> list[str]:
    lines = [f"{'memory (RSS)':44s} {'labels':>10s} {'rows':>10s} {'s':>6s} {'held MB':>8s} {'peak MB':>8s} "
             f"{'held B/row':>10s} {'peak B/row':>10s}"]  # fmt: skip
    for name, labels, (sec, rows, held, peak) in points:
        lines.append(f"{name:44s} {labels:10,d} {rows:10,d} {sec:6.2f} {held / 2**20:8.0f} {peak / 2**20:8.0f} "
                     f"{held / max(rows, 1):10,.0f} {peak / max(rows, 1):10,.0f}")  # fmt: skip
    return lines


def _samples(rows: int) -> pd.DataFrame:
    ids = np.char.add("s", np.arange(rows).astype(str)).astype(object)
    return pd.DataFrame(
        {
            "sample_id": ids,
            "image_uri": np.char.add("pool/", ids.astype(str)).astype(object),
            "width": np.full(rows, 640, np.int32),
            "height": np.full(rows, 480, np.int32),
            "box": list(np.tile(np.float32([100, 80, 300, 320]), (rows, 1))),
            "split": "pool",
            "dataset": "bench",
        }
    )


def _batch(ids: np.ndarray, rng: np.random.Generator, round_: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    r = len(ids)
    rows = pd.DataFrame(
        {
            "sample_id": ids,
            "source": "pseudo",
            "round": round_,
            "model_version": f"round{round_}",
            "level": rng.choice(["std", "cls2", "cls3", "review"], size=r, p=[0.6, 0.2, 0.15, 0.05]),
            "face_confidence": rng.random(r, dtype=np.float32),
            "predicted_nme": rng.random(r, dtype=np.float32) * 0.1,
        }
    )
    landmarks = (rng.random((r, N, 2), dtype=np.float32) * 400).astype(np.float32)
    confidence = rng.random((r, N), dtype=np.float32)
    return rows, landmarks, confidence


def _core_rate(quick: bool) -> tuple[float | None, str]:
    """The model's label rate (faces/s) from bench_core.pool_labeling, run here; or None and why not."""
    if not Path(__file__).with_name("bench_core.py").exists():
        return None, "bench/bench_core.py does not exist"
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        core = importlib.import_module("bench_core")
        import torch

        from pipnet_core.model import create_model

        torch.manual_seed(0)
        model = create_model(N, input_size=core.SIZE).eval()
        min_time, rounds = (0.3, 1) if quick else (2.0, 1)
        rate, _bare, share = core.pool_labeling(model, _CORE_FACES, torch.get_num_threads(), min_time, rounds)
    except Exception as e:  # a broken or changed core benchmark must not hide the store numbers
        return None, f"bench_core.pool_labeling failed ({type(e).__name__}: {e})"
    return float(rate), f"bench_core.pool_labeling, cpu share {share:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="pseudo-labels to write (default 1,000,000)")
    ap.add_argument("--batches", type=int, default=10, help="write batches (default 10: shards of rows/10)")
    ap.add_argument("--quick", action="store_true", help="100k rows, one repeat (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3, help="read timings: best of this many")
    ap.add_argument("--dir", default=None, help="store folder (default: a temporary folder, removed after)")
    ap.add_argument("--model-rate", type=float, default=None, help="model label rate (faces/s) to compare with")
    ap.add_argument("--no-model", action="store_true", help="skip measuring the model's label rate")
    args = ap.parse_args(argv)
    rows = 100_000 if args.quick else args.rows
    repeats = 1 if args.quick else args.repeats
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pipstc-bench-store-"))
    url = root / "store"
    rng = np.random.default_rng(0)
    print(f"pipstc store benchmark: {rows:,} pseudo-labels x {N} landmarks (+ confidences), {args.batches} batches")
    print(f"store: {url}  cpus: {os.cpu_count()}  (cpu share = process CPU time / wall time)")
    try:
        store = Store.create(url, get_scheme("300w"))
        t, share, _ = _timed(lambda: store.add_samples(_samples(rows)), 1)
        print(f"setup: {rows:,} pool samples added in {t:.1f} s")

        ids = np.char.add("s", np.arange(rows).astype(str)).astype(object)
        bounds = np.linspace(0, rows, args.batches + 1).astype(int)
        batches = [_batch(ids[a:b], rng, 1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        write_s = write_cpu = 0.0
        growth = []
        checkpoints = {max(1, args.batches // 5), max(1, args.batches // 2)}
        for i, (frame, lm, conf) in enumerate(batches, 1):
            c0, t0 = time.process_time(), time.perf_counter()
            store.add_labels(frame, lm, landmark_confidence=conf)
            write_s += time.perf_counter() - t0
            write_cpu += time.process_time() - c0
            if i in checkpoints and i < len(batches):  # the view's memory on the way (untimed for the write)
                growth.append(("current_labels() view", int(bounds[i]), _memory(url, "current", rows)))
        write_share = write_cpu / write_s
        write_rate = rows / write_s
        frame, lm, conf = batches[-1]
        retry_s, _, _ = _timed(lambda: store.add_labels(frame, lm, landmark_confidence=conf), 1)
        files = sorted((url / "labels").rglob("part-*.parquet"))
        size = sum(f.stat().st_size for f in files)
        assert len(store.labels(round=1, source="pseudo")) == rows, "the retried batch must not duplicate"

        samples_s, samples_share, _ = _timed(lambda: store.samples(), 1)
        read_s, read_share, view = _timed(lambda: store.labels(), repeats)
        assert len(view) == rows and view.landmarks.shape == (rows, N, 2)
        del view
        columns = [*SCALAR_COLUMNS, "landmarks", "landmark_confidence", "moved"]
        paths = [str(f) for f in files]
        plain, current = [], []
        for _ in range(repeats):  # interleaved, so both see the same machine load
            plain.append(_timed(lambda: ds.dataset(paths).to_table(columns=columns), 1)[:2])
            current.append(_timed(lambda: store.current_labels(splits=("pool",), for_training=False), 1)[:2])
        (plain_s, plain_share), (cur_s, cur_share) = min(plain), min(current)
        view = store.current_labels(splits=("pool",), for_training=False)
        assert len(view) == rows
        del view
        growth.append(("current_labels() view", rows, _memory(url, "current", rows)))
        growth.append(("labels(round=1) partition", rows, _memory(url, "partition", rows)))
        # one shard's worth of samples spread over all files, read with a filter instead of a whole view
        growth.append(("filtered read: 10k sample ids", rows, _memory(url, "filtered", rows)))
        print()
        print(f"{'measure':44s} {'value':>16s}  {'cpu share':>9s}")
        print(f"{'write add_labels (labels/s)':44s} {write_rate:16,.0f}  {write_share:9.2f}")
        print(f"{'  retried batch, all duplicates (labels/s)':44s} {len(frame) / retry_s:16,.0f}")
        print(f"{'bytes per label on disk':44s} {size / rows:16,.0f}")
        print(f"{'read labels() -> LabelView (labels/s)':44s} {rows / read_s:16,.0f}  {read_share:9.2f}")
        print(f"{'read samples() -> DataFrame (samples/s)':44s} {rows / samples_s:16,.0f}  {samples_share:9.2f}")
        print(f"{'plain pyarrow read, same columns (s)':44s} {plain_s:16.2f}  {plain_share:9.2f}")
        print(f"{'current_labels() view (s)':44s} {cur_s:16.2f}  {cur_share:9.2f}")
        ratio = cur_s / plain_s
        print(f"{'current view / plain read (target < 2x)':44s} {ratio:15.2f}x  {'PASS' if ratio < 2 else 'FAIL'}")
        if args.model_rate:
            model_rate, origin = args.model_rate, "--model-rate"
        elif args.no_model:
            model_rate, origin = None, "--no-model"
        else:
            model_rate, origin = _core_rate(args.quick)
        print()
        print("\n".join(_memory_lines(growth)))
        print()
        if model_rate:
            r = write_rate / model_rate
            print(f"{'model label rate (faces/s)':44s} {model_rate:16,.1f}  ({origin})")
            print(f"{'store write / model rate (target >= 20x)':44s} {r:15,.0f}x  {'PASS' if r >= 20 else 'FAIL'}")
        else:
            print(f"model label rate: not measured here ({origin}); the store writes {write_rate:,.0f} labels/s,")
            print("  compare with the core benchmark's faces/s (target: store >= 20x), or pass --model-rate")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
