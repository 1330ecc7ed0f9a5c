"""The evaluate step of a round: predict the holdout, measure it, calibrate the confidence model.

It needs a model and the store, so it lives in flows/; the measuring itself
(:func:`holdout_metrics`) and the calibration (:func:`calibrate_confidence`) are plain functions of
arrays.

The holdout is split in two parts, deterministically by sample id and recorded in the round's
``holdout_split.json``: the calibration part fits the confidence model and nothing else; the
evaluation part gives every reported number (metrics.json, the report's curves and worst faces, the
confidence ranking quality). A holdout too small to spare a calibration part is evaluated whole, with
the uncalibrated default confidence model.
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
from flows.checkpoints import checkpoint_path, export_round_onnx, round_onnx
from flows.config import STCConfig
from flows.errors import UserError
from pipnet_core.schemes import Scheme

__all__ = [
    "HoldoutPrediction",
    "calibrate_confidence",
    "calibration_half",
    "evaluate_round",
    "holdout_metrics",
    "holdout_split_record",
    "predictor",
    "round_mapping",
]


def predictor(store: Store, k: int, cfg: STCConfig, confidence: Any = None, export: bool = False) -> Any:
    """Round k's model as a batched :class:`pipnet_core.predict.Predictor`.

    The ONNX backend loads the round's ``model.onnx``; ``export`` makes it first when it is missing
    (single-task steps only: the pool shards load what the pool-labeling flow exported).
    """
    from pipnet_core.predict import Predictor

    onnx = None
    if cfg.backend == "onnx":
        onnx = export_round_onnx(store, k) if export else round_onnx(store, k)
    return Predictor.from_checkpoint(checkpoint_path(store, k), backend=cfg.backend, confidence=confidence,
                                     onnx_model=onnx)  # fmt: skip


def round_mapping(store: Store, k: int) -> BoxMapping:
    """The detector-box -> landmark-box mapping fitted when round k trained (identity if none)."""
    d = store.read_round_json(k, "boxmap.json", default=None)
    return BoxMapping.from_dict(d) if d else BoxMapping.identity()


# Fewest calibration faces worth fitting the confidence model on (its fit needs a few), and fewest
# evaluation faces left for the metrics; below either the whole holdout is evaluated.
MIN_CALIBRATION_FACES = 4
MIN_EVALUATION_FACES = 2
HOLDOUT_SPLIT = "holdout_split.json"


def calibration_half(sample_ids: pd.Series) -> np.ndarray:
    """(M,) bool: the holdout faces of the calibration part (a deterministic half by sample id).

    Every other face is the evaluation part. When either part would be too small
    (:data:`MIN_CALIBRATION_FACES`, :data:`MIN_EVALUATION_FACES`) there is no calibration part.
    """
    ids = pd.Series(sample_ids).astype(str)
    calib = ids.map(lambda s: int(hashlib.sha1(f"calib:{s}".encode()).hexdigest()[:8], 16) % 2 == 0).to_numpy()
    if calib.sum() < MIN_CALIBRATION_FACES or (~calib).sum() < MIN_EVALUATION_FACES:
        return np.zeros(len(ids), dtype=bool)
    return calib.astype(bool)


def holdout_split_record(sample_ids: pd.Series, calib: np.ndarray) -> dict[str, Any]:
    """The round's record of which holdout faces calibrate and which evaluate."""
    ids = [str(s) for s in sample_ids]
    return {
        "rule": "sha1('calib:' + sample_id) even -> calibration (none when a part would be too small)",
        "calibration": [s for s, c in zip(ids, calib, strict=True) if c],
        "evaluation": [s for s, c in zip(ids, calib, strict=True) if not c],
    }


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
    """A :class:`~pipnet_core.confidence.ConfidenceModel` fitted on the ``calib`` faces only, else the default one."""
    from pipnet_core.confidence import ConfidenceModel
    from pipnet_core.metrics import norm_distance

    if calib.sum() >= MIN_CALIBRATION_FACES:
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
    model = predictor(store, k, cfg, export=True)
    pred = model.predict(samples["image_uri"].tolist(), boxes, flip_tta=cfg.flip_tta,
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
    """Metrics of round k on the holdout's evaluation part (metrics.json), the confidence model fitted on
    its calibration part (confidence.json), and which face is in which part (holdout_split.json)."""
    from pipnet_core.confidence import spearman
    from pipnet_core.metrics import landmark_errors

    store = Store.open(store_url)
    hp = predict_holdout(store, k, cfg)
    box_size = _box_size(hp.samples)
    calib = calibration_half(hp.samples["sample_id"])
    store.write_round_json(k, HOLDOUT_SPLIT, holdout_split_record(hp.samples["sample_id"], calib))
    errors = landmark_errors(hp.pred, hp.gt, store.scheme, box_size=box_size)
    model = calibrate_confidence(hp.signals, errors, calib, store.scheme)
    store.write_round_json(k, "confidence.json", model.to_dict())
    ev = ~calib
    measured = holdout_metrics(hp.pred[ev], hp.gt[ev], box_size[ev], store.scheme)
    per_face = measured.pop("per_face")
    predicted = model.predict_face_nme({n: v[ev] for n, v in hp.signals.items()})
    metrics = {
        "round": k,
        "faces": int(ev.sum()),  # the evaluation part: every number here is measured on it
        "calibration_faces": int(calib.sum()),
        "failed": hp.failed,
        **measured,
        "confidence_spearman": float(spearman(predicted, per_face)) if ev.sum() >= 3 else None,
    }
    store.write_round_json(k, "metrics.json", metrics)
    arrays = dict(per_face=per_face, predicted_nme=predicted, landmarks=hp.pred[ev], gt=hp.gt[ev],
                  sample_ids=np.asarray(hp.samples["sample_id"][ev], dtype=str))  # fmt: skip
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    store.write_round_file(k, "holdout_predictions.npz", buf.getvalue())
    return metrics
