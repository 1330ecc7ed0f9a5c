"""``pipstc demo``: the whole loop on synthetic faces, in minutes, on embedded defaults.

The benchmark's cross-domain regime (synthetic_faces.regimes, ``medium``): a small labeled set in the
source domain, a holdout from the two target domains (occlusion, pose) and a broad pool found by the
embedded detector (the paper's cross-domain setting, docs/architecture.md section 6); round 0 and STC
rounds on Prefect's temporary local server (or PREFECT_API_URL when set); the least confident faces pushed to Label
Studio when PIPSTC_LABEL_STUDIO_URL/TOKEN are set, otherwise written as a Label Studio import file;
a report at the end. Rerunning resumes where it stopped; ``--fresh`` starts over.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import numpy as np

__all__ = ["make_demo_data", "run_demo"]


def _simulated_detector_boxes(landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A detector stand-in for tests (no detector run): the landmark box with a 5% jitter of each edge."""
    lo, hi = np.nanmin(landmarks, axis=1), np.nanmax(landmarks, axis=1)
    size = (hi - lo).max(axis=1, keepdims=True)
    jitter = rng.normal(0.0, 0.05, size=(len(landmarks), 4)) * size
    return np.concatenate([lo, hi], axis=1) + jitter


def make_demo_data(images: Path, sizes: tuple[int, int, int], seed: int = 0) -> dict[str, Path]:
    """Write the regime's faces: labeled (source), holdout (half occlusion, half pose target), pool (broad).

    The regime is synthetic_faces.regimes' ``medium`` one, the benchmark's (bench/RESULTS.md). The pool's
    truth is kept aside in ``pool_truth/`` for benchmarks and tests; ``pool_boxes.csv`` holds
    detector-like boxes for runs that skip the detector.
    """
    from annotations.formats.pts import read_pts
    from synthetic_faces import write_dataset
    from synthetic_faces.regimes import regime_domains

    n_labeled, n_holdout, n_pool = sizes
    paths = {name: images / name for name in ("labeled", "holdout", "pool", "pool_truth")}
    marker = images / ".complete"
    if marker.exists():
        return paths
    shutil.rmtree(images, ignore_errors=True)
    domains = regime_domains("medium")
    write_dataset(paths["labeled"], n_labeled, domains["source"], seed=seed + 1)
    write_dataset(paths["holdout"], n_holdout // 2, domains["occlusion"], seed=seed + 2)
    write_dataset(paths["holdout"], n_holdout - n_holdout // 2, domains["pose"], seed=seed + 3)
    written = write_dataset(paths["pool"], n_pool, domains["pool"], seed=seed + 4)
    paths["pool_truth"].mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for image in sorted(written):
        pts = image.with_suffix(".pts")
        landmarks = read_pts(pts)
        shutil.move(str(pts), paths["pool_truth"] / pts.name)  # people have not labeled the pool
        box = _simulated_detector_boxes(landmarks[None], rng)[0]
        rows.append([image.name, *[f"{v:.2f}" for v in box], "0.99"])
    with open(images / "pool_boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "x0", "y0", "x1", "y1", "score"])
        w.writerows(rows)
    marker.write_text("ok")
    return paths


def run_demo(store: str = "demo-store", rounds: int = 2, schedule: str = "confidence", fresh: bool = False,
             quick: bool = False) -> int:  # fmt: skip
    from annotations.store import Store
    from flows.config import STCConfig
    from flows.ingest_steps import ingest_source
    from flows.stc import stc
    from pipnet_core.schemes import get_scheme

    t0 = time.perf_counter()
    root = Path(store).resolve()
    images = root.parent / f"{root.name}-images"
    if fresh:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(images, ignore_errors=True)
    sizes = (40, 20, 40) if quick else (300, 150, 600)
    print(f"[demo] synthesising faces into {images} (labeled source {sizes[0]}, holdout from the occlusion and "
          f"pose targets {sizes[1]}, pool {sizes[2]})")  # fmt: skip
    paths = make_demo_data(images, sizes)
    if not (root / "store.json").exists():
        Store.create(str(root), get_scheme("300w"))
    for name, fmt, split, extra in (
        ("labeled", "pts", "train", {}),
        ("holdout", "pts", "holdout", {}),
        ("pool", "pool", None, {"detector": "yuface"}),  # the embedded detector, as for real photos
    ):
        report = ingest_source(str(root), str(paths[name]), fmt, split=split, dataset=f"demo-{name}", **extra)
        print(f"[demo] {name}: {report['faces']} faces, {report['new_samples']} new, {report['rejects']} rejected")
    cfg = (STCConfig.tiny(epochs=3) if quick else STCConfig.demo()).replace(schedule=schedule)
    print(f"[demo] round 0 + {rounds} STC rounds ({schedule} schedule) on {root}")
    stc(str(root), rounds=rounds, schedule=schedule, config=cfg.to_dict())
    s = Store.open(str(root))
    last = max(k for k in s.rounds() if s.read_round_json(k, "metrics.json", default=None) is not None)
    print(s.read_round_file(last, "report.md").decode())
    review = s.completed_steps(last).get("review", {})
    if review.get("import_file"):
        print(f"[demo] review: {review.get('written', 0)} least confident faces written to {review['import_file']}")
        print("       Label Studio is not configured (PIPSTC_LABEL_STUDIO_URL / PIPSTC_LABEL_STUDIO_TOKEN).")
        print("       Import that file into a project made with `pipstc labelstudio config`, or set both")
        print("       variables and run `pipstc review push demo-store` to send the faces directly.")
    else:
        print(f"[demo] review: {review.get('pushed', 0)} faces pushed to Label Studio")
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s; report files in {s.round_path(last)}")
    return 0
