"""The calibrate step of a round: the confidence model refitted on reviewed pool faces, thresholds from them.

The holdout calibrates the confidence model on faces people labeled, often in another domain than
the pool. Reviewed pool faces are target-domain truth from people: every correction says how wrong
a pseudo-label was (annotations/review/corrections.py). This step, after the holdout evaluation of
round k and before the pool is labeled:

1. **Signals of the reviewed faces.** Each reviewed face is predicted again by the model that made
   the pseudo-label it corrected (round r < k, from r's checkpoint, crops and settings): that
   model never trained on the person's answer, so its error is an honest one. Round k's own model
   has trained on the corrections and would look better on them than on the rest of the pool.
2. **Weights against the selection bias.** Most reviewed faces were chosen because the model was
   least sure of them. Inverse-probability weighting (Horvitz & Thompson, JASA 1952) makes the sample
   fit like the pool: an audit face (a simple random sample with inclusion probability ``p``,
   annotations/review/audit.py) stands for ``1/p`` pool faces; a face chosen by confidence stands for
   itself (weight 1), so the worst faces cannot dominate the fit. The pool weights are scaled to
   mean 1 and the holdout's calibration part joins with weight 1 per face; the holdout's evaluation
   part stays out of every fit and measures the result (Spearman of predicted vs real NME, before
   and after).
3. **Thresholds.** For each level of the confidence schedule the threshold is the highest predicted
   NME whose admitted reviewed faces (predicted NME below it) stay under ``max_gross_rate`` gross
   errors (weighted): real NME above ``gross_nme`` for ``std``, twice that for ``cls2`` and three
   times for ``cls3`` (the ratios of the schedule's default thresholds, pipnet_core/curriculum.py).

The refitted model replaces the round's ``confidence.json`` (the pool labeling uses it); the round's
``calibration.json`` records what it was fitted on, the ranking before and after, and the chosen
thresholds. Round k's pool labeling routes its pseudo-labels with them (:func:`round_policy`), and the
next round's resolved ``config.json`` records them (:func:`with_review_thresholds`): the pseudo-labels
round k + 1 trains on were routed by exactly those values (docs/review.md section 11).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from annotations.ingest.crops import inference_crop_boxes
from annotations.review.audit import audit_outcomes
from annotations.review.corrections import correction_pairs
from annotations.store import Store
from flows.config import STCConfig
from flows.evaluation import calibration_half, predict_holdout, predictor, round_mapping

__all__ = [
    "CALIBRATION_FILE",
    "LEVEL_TOLERANCE",
    "ReviewedFaces",
    "choose_thresholds",
    "recalibrate_round",
    "reviewed_faces",
    "round_policy",
    "with_review_thresholds",
]

CALIBRATION_FILE = "calibration.json"
# Gross error of a pseudo-label at each level, in multiples of STCConfig.gross_nme.
LEVEL_TOLERANCE = {"std_below": 1.0, "cls2_below": 2.0, "cls3_below": 3.0}


@dataclass
class ReviewedFaces:
    """Reviewed pool faces as the models that pseudo-labelled them saw them.

    Attributes:
        frame: One row per face: ``sample_id``, ``round`` (of the corrected pseudo-label), ``audit``
            (drawn at random), ``weight`` (1/p for audit faces, 1 otherwise).
        signals: Confidence signals, each (M, N), of round ``round``'s model.
        errors: (M, N) that model's per-landmark errors against the correction, NME units.
    """

    frame: pd.DataFrame
    signals: dict[str, np.ndarray]
    errors: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def real_nme(self) -> np.ndarray:
        """(M,) real NME of each face."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            return np.nanmean(self.errors, axis=1)


def _box_size(samples: pd.DataFrame) -> np.ndarray:
    box = np.stack(samples["box"].map(lambda b: np.asarray(b, dtype=np.float64)).to_numpy())
    return np.sqrt((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))


def _round_config(store: Store, r: int, fallback: STCConfig) -> STCConfig:
    saved = store.read_round_json(r, "config.json", default=None)
    return STCConfig.from_dict(saved) if saved else fallback


def _predict_round(store: Store, r: int, cfg: STCConfig, samples: pd.DataFrame) -> Any | None:
    """Round r's model on ``samples`` (its crops and settings); None when its checkpoint is gone."""
    rcfg = _round_config(store, r, cfg)
    try:
        model = predictor(store, r, rcfg)
    except FileNotFoundError:
        return None
    boxes = inference_crop_boxes(samples, round_mapping(store, r), rcfg.crop_scale)
    return model.predict(samples["image_uri"].tolist(), boxes, batch_size=32, flip_tta=rcfg.flip_tta)


