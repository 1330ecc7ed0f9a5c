"""Measurements of the STC benchmark (bench/bench_stc.py): confidence quality, review value, pseudo-label quality.

Everything here reads a store a benchmark round wrote and the generator's truth; nothing is trained.
The confidence signals come from :class:`pipnet_core.predict.Predictor` (score peak, neighbour-vote
spread, coarse/fine agreement, flip disagreement; docs/algorithm.md section 5.1); the combined confidence is
:class:`pipnet_core.confidence.ConfidenceModel`, fitted on the calibration half of the holdout that
``flows.evaluation.evaluate_round`` uses and measured on the other half.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotations.formats.pts import read_pts
from annotations.ingest.boxmap import BoxMapping
from annotations.ingest.crops import inference_crop_boxes
from annotations.review.selection import pose_descriptor, select_for_review
from annotations.store import Store
from flows.checkpoints import checkpoint_path
from flows.config import STCConfig
from flows.evaluation import calibration_half
from pipnet_core.confidence import ConfidenceModel, spearman
from pipnet_core.metrics import landmark_errors, nme
from pipnet_core.predict import Prediction, Predictor

__all__ = [
    "GROSS_NME",
    "SIGNALS",
    "analyse_confidence",
    "analyse_review_value",
    "pool_truth",
    "pseudo_label_quality",
]

GROSS_NME = 0.1  # a gross error (a failure): the FR@0.1 threshold of docs/algorithm.md section 2.12
# Signal -> (title, sign that makes "higher = worse"): a high score peak and a high coarse/fine agreement
# mean a surer landmark, so they are negated; vote spread and flip disagreement grow with the error.
SIGNALS: dict[str, tuple[str, float]] = {
    "score_peak": ("score peak (negated)", -1.0),
    "vote_spread": ("neighbour-vote spread", 1.0),
    "coarse_agreement": ("coarse/fine agreement (negated)", -1.0),
    "flip_disagreement": ("flip disagreement", 1.0),
}
LEVEL_ORDER = ("std", "cls2", "cls3", "review")


def pool_truth(store: Store, truth_dir: Path) -> dict[str, np.ndarray]:
    """sample_id -> (68, 2) true landmarks (px) of every pool face, from make_demo_data's pool_truth/*.pts."""
    pool = store.samples(split="pool")
    out = {}
    for sid, uri in zip(pool["sample_id"], pool["image_uri"], strict=True):
        out[str(sid)] = read_pts(Path(truth_dir) / (Path(str(uri).removeprefix("file://")).stem + ".pts"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _predict(
    store: Store, k: int, cfg: STCConfig, samples: pd.DataFrame, confidence: ConfidenceModel | None
) -> Prediction:
    """Round k's model on ``samples`` with the crops evaluate_round / label_shard would use."""
    d = store.read_round_json(k, "boxmap.json", default=None)
    boxes = inference_crop_boxes(samples, BoxMapping.from_dict(d) if d else BoxMapping.identity(), cfg.crop_scale)
    predictor = Predictor.from_checkpoint(checkpoint_path(store, k), backend=cfg.backend, confidence=confidence)
    return predictor.predict(samples["image_uri"].tolist(), boxes, batch_size=32, flip_tta=cfg.flip_tta)


def _ok(pred: Prediction) -> np.ndarray:
    ok = np.ones(len(pred.landmarks), dtype=bool)
    for idx, _reason in pred.failed:
        ok[idx] = False
    return ok


def face_signal(sig: dict[str, np.ndarray], name: str) -> np.ndarray:
    """(B,) face-level aggregate of one signal, oriented so that higher means a worse face."""
    return SIGNALS[name][1] * np.nanmean(np.asarray(sig[name], dtype=np.float64), axis=1)


def _reliability(predicted: np.ndarray, real: np.ndarray, bins: int) -> list[dict[str, float]]:
    """Faces binned by predicted NME (equal-count bins): mean predicted vs mean and median real NME."""
    order = np.argsort(predicted, kind="stable")
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append({"predicted": float(predicted[chunk].mean()), "real": float(real[chunk].mean()),
                        "real_median": float(np.median(real[chunk])), "faces": int(len(chunk))})  # fmt: skip
    return out


def _fit_or_none(sig: dict[str, np.ndarray], errors: np.ndarray, features: list[str]) -> ConfidenceModel | None:
    try:
        return ConfidenceModel.fit(sig, errors, features=features)
    except ValueError:
        return None


def analyse_confidence(store: Store, k: int, cfg: STCConfig) -> dict[str, Any]:
    """How well confidence ranks real errors on the holdout, for round k's model.

    Mirrors evaluate_round: the combined ConfidenceModel (and each signal's own one-feature model) is
    fitted on the calibration half of the holdout (``flows.evaluation.calibration_half``) and every number
    is measured on the other half. "raw" columns rank by the signal itself (face: mean over landmarks),
    no fitting at all.
    """
    hold = store.holdout()
    samples = store.samples().set_index("sample_id").loc[hold.frame["sample_id"]].reset_index()
    pred = _predict(store, k, cfg, samples, None)
    ok = _ok(pred)
    gt, pr = hold.landmarks[ok].astype(np.float64), pred.landmarks[ok].astype(np.float64)
    errors = landmark_errors(pr, gt, store.scheme)  # (B, N) NME units
    per_face = nme(pr, gt, store.scheme)  # (B,)
    sig = {n: np.asarray(v)[ok] for n, v in pred.signals.items()}
    calib = calibration_half(samples["sample_id"][ok])
    test = ~calib

    def on(mask: np.ndarray) -> dict[str, np.ndarray]:
        return {n: v[mask] for n, v in sig.items()}

    rows = []
    for name in (n for n in SIGNALS if n in sig):
        single = _fit_or_none(on(calib), errors[calib], [name])
        fitted_face = fitted_lm = float("nan")
        if single is not None and any(w != 0 for w in single.weights):  # a wrong-sign weight is dropped to 0
            fitted_face = spearman(single.predict_face_nme(on(test)), per_face[test])
            fitted_lm = spearman(single.predict_landmark_errors(on(test)), errors[test])
        rows.append({
            "signal": name,
            "title": SIGNALS[name][0],
            "face_raw": spearman(face_signal(on(test), name), per_face[test]),
            "landmark_raw": spearman(SIGNALS[name][1] * sig[name][test], errors[test]),
            "face_fitted": fitted_face,
            "landmark_fitted": fitted_lm,
        })  # fmt: skip
    combined = ConfidenceModel.fit(on(calib), errors[calib])
    predicted = combined.predict_face_nme(on(test))
    rows.append({
        "signal": "combined",
        "title": "combined (ConfidenceModel: " + ", ".join(combined.features) + ")",
        "face_raw": float("nan"),
        "landmark_raw": float("nan"),
        "face_fitted": spearman(predicted, per_face[test]),
        "landmark_fitted": spearman(combined.predict_landmark_errors(on(test)), errors[test]),
    })  # fmt: skip
    by = {r["signal"]: r for r in rows}
    peak = by.get("score_peak", {})
    return {
        "faces_calibration": int(calib.sum()),
        "faces_test": int(test.sum()),
        "holdout_nme": float(per_face.mean()),
        "rows": rows,
        "combined_face": by["combined"]["face_fitted"],
        "combined_landmark": by["combined"]["landmark_fitted"],
        "score_peak_face": float(np.nanmax([peak.get("face_raw", np.nan), peak.get("face_fitted", np.nan)])),
        "weights": dict(zip(combined.features, combined.weights, strict=True)),
        "mean_predicted": float(predicted.mean()),
        "mean_real": float(per_face[test].mean()),
        "reliability": _reliability(predicted, per_face[test], bins=int(np.clip(test.sum() // 15, 2, 8))),
    }


def analyse_review_value(store: Store, k: int, cfg: STCConfig, truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """Of the pool faces round k's model gets grossly wrong (real NME > 0.1), the share each ordering's
    worst 5% finds; against a random 5% (expected value) and a perfect ranking (the ceiling).

    The pool is what round k labels (pool faces without a human or corrected label); predicted NME comes
    from the round's calibrated confidence model, exactly as label_shard computes it.
    """
    samples = store.pool_unlabeled().reset_index(drop=True)
    conf = store.read_round_json(k, "confidence.json", default=None)
    pred = _predict(store, k, cfg, samples, ConfidenceModel.from_dict(conf) if conf else None)
    ok = _ok(pred)
    ids = samples["sample_id"].astype(str).to_numpy()[ok]
    real = nme(pred.landmarks[ok].astype(np.float64), np.stack([truth[s] for s in ids]), store.scheme)
    gross = real > GROSS_NME
    n, g = len(real), int(gross.sum())
    budget = max(1, int(round(cfg.review_budget * n)))
    sig = {name: np.asarray(v)[ok] for name, v in pred.signals.items()}
    predicted = np.asarray(pred.predicted_nme)[ok]

    def worst(badness: np.ndarray) -> np.ndarray:
        return np.argsort(-badness, kind="stable")[:budget]

    picks: dict[str, np.ndarray] = {"least confident (combined predicted NME)": worst(predicted)}
    frame = pd.DataFrame({"sample_id": ids, "split": "pool", "predicted_nme": predicted})
    pose = pose_descriptor(pred.landmarks[ok], store.scheme)
    frame["yaw"], frame["pitch"] = pose[:, 0], pose[:, 1]
    chosen = select_for_review(frame, budget=budget)
    picks["review selection (least confident, pose-spread)"] = np.flatnonzero(np.isin(ids, chosen))
    for name in (s for s in SIGNALS if s in sig):
        picks[f"{SIGNALS[name][0]} alone"] = worst(face_signal(sig, name))
    # When most faces fail (a weak model, a large domain gap) "NME > 0.1" cannot tell the worst from the rest;
    # the worst tenth of the pool by real NME is a second, relative definition of what review should find.
    worst = real >= np.quantile(real, 0.9)
    w = int(worst.sum())
    expected_random, expected_worst = g * budget / max(n, 1), w * budget / max(n, 1)
    rows = [{"ordering": name, "found": int(gross[idx].sum()), "found_worst10": int(worst[idx].sum())}
            for name, idx in picks.items()]  # fmt: skip
    rows.append({"ordering": "random 5% (expected)", "found": expected_random, "found_worst10": expected_worst})
    rows.append({"ordering": "perfect ranking (ceiling)", "found": min(budget, g), "found_worst10": min(budget, w)})
    for r in rows:
        r["share"] = r["found"] / g if g else float("nan")
        r["x_random"] = r["found"] / expected_random if expected_random else float("nan")
        r["precision"] = r["found"] / budget
        r["x_random_worst10"] = r["found_worst10"] / expected_worst if expected_worst else float("nan")
    return {
        "pool_faces": n,
        "budget": budget,
        "gross": g,
        "gross_rate": g / max(n, 1),
        "worst10": w,
        "pool_nme": float(real.mean()),
        "pool_spearman": spearman(predicted, real),
        "rows": rows,
    }


def pseudo_label_quality(store: Store, k: int, truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """Real NME of round k's pseudo-labels against the pool truth, overall and per level."""
    view = store.pseudo_labels(k)
    frame = view.frame.reset_index(drop=True)
    if len(frame) == 0:
        return {"nme": float("nan"), "gross": float("nan"), "levels": []}
    gt = np.stack([truth[str(s)] for s in frame["sample_id"]])
    real = nme(view.landmarks.astype(np.float64), gt, store.scheme)
    levels = frame["level"].fillna("std").astype(str).to_numpy()
    out = []
    for level in [lv for lv in LEVEL_ORDER if lv in set(levels)]:
        m = levels == level
        out.append({
            "level": level,
            "labels": int(m.sum()),
            "nme_mean": float(real[m].mean()),
            "nme_median": float(np.median(real[m])),
            "gross_share": float((real[m] > GROSS_NME).mean()),
            "predicted_nme_mean": float(frame["predicted_nme"].to_numpy(dtype=np.float64)[m].mean()),
        })  # fmt: skip
    return {"nme": float(real.mean()), "gross": float((real > GROSS_NME).mean()), "levels": out}
