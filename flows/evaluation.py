"""The evaluate step of a round: predict the holdout, measure it, calibrate the confidence model.

It needs a model and the store, so it lives in flows/; the measuring itself
(:func:`holdout_metrics`) and the calibration (:func:`calibrate_confidence`) are plain functions of
arrays. The confidence model is fitted on a deterministic half of the holdout and its ranking
quality measured on the other half.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from annotations.ingest.boxmap import BoxMapping
from annotations.ingest.crops import inference_crop_boxes
from annotations.store import Store
from flows.checkpoints import checkpoint_path
from flows.config import STCConfig
from flows.errors import UserError
from pipnet_core.schemes import Scheme

__all__ = [
    "HoldoutPrediction",
    "calibrate_confidence",
    "calibration_half",
    "evaluate_round",
    "holdout_metrics",
    "predictor",
    "round_mapping",
]


def predictor(store: Store, k: int, cfg: STCConfig, confidence: Any = None) -> Any:
    """Round k's model as a batched :class:`pipnet_core.predict.Predictor`."""
    from pipnet_core.predict import Predictor

    return Predictor.from_checkpoint(checkpoint_path(store, k), backend=cfg.backend, confidence=confidence)


def round_mapping(store: Store, k: int) -> BoxMapping:
    """The detector-box -> landmark-box mapping fitted when round k trained (identity if none)."""
    d = store.read_round_json(k, "boxmap.json", default=None)
    return BoxMapping.from_dict(d) if d else BoxMapping.identity()


def calibration_half(sample_ids: pd.Series) -> np.ndarray:
    """Deterministic half of the holdout used to calibrate confidence; the other half measures it."""
    return sample_ids.map(lambda s: int(hashlib.sha1(f"calib:{s}".encode()).hexdigest()[:8], 16) % 2 == 0).to_numpy()


def _box_size(samples: pd.DataFrame) -> np.ndarray:
    box = np.stack(samples["box"].map(lambda b: np.asarray(b, dtype=np.float64)).to_numpy())
    return np.sqrt((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))  # used by "box"-normalised schemes


def holdout_metrics(pred: np.ndarray, gt: np.ndarray, box_size: np.ndarray, scheme: Scheme) -> dict[str, Any]:
    """NME (mean over faces), FR@0.1, AUC@0.1 and NME per region.

    Args:
        pred: (M, N, 2) predicted landmarks, pixels.
        gt: (M, N, 2) true landmarks, pixels (NaN = missing).
        box_size: (M,) sqrt of the box area, for schemes normalised by the box.
        scheme: The landmark scheme (its NME normaliser and regions).
    """
    from pipnet_core.metrics import fr_auc, nme, region_nme

    per_face = nme(pred, gt, scheme, box_size=box_size)
    fr, auc = fr_auc(per_face)
    return {
        "per_face": per_face,
        "nme": float(np.mean(per_face)),
        "fr@0.1": float(fr),
        "auc@0.1": float(auc),
        "nme_by_region": {r: float(v) for r, v in region_nme(pred, gt, scheme, box_size=box_size).items()},
    }


def calibrate_confidence(signals: dict[str, np.ndarray], errors: np.ndarray, calib: np.ndarray, scheme: Scheme) -> Any:
    """A :class:`~pipnet_core.confidence.ConfidenceModel` fitted on the ``calib`` faces, else the default one."""
    from pipnet_core.confidence import ConfidenceModel
    from pipnet_core.metrics import norm_distance

    if calib.sum() >= 4 and (~calib).sum() >= 2:
        return ConfidenceModel.fit({n: v[calib] for n, v in signals.items()}, errors[calib])
    mf = scheme.meanface_array
    norm = float(norm_distance(mf[None], scheme)[0]) if mf is not None else 0.5
    return ConfidenceModel.default(norm_distance=norm)


@dataclass(frozen=True)
class HoldoutPrediction:
    """Round k's model on the holdout faces it could read.

    Attributes:
        samples: The holdout samples that were predicted (one row per face).
        pred: (M, N, 2) predicted landmarks, pixels.
        gt: (M, N, 2) human landmarks, pixels.
        signals: Confidence signals, each (M, N).
        failed: Faces whose image could not be read.
    """

    samples: pd.DataFrame
    pred: np.ndarray
    gt: np.ndarray
    signals: dict[str, np.ndarray]
    failed: int


def predict_holdout(store: Store, k: int, cfg: STCConfig) -> HoldoutPrediction:
    """Run round k's model on every holdout face (crops from the round's box mapping)."""
    hold = store.holdout()
    if len(hold) == 0:
        raise UserError(store.url, "no holdout faces with human labels", "import labeled faces with --split holdout")
    samples = store.samples().set_index("sample_id").loc[hold.frame["sample_id"]].reset_index()
    boxes = inference_crop_boxes(samples, round_mapping(store, k), cfg.crop_scale)
    # measured as the pool is labeled (flip-averaged or plain, as the policy labels), so the calibrated
    # confidence predicts the error of the labels themselves
    pred = predictor(store, k, cfg).predict(samples["image_uri"].tolist(), boxes, flip_tta=cfg.flip_tta,
                                            average_flip=cfg.policy().average_flip)  # fmt: skip
    ok = np.ones(len(samples), dtype=bool)
    for idx, _reason in pred.failed:
        ok[idx] = False
    return HoldoutPrediction(
        samples=samples[ok].reset_index(drop=True),
        pred=pred.landmarks[ok].astype(np.float64),
        gt=hold.landmarks[ok].astype(np.float64),
        signals={name: v[ok] for name, v in pred.signals.items()},
        failed=len(pred.failed),
    )


def evaluate_round(store_url: str, k: int, cfg: STCConfig) -> dict[str, Any]:
    """Holdout metrics of round k (metrics.json), its calibrated confidence model (confidence.json)."""
    from pipnet_core.confidence import spearman
    from pipnet_core.metrics import landmark_errors

    store = Store.open(store_url)
    hp = predict_holdout(store, k, cfg)
    box_size = _box_size(hp.samples)
    measured = holdout_metrics(hp.pred, hp.gt, box_size, store.scheme)
    per_face = measured.pop("per_face")
    calib = calibration_half(hp.samples["sample_id"])
    model = calibrate_confidence(hp.signals, landmark_errors(hp.pred, hp.gt, store.scheme, box_size=box_size),
                                 calib, store.scheme)  # fmt: skip
    store.write_round_json(k, "confidence.json", model.to_dict())
    test = ~calib if (~calib).sum() >= 2 else np.ones(len(per_face), dtype=bool)
    predicted = model.predict_face_nme({n: v[test] for n, v in hp.signals.items()})
    metrics = {
        "round": k,
        "faces": len(hp.samples),
        "failed": hp.failed,
        **measured,
        "confidence_spearman": float(spearman(predicted, per_face[test])) if test.sum() >= 3 else None,
    }
    store.write_round_json(k, "metrics.json", metrics)
    arrays = dict(per_face=per_face, predicted_nme=model.predict_face_nme(hp.signals), landmarks=hp.pred, gt=hp.gt,
                  sample_ids=np.asarray(hp.samples["sample_id"], dtype=str))  # fmt: skip
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    store.write_round_file(k, "holdout_predictions.npz", buf.getvalue())
    return metrics
