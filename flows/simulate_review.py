"""The pieces of a simulation that touch the store: hide labels, a simulated reviewer, pool-label quality.

Used by ``pipstc simulate`` (:mod:`flows.simulate`) and by the self-training benchmark
(bench/bench_stc.py), so both measure the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotations.review.value import corrections_curve, corrections_to_reach, review_orders
from annotations.store import Store
from pipnet_core.metrics import nme, norm_distance

__all__ = [
    "TRUTH_FILE",
    "correction_curves",
    "hide_labels",
    "load_truth",
    "pool_errors",
    "pool_quality",
    "save_truth",
    "simulated_review",
]

TRUTH_FILE = "truth.npz"
GOOD_NME = 0.08  # a pool label this close to the truth is good enough (under FR@0.1's failure line)


def save_truth(path: Path, sample_ids: list[str], landmarks: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, sample_ids=np.asarray(sample_ids, dtype=str), landmarks=np.asarray(landmarks, np.float32))
    tmp.replace(path)


def load_truth(path: Path) -> dict[str, np.ndarray]:
    """sample id -> (N, 2) true landmarks (pixels) of the simulated pool."""
    with np.load(path) as z:
        return {str(s): lm for s, lm in zip(z["sample_ids"], z["landmarks"], strict=True)}


def hide_labels(source_url: str, out_url: str, truth_path: Path, share: float, seed: int) -> dict[str, int]:
    """A copy of the store whose human-labeled train faces lose ``share`` of their labels to a simulated pool.

    The holdout is kept with its labels; the store's own unlabeled pool is left out (its truth is
    unknown, so it could not be measured). Done once: a second call returns the counts of the first.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"the hidden share must be in (0, 1), got {share}")
    if Path(out_url, "store.json").exists() and truth_path.exists():
        return json.loads(Path(out_url, "hidden.json").read_text())
    src = Store.open(source_url)
    train = src.current_labels(splits=("train",), for_training=False)
    human = train.frame["source"].isin(["human", "corrected"]).to_numpy()
    train = train.take(np.flatnonzero(human))
    ids = [str(s) for s in train.frame["sample_id"]]
    if len(ids) < 10:
        raise ValueError(f"{source_url}: {len(ids)} human-labeled train faces; a simulation needs at least 10")
    rng = np.random.default_rng(seed)
    hidden = np.zeros(len(ids), dtype=bool)
    hidden[rng.permutation(len(ids))[: int(round(share * len(ids)))]] = True
    hold = src.holdout()
    samples = src.samples().set_index("sample_id")
    keep_ids = ids + [str(s) for s in hold.frame["sample_id"]]
    rows = samples.loc[keep_ids].reset_index()
    rows.loc[: len(ids) - 1, "split"] = np.where(hidden, "pool", "train")
    shutil_rmtree(out_url)
    out = Store.create(out_url, src.scheme, holdout_fraction=src.holdout_fraction)
    out.add_samples(rows)
    kept = np.flatnonzero(~hidden)
    labels = pd.DataFrame({"sample_id": [ids[i] for i in kept] + [str(s) for s in hold.frame["sample_id"]],
                           "source": "human", "round": 0, "annotator": "simulation"})  # fmt: skip
    out.add_labels(labels, np.concatenate([train.landmarks[kept], hold.landmarks]).astype(np.float32))
    save_truth(truth_path, [ids[i] for i in np.flatnonzero(hidden)], train.landmarks[hidden])
    counts = {"train_faces": len(ids), "hidden": int(hidden.sum()), "kept": int((~hidden).sum()),
              "holdout": len(hold)}  # fmt: skip
    Path(out_url, "hidden.json").write_text(json.dumps(counts))
    return counts


def shutil_rmtree(url: str) -> None:
    import shutil

    shutil.rmtree(url, ignore_errors=True)


def _reviewed_ids(store: Store, k: int) -> list[str]:
    """The faces round k's review step sent to people (its Label Studio import file)."""
    step = store.completed_steps(k).get("review") or {}
    path = step.get("import_file")
    if not path or not Path(path).exists():
        return []
    return [str(t["data"]["sample_id"]) for t in json.loads(Path(path).read_text())]