def reviewed_faces(store: Store, k: int, cfg: STCConfig) -> ReviewedFaces:
    """Every pool face people corrected from a pseudo-label of a round before k, with its design weight."""
    from pipnet_core.metrics import landmark_errors

    pairs = correction_pairs(store)
    samples = store.samples().set_index("sample_id")
    split = samples.loc[pairs.frame["sample_id"], "split"].to_numpy() if len(pairs) else np.array([])
    audit = audit_outcomes(store, pairs)
    p = dict(zip(audit["sample_id"], audit["p"], strict=True))
    frames, signals, errors = [], [], []
    for r in sorted(set(pairs.frame["round"].astype(int))):
        rows = np.flatnonzero((pairs.frame["round"].to_numpy() == r) & (split == "pool"))
        if r >= k or len(rows) == 0:
            continue
        faces = samples.loc[pairs.frame["sample_id"].iloc[rows]].reset_index()
        pred = _predict_round(store, r, cfg, faces)
        if pred is None:
            continue
        ok = np.ones(len(rows), dtype=bool)
        ok[[i for i, _ in pred.failed]] = False
        truth = pairs.corrected[rows[ok]].astype(np.float64)
        box = _box_size(faces[ok]) if store.scheme.norm == "box" else None
        errors.append(landmark_errors(pred.landmarks[ok], truth, store.scheme, box_size=box))
        signals.append({n: v[ok] for n, v in pred.signals.items()})
        sids = faces["sample_id"][ok].astype(str).tolist()
        inclusion = np.array([p.get(s) or np.nan for s in sids], dtype=np.float64)
        is_audit = np.isfinite(inclusion) & (inclusion > 0)
        weight = np.ones(len(sids))
        weight[is_audit] = 1.0 / inclusion[is_audit]  # an audit face stands for 1/p pool faces
        frames.append(pd.DataFrame({"sample_id": sids, "round": r, "audit": is_audit, "weight": weight}))
    if not frames:
        n = store.scheme.num_landmarks
        empty = pd.DataFrame({"sample_id": [], "round": [], "audit": [], "weight": []})
        return ReviewedFaces(empty, {}, np.zeros((0, n)))
    names = set.intersection(*(set(s) for s in signals))
    merged = {n: np.concatenate([s[n] for s in signals]) for n in sorted(names)}
    return ReviewedFaces(pd.concat(frames, ignore_index=True), merged, np.concatenate(errors))


def choose_thresholds(
    predicted: np.ndarray, real: np.ndarray, weights: np.ndarray, gross_nme: float, max_gross_rate: float
) -> dict[str, float]:
    """The confidence schedule's thresholds from reviewed faces (module docstring, point 3).

    Args:
        predicted: (M,) predicted NME of each reviewed face (by the model the round will label with).
        real: (M,) its real NME against the person's correction.
        weights: (M,) design weights.
        gross_nme: Real NME of a gross error at level ``std``; levels cls2/cls3 tolerate
            :data:`LEVEL_TOLERANCE` times it.
        max_gross_rate: Highest weighted share of gross errors a threshold may admit.

    Returns:
        ``std_below``, ``cls2_below``, ``cls3_below`` (non-decreasing, > 0). A threshold sits just
        above the highest admitted face, so faces predicted worse than any reviewed one are not trusted.
    """
    keep = np.isfinite(predicted) & np.isfinite(real) & (np.asarray(weights) > 0)
    order = np.argsort(np.asarray(predicted)[keep], kind="stable")
    p = np.asarray(predicted, dtype=np.float64)[keep][order]
    y = np.asarray(real, dtype=np.float64)[keep][order]
    w = np.asarray(weights, dtype=np.float64)[keep][order]
    if p.size == 0:
        raise ValueError("choose_thresholds: no reviewed face with a finite predicted and real NME")
    group_end = np.r_[p[1:] > p[:-1], True]  # a cut can only fall between different predictions
    out: dict[str, float] = {}
    for name, times in LEVEL_TOLERANCE.items():
        rate = np.cumsum(w * (y > times * gross_nme)) / np.cumsum(w)
        ok = np.flatnonzero((rate <= max_gross_rate) & group_end)
        cut = float(np.nextafter(p[ok[-1]], np.inf)) if ok.size else float(p[0])
        out[name] = max(cut, 1e-6)
    out["cls2_below"] = max(out["cls2_below"], out["std_below"])
    out["cls3_below"] = max(out["cls3_below"], out["cls2_below"])
    return out


def _spearman(model: Any, signals: dict[str, np.ndarray], per_face: np.ndarray) -> float | None:
    from pipnet_core.confidence import spearman

    if len(per_face) < 3:
        return None
    value = spearman(model.predict_face_nme(signals), per_face)
    return None if not np.isfinite(value) else float(value)


