"""Measurements of the self-training benchmark (bench/bench_stc.py): target holdouts, confidence, pseudo-labels.

Everything here reads a store a benchmark round wrote plus the generator's truth; nothing is trained.
The target holdouts (occlusion, pose) and the source holdout are predicted with the round's model
and its calibrated confidence model (confidence.json), on the crop a human-labeled holdout gets
(the landmark box x crop_scale, as ``flows.evaluation`` does for the store's own holdout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotations.store import Store
from flows.checkpoints import checkpoint_path
from flows.config import STCConfig
from pipnet_core.confidence import ConfidenceModel, spearman
from pipnet_core.crop import enlarge_box, landmark_box
from pipnet_core.metrics import ause, failure_auroc, fr_auc, nme, reliability

__all__ = [
    "FAIL_NME",
    "HOLDOUTS",
    "evaluate_holdouts",
    "pool_truth",
    "pseudo_label_quality",
    "simulated_detector_boxes",
    "training_images",
]

FAIL_NME = 0.08  # a face the confidence should flag: its real NME is over 0.08 (issue 13's failure detection)
HOLDOUTS = ("source", "occlusion", "pose")
LEVEL_ORDER = ("std", "cls2", "cls3", "review")


def simulated_detector_boxes(landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A face detector stand-in for the pool: the landmark box with a 5 % jitter of each edge (M, 4)."""
    lo, hi = np.nanmin(landmarks, axis=1), np.nanmax(landmarks, axis=1)
    size = (hi - lo).max(axis=1, keepdims=True)
    return np.concatenate([lo, hi], axis=1) + rng.normal(0.0, 0.05, size=(len(landmarks), 4)) * size


def pool_truth(store: Store, pool_paths: list[str], pool_landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """sample id -> (N, 2) true landmarks of every pool face (matched by image file)."""
    by_file = {str(Path(p).resolve()): lm for p, lm in zip(pool_paths, pool_landmarks, strict=True)}
    pool = store.samples(split="pool")
    return {str(s): np.asarray(by_file[str(Path(str(u).removeprefix("file://")).resolve())], dtype=np.float64)
            for s, u in zip(pool["sample_id"], pool["image_uri"], strict=True)}  # fmt: skip


def _confidence_quality(predicted: np.ndarray, per_face: np.ndarray) -> dict[str, Any]:
    return {
        "spearman": spearman(predicted, per_face),
        "auroc": failure_auroc(predicted, per_face, FAIL_NME),
        "ause": ause(predicted, per_face),
        "mean_predicted": float(np.nanmean(predicted)),
        "reliability": reliability(predicted, per_face, bins=8),
    }


def evaluate_holdouts(store: Store, k: int, cfg: STCConfig, holdouts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Round k's model on each holdout: NME / FR / AUC and its confidence's quality (Spearman, AUROC, AUSE).

    Args:
        holdouts: name -> {"paths": [...], "landmarks": (M, N, 2)} (human-labeled faces of that domain).
    """
    from pipnet_core.predict import Predictor

    conf = store.read_round_json(k, "confidence.json", default=None)
    predictor = Predictor.from_checkpoint(checkpoint_path(store, k), backend=cfg.backend,
                                          confidence=ConfidenceModel.from_dict(conf) if conf else None)  # fmt: skip
    out = {}
    for name, d in holdouts.items():
        gt = np.asarray(d["landmarks"], dtype=np.float64)
        boxes = enlarge_box(landmark_box(gt), scale=cfg.crop_scale)
        pred = predictor.predict(d["paths"], boxes, batch_size=64, flip_tta=cfg.flip_tta)
        per_face = nme(pred.landmarks.astype(np.float64), gt, store.scheme)
        fr, auc = fr_auc(per_face)
        quality = _confidence_quality(np.asarray(pred.predicted_nme, np.float64), per_face)
        out[name] = {"nme": float(np.mean(per_face)), "fr": fr, "auc": auc, "per_face": per_face.tolist(),
                     "confidence": quality}  # fmt: skip
    return out


def pseudo_label_quality(store: Store, k: int, truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """Real NME of round k's pseudo-labels against the pool truth, overall and per curriculum level."""
    view = store.pseudo_labels(k)
    frame = view.frame.reset_index(drop=True)
    if len(frame) == 0:
        return {"nme": float("nan"), "gross": float("nan"), "good": float("nan"), "levels": []}
    gt = np.stack([truth[str(s)] for s in frame["sample_id"]])
    real = nme(view.landmarks.astype(np.float64), gt, store.scheme)
    levels = frame["level"].fillna("std").astype(str).to_numpy()
    rows = []
    for level in [lv for lv in LEVEL_ORDER if lv in set(levels)] + sorted(set(levels) - set(LEVEL_ORDER)):
        m = levels == level
        rows.append({"level": level, "labels": int(m.sum()), "nme_mean": float(real[m].mean()),
                     "nme_median": float(np.median(real[m])), "gross_share": float((real[m] > 0.1).mean()),
                     "predicted_nme_mean": float(frame["predicted_nme"].to_numpy(np.float64)[m].mean())})  # fmt: skip
    return {"nme": float(real.mean()), "gross": float((real > 0.1).mean()), "good": float((real <= FAIL_NME).mean()),
            "levels": rows}  # fmt: skip


def training_images(store: Store, k: int, cfg: STCConfig) -> int:
    """Images round k's training stepped over: samples per epoch (drop_last batches) x epochs, every stage counted.

    ``training_set.json`` lists the round's stages (STLD: pretraining, then fine-tuning) with their
    epochs and groups (each with its ``samples``, oversampled repeats included); a round written
    before stages existed trained once on ``faces`` for the config's epochs.
    """
    info = store.read_round_json(k, "training_set.json", default=None) or {}
    b = cfg.train.batch_size
    stages = info.get("stages") or [{"epochs": cfg.train.epochs, "groups": [{"samples": info.get("faces", 0)}]}]
    total = 0
    for stage in stages:
        samples = sum(int(g.get("samples", g.get("faces", 0))) for g in stage.get("groups", []))
        total += (samples // b) * b * int(stage.get("epochs", 0))
    return int(total)


def holdout_frame(results: dict[str, Any]) -> pd.DataFrame:
    """Flat rows (method, seed, round, holdout, nme, fr, auc, confidence metrics) of a results dict."""
    rows = []
    for key, runs in results["runs"].items():
        for seed, run in runs.items():
            for r in run["rounds"]:
                for name, h in r["holdouts"].items():
                    c = h["confidence"]
                    rows.append({"method": key, "seed": int(seed), "round": r["round"], "holdout": name,
                                 "nme": h["nme"], "fr": h["fr"], "auc": h["auc"], "spearman": c["spearman"],
                                 "auroc": c["auroc"], "ause": c["ause"]})  # fmt: skip
    return pd.DataFrame(rows)