def simulated_review(store_url: str, k: int, truth: dict[str, np.ndarray], noise: float = 0.01,
                     seed: int = 0) -> int:  # fmt: skip
    """People answer round k's review: the truth plus Gaussian noise of ``noise`` x the inter-ocular distance.

    Stored as a real pull stores corrections: a ``corrected`` label with the pseudo-label as parent,
    and ``pushed`` / ``completed`` review events. Faces without known truth are left alone.
    """
    store = Store.open(store_url)
    ids = [s for s in _reviewed_ids(store, k) if s in truth]
    if not ids:
        return 0
    pseudo = store.pseudo_labels(k).frame.drop_duplicates("sample_id", keep="last").set_index("sample_id")
    ids = [s for s in ids if s in pseudo.index]
    gt = np.stack([truth[s] for s in ids]).astype(np.float64)
    d = norm_distance(gt, store.scheme)[:, None, None]
    rng = np.random.default_rng([seed, k])
    landmarks = gt + rng.normal(0.0, 1.0, gt.shape) * d * (noise / np.sqrt(2.0))  # RMS displacement = noise * d
    parent = pseudo.loc[ids]
    rows = pd.DataFrame({
        "sample_id": ids,
        "source": "corrected",
        "round": k,
        "model_version": parent["model_version"].astype(str).to_numpy(),
        "annotator": "simulated-reviewer",
        "parent_label_id": parent["label_id"].astype(str).to_numpy(),
    })  # fmt: skip
    store.add_labels(rows, landmarks.astype(np.float32))
    now = pd.Timestamp.now(tz="UTC")
    events = pd.DataFrame({"sample_id": ids * 2, "round": k, "status": ["pushed"] * len(ids) + ["completed"] * len(ids),
                           "label_id": list(parent["label_id"].astype(str)) * 2, "note": "simulated reviewer",
                           "updated_at": [now] * len(ids) + [now + pd.Timedelta(seconds=1)] * len(ids)})  # fmt: skip
    store.add_reviews(events)
    return len(ids)


def pool_errors(store: Store, truth: dict[str, np.ndarray]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The simulated pool's current labels: frame, landmarks (M, N, 2) and real per-face NME (M,)."""
    view = store.current_labels(splits=("pool",), for_training=False)
    keep = np.flatnonzero(view.frame["sample_id"].isin(list(truth)).to_numpy())
    view = view.take(keep)
    gt = np.stack([truth[str(s)] for s in view.frame["sample_id"]]).astype(np.float64)
    return view.frame.reset_index(drop=True), view.landmarks, nme(view.landmarks.astype(np.float64), gt, store.scheme)


def pool_quality(store: Store, k: int, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of the simulated pool whose current label is within NME 0.08, and the pseudo-labels' mean NME."""
    frame, _, errors = pool_errors(store, truth)
    pseudo = (frame["source"] == "pseudo").to_numpy()
    good = np.where(pseudo, errors <= GOOD_NME, True)  # a person's label is the reference
    return {
        "pool_good": float(good.mean()) if len(good) else float("nan"),
        "pseudo_nme": float(np.nanmean(errors[pseudo])) if pseudo.any() else float("nan"),
        "pool_faces": int(len(truth)),
    }


def correction_curves(store_url: str, k: int, truth: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Pool quality against corrections at round k's model, per review order, and corrections to reach 95 %."""
    store = Store.open(store_url)
    frame, landmarks, errors = pool_errors(store, truth)
    errors = np.where((frame["source"] == "pseudo").to_numpy(), errors, 0.0)  # corrected faces are good already
    orders = review_orders(frame, landmarks, errors, store.scheme, seed=seed)
    curves = {name: corrections_curve(errors, order, GOOD_NME) for name, order in orders.items()}
    return {
        "round": k,
        "faces": len(frame),
        "good_before": float(curves["random"][0]),
        "curves": {name: [float(v) for v in c] for name, c in curves.items()},
        "to_95": {name: corrections_to_reach(c, 0.95) for name, c in curves.items()},
    }