def _refit(store: Store, k: int, cfg: STCConfig, faces: ReviewedFaces) -> tuple[Any, dict[str, Any]]:
    """The confidence model fitted on the holdout's calibration part and the weighted reviewed faces."""
    from pipnet_core.confidence import FEATURES, ConfidenceModel
    from pipnet_core.metrics import landmark_errors

    hp = predict_holdout(store, k, cfg)
    hold_err = landmark_errors(hp.pred, hp.gt, store.scheme, box_size=_box_size(hp.samples))
    calib = calibration_half(hp.samples["sample_id"])
    names = [f for f in FEATURES if f in hp.signals and f in faces.signals]
    pool_w = faces.frame["weight"].to_numpy(dtype=np.float64)
    signals = {n: np.concatenate([hp.signals[n][calib], faces.signals[n]]) for n in names}
    errors = np.concatenate([hold_err[calib], faces.errors])
    weights = np.concatenate([np.ones(int(calib.sum())), pool_w / pool_w.mean()])
    model = ConfidenceModel.fit(signals, errors, features=names, weights=weights)
    evaluation = ~calib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        per_face = np.nanmean(hold_err[evaluation], axis=1)
    eval_signals = {n: v[evaluation] for n, v in hp.signals.items()}
    # The holdout's fit, as evaluate wrote it; a rerun after confidence.json was replaced finds it in the record.
    earlier = store.read_round_json(k, CALIBRATION_FILE, default=None) or {}
    saved = earlier.get("holdout_model") or store.read_round_json(k, "confidence.json", default=None)
    before = _spearman(ConfidenceModel.from_dict(saved), eval_signals, per_face) if saved else None
    info = {
        "fitted_on": {"holdout_calibration": int(calib.sum()), "reviewed": len(faces),
                      "audit": int(faces.frame["audit"].sum()),
                      "rounds": sorted({int(r) for r in faces.frame["round"]})},
        "features": names,
        "holdout_evaluation_spearman": {"faces": int(evaluation.sum()), "before": before,
                                        "after": _spearman(model, eval_signals, per_face)},
        "holdout_model": saved,
    }  # fmt: skip
    return model, info


def recalibrate_round(store_url: str, k: int, cfg: STCConfig) -> dict[str, Any]:
    """Refit round k's confidence model on reviewed pool faces and choose the thresholds (module docstring).

    Returns:
        A summary for the round's steps: ``recalibrated``, ``reviewed``, ``thresholds`` (or None).
    """
    store = Store.open(store_url)
    if "label_pool" in store.completed_steps(k):  # a round of an older store: its pool used the old model
        return {"recalibrated": False, "reason": "the pool of this round was labeled before it was calibrated"}
    record: dict[str, Any] = {"round": k, "recalibrated": False, "thresholds": None,
                              "previous_thresholds": {n: getattr(cfg, n) for n in LEVEL_TOLERANCE}}  # fmt: skip
    faces = reviewed_faces(store, k, cfg) if cfg.recalibrate else None
    model = None
    if faces is None:
        record["reason"] = "recalibrate is off"
    elif len(faces) < max(cfg.recalibrate_min_faces, 2):
        record["reason"] = f"{len(faces)} reviewed pool faces (recalibrate_min_faces={cfg.recalibrate_min_faces})"
    else:
        model, info = _refit(store, k, cfg, faces)
        record.update(recalibrated=True, **info)
        if cfg.thresholds_from_reviews:
            weights = faces.frame["weight"].to_numpy(dtype=np.float64)
            predicted = model.predict_face_nme(faces.signals)
            record["thresholds"] = choose_thresholds(predicted, faces.real_nme, weights, cfg.gross_nme,
                                                     cfg.max_gross_rate)  # fmt: skip
            record["threshold_rule"] = {"gross_nme": cfg.gross_nme, "max_gross_rate": cfg.max_gross_rate,
                                        "tolerance": LEVEL_TOLERANCE}  # fmt: skip
    store.write_round_json(k, CALIBRATION_FILE, record)  # first: it keeps the holdout's fit for a rerun
    if model is not None:
        store.write_round_json(k, "confidence.json", model.to_dict())
    return {"recalibrated": record["recalibrated"], "reviewed": 0 if faces is None else len(faces),
            "thresholds": record["thresholds"]}  # fmt: skip


def _thresholds(store: Store, k: int) -> dict[str, float] | None:
    record = store.read_round_json(k, CALIBRATION_FILE, default=None)
    return (record or {}).get("thresholds") or None


def round_policy(store: Store, k: int, cfg: STCConfig) -> Any:
    """The curriculum policy round k's pool labeling routes with: the round's calibrated thresholds if any."""
    found = _thresholds(store, k) if cfg.thresholds_from_reviews else None
    return (cfg.replace(**found) if found else cfg).policy()


def with_review_thresholds(store: Store, k: int, cfg: STCConfig) -> STCConfig:
    """Round k's config with the thresholds round k - 1 chose from reviews (what its pseudo-labels were routed by)."""
    if k == 0 or not cfg.thresholds_from_reviews:
        return cfg
    found = _thresholds(store, k - 1)
    return cfg.replace(**found) if found else cfg
