"""The pool-labeling step of a round: pseudo-label one shard of the pool with round k's model.

Each shard is written once: its result is recorded beside it, and label ids are deterministic, so a
retried or rerun shard adds nothing twice. Faces whose image cannot be read become rejects.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from annotations.ingest.crops import inference_crop_boxes
from annotations.store import Store
from annotations.store.shards import mark_shard_done, shard_done
from flows.calibration import round_policy
from flows.checkpoints import round_model_version
from flows.config import STCConfig
from flows.evaluation import predictor, round_mapping

__all__ = ["cross_fitted", "label_shard", "route"]


def cross_fitted(store: Store, k: int, cfg: STCConfig) -> bool:
    """Whether round k labels the pool with its fold models (:attr:`STCConfig.cross_fit`, both trained)."""
    from flows.checkpoints import has_checkpoint
    from flows.training import FOLDS, fold_checkpoint

    return cfg.cross_fit and k >= 1 and all(has_checkpoint(store, k, fold_checkpoint(f)) for f in range(FOLDS))


def _cross_predict(store: Store, k: int, cfg: STCConfig, confidence: object, samples: pd.DataFrame,
                   boxes: np.ndarray, average_flip: bool) -> Any:  # fmt: skip
    """Each face predicted by the fold model that did not train on it (fold f's faces by fold 1 - f's model).

    The fold models run on torch (no ONNX export per fold); the confidence model is the round's (its
    calibration on the holdout, which neither fold model trained on either).
    """
    from flows.checkpoints import checkpoint_path
    from flows.training import FOLDS, fold_checkpoint, fold_of
    from pipnet_core.predict import Prediction, Predictor

    folds = fold_of(samples["sample_id"])
    uris = samples["image_uri"].tolist()
    parts = []
    for f in range(FOLDS):
        idx = np.flatnonzero(folds == f)
        if not len(idx):
            continue
        other = Predictor.from_checkpoint(checkpoint_path(store, k, fold_checkpoint((f + 1) % FOLDS)),
                                          backend="torch", confidence=confidence)  # fmt: skip
        parts.append((idx, other.predict([uris[i] for i in idx], boxes[idx], flip_tta=cfg.flip_tta,
                                         average_flip=average_flip)))  # fmt: skip
    n, first = len(samples), parts[0][1]

    def merged(get: Any) -> np.ndarray:
        out = np.full((n, *get(first).shape[1:]), np.nan, dtype=get(first).dtype)
        for idx, p in parts:
            out[idx] = get(p)
        return out

    signals = {key: merged(lambda p, key=key: p.signals[key]) for key in first.signals}
    failed = [(int(idx[i]), why) for idx, p in parts for i, why in p.failed]
    fields = ("landmarks", "landmarks_norm", "landmark_confidence", "face_confidence", "predicted_nme")
    arrays = {name: merged(lambda p, name=name: getattr(p, name)) for name in fields}
    return Prediction(**arrays, signals=signals, failed=sorted(failed))


def route(store: Store, k: int, cfg: STCConfig, policy: object, predicted_nme: np.ndarray) -> np.ndarray:
    """The level of each face round k labels (for round k + 1's training).

    ``routing="round0-shares"`` (confidence schedule, k >= 1): by rank, each level keeping the share of
    round 0's pseudo-labels (:func:`pipnet_core.curriculum.levels_by_shares`); the ranks are taken within
    the shard, a random slice of the pool (sample ids are content hashes), so shares hold per shard.
    Otherwise the policy's own rule.
    """
    from pipnet_core.curriculum import LEVEL_ORDER, level_shares, levels_by_shares

    if cfg.routing == "round0-shares" and cfg.schedule == "confidence" and k >= 1:
        # round 0's label-pool step recorded its level counts: no read of the pool's labels per shard
        counts = (store.completed_steps(0).get("label_pool") or {}).get("levels")
        if counts:
            total = sum(int(n) for n in counts.values())
            return levels_by_shares(predicted_nme, {lv: int(counts.get(lv, 0)) / total for lv in LEVEL_ORDER})
        first = store.pseudo_labels(0).frame
        if len(first):
            return levels_by_shares(predicted_nme, level_shares(first["level"].to_numpy()))
    return policy.levels(k + 1, predicted_nme)  # type: ignore[attr-defined]


def label_shard(store_url: str, k: int, shard: str, cfg_json: str) -> dict[str, int]:
    """Pseudo-label one shard with round k's model; returns ``{"labeled", "failed"}``."""
    from pipnet_core.confidence import ConfidenceModel

    cfg = STCConfig.from_dict(json.loads(cfg_json))
    store = Store.open(store_url)
    done = shard_done(store, k, shard)
    if done is not None:
        return done
    ids = store.read_round_json(k, shard)
    samples = store.samples().set_index("sample_id").loc[ids].reset_index()
    conf = store.read_round_json(k, "confidence.json", default=None)
    model = ConfidenceModel.from_dict(conf) if conf else None
    boxes = inference_crop_boxes(samples, round_mapping(store, k), cfg.crop_scale)
    policy = round_policy(store, k, cfg)  # the round's thresholds from reviewed faces, when it chose any
    # every pool face, the main heads' prediction; whether the flip view joins the label is the policy's call
    if cross_fitted(store, k, cfg):
        pred = _cross_predict(store, k, cfg, model, samples, boxes, policy.average_flip)
    else:
        pred = predictor(store, k, cfg, confidence=model).predict(
            samples["image_uri"].tolist(), boxes, flip_tta=cfg.flip_tta, average_flip=policy.average_flip
        )
    ok = np.ones(len(samples), dtype=bool)
    rejects = []
    for idx, reason in pred.failed:
        ok[idx] = False
        rejects.append({"stage": "pseudo", "source": samples["image_uri"][idx], "location": None,
                        "sample_id": samples["sample_id"][idx], "round": k, "reason": reason,
                        "created_at": pd.Timestamp.now(tz="UTC")})  # fmt: skip
    levels = route(store, k, cfg, policy, pred.predicted_nme[ok])
    rows = pd.DataFrame(
        {
            "sample_id": samples["sample_id"][ok].to_numpy(),
            "source": "pseudo",
            "round": k,
            "face_confidence": pred.face_confidence[ok].astype(np.float32),
            "predicted_nme": pred.predicted_nme[ok].astype(np.float32),
            "level": levels,
            "model_version": round_model_version(store, k),
        }
    )
    store.add_labels(rows, pred.landmarks[ok], landmark_confidence=pred.landmark_confidence[ok])
    if rejects:
        store.add_rejects(pd.DataFrame(rejects))
    result = {"labeled": int(ok.sum()), "failed": int((~ok).sum())}
    mark_shard_done(store, k, shard, result)
    return result
