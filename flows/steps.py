"""The steps of an STC round as plain functions: store views in, model calls, store writes out.

This is the only module (with the tasks and CLI around it) that sees both ``pipnet_core`` (tensors)
and ``annotations`` (Parquet, Label Studio). Each function takes small things (a store URL, a round
number, a config) and returns small things (paths, counts, metrics), so Prefect tasks can wrap them
and pass results between processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotations.store import LabelView, Store
from flows.config import STCConfig
from pipnet_core import crop as cropmod
from pipnet_core.curriculum import CurriculumPolicy, create_policy

__all__ = [
    "calibration_half",
    "checkpoint_path",
    "evaluate_round",
    "inference_crop_boxes",
    "label_shard",
    "model_version",
    "plan_pool_shards",
    "policy_for",
    "select_review_candidates",
    "train_round",
]


def model_version(k: int) -> str:
    return f"round-{k}"


def policy_for(cfg: STCConfig) -> CurriculumPolicy:
    if cfg.schedule == "confidence":
        return create_policy(
            "confidence", std_below=cfg.std_below, cls2_below=cfg.cls2_below, cls3_below=cfg.cls3_below
        )
    return create_policy(cfg.schedule)


def warm_start(cfg: STCConfig) -> bool:
    return (not policy_for(cfg).reinitialise) if cfg.warm_start is None else cfg.warm_start


def _is_local(store: Store) -> bool:
    return "://" not in str(store.url) or str(store.url).startswith("file://")


def checkpoint_path(store: Store, k: int) -> str:
    """Local path of round k's checkpoint (downloaded to a temp file for remote stores)."""
    if _is_local(store):
        return os.path.join(str(store.round_path(k)).removeprefix("file://"), "model.pt")
    local = Path(tempfile.gettempdir()) / "pipstc-checkpoints" / hashlib.sha1(str(store.url).encode()).hexdigest()
    local.mkdir(parents=True, exist_ok=True)
    path = local / f"round-{k}-model.pt"
    if not path.exists():
        path.write_bytes(store.read_round_file(k, "model.pt"))
    return str(path)


# ----------------------------------------------------------------------------- crops


def training_crop_boxes(landmarks: np.ndarray, scale: float) -> np.ndarray:
    """(R, N, 2) px -> (R, 4) training crops: the landmark box enlarged by ``scale`` (GSSL convention)."""
    return cropmod.enlarge_box(cropmod.landmark_box(landmarks), scale=scale)


def inference_crop_boxes(samples: pd.DataFrame, mapping: Any, scale: float) -> np.ndarray:
    """Crops for faces without landmarks: the sample box mapped to a landmark box, then enlarged.

    Boxes that already are landmark boxes (``box_source == "landmarks"``) need no mapping; detector and
    given boxes go through the mapping fitted on human-labeled faces (annotations.ingest.boxmap).
    """
    boxes = (
        np.stack(samples["box"].map(lambda b: np.asarray(b, dtype=np.float64)).to_numpy())
        if len(samples)
        else (np.zeros((0, 4)))
    )
    need = (samples["box_source"].fillna("given") != "landmarks").to_numpy()
    if need.any() and mapping is not None:
        boxes[need] = mapping.apply(boxes[need])
    return cropmod.enlarge_box(boxes, scale=scale)


def _pool_detector(store: Store) -> str | None:
    """The detector that boxed most of the pool (``box_source`` ``detector:<name>``), if any."""
    sources = store.samples(split="pool")["box_source"].dropna()
    sources = sources[sources.str.startswith("detector:")]
    return None if sources.empty else str(sources.value_counts().index[0]).split(":", 1)[1]


def fit_crop_mapping(store: Store, max_faces: int = 200) -> Any:
    """Fit the pool detector's box -> landmark box on human-labeled train faces (issue: box conventions).

    Pairs come from labeled faces that carry a box of the same kind as the pool's. When the labeled
    faces only have landmark boxes, the pool's detector is run on (up to ``max_faces``) labeled
    images and each detection is matched to its face by IoU. Identity when there is nothing to fit.
    """
    from annotations.ingest.boxmap import BoxMapping, fit_box_mapping, match_boxes
    from annotations.ingest.detect import DetectorUnavailable, create_detector
    from pipnet_core.images import ImageReadError, read_image

    view = store.current_labels(splits=("train",), for_training=True)
    frame = view.frame.reset_index(drop=True)
    human = frame["source"].isin(["human", "corrected"]).to_numpy()
    if not human.any():
        return BoxMapping.identity()
    samples = store.samples().set_index("sample_id").loc[frame.loc[human, "sample_id"]].reset_index()
    targets = cropmod.landmark_box(view.landmarks[human].astype(np.float64))
    detector = _pool_detector(store)
    kind = f"detector:{detector}" if detector else None
    same = (samples["box_source"] == kind).to_numpy() if kind else (samples["box_source"] != "landmarks").to_numpy()
    if same.sum() >= 3:
        det = np.stack(samples["box"].to_numpy()[same]).astype(np.float64)
        return fit_box_mapping(det, targets[same], detector=detector)
    if detector is None:
        return BoxMapping.identity()
    try:
        detect = create_detector(detector)
    except DetectorUnavailable:
        return BoxMapping.identity(detector)
    det_boxes, target_boxes = [], []
    for uri, group in list(samples.groupby("image_uri").groups.items())[:max_faces]:
        try:
            found = detect(read_image(str(uri)).rgb)
        except ImageReadError:
            continue
        if not found:
            continue
        boxes = np.stack([d.box for d in found]).astype(np.float64)
        rows = np.asarray(list(group))
        for i, j in match_boxes(boxes, targets[rows]):
            det_boxes.append(boxes[i])
            target_boxes.append(targets[rows[j]])
    if len(det_boxes) < 3:
        return BoxMapping.identity(detector)
    return fit_box_mapping(np.stack(det_boxes), np.stack(target_boxes), detector=detector)


# ----------------------------------------------------------------------------- train


def training_set(store: Store, k: int, cfg: STCConfig) -> dict[str, Any]:
    """Images, crops, landmarks and levels that round k trains on (never holdout)."""
    view = store.current_labels(splits=("train", "pool"), for_training=True)
    frame = view.frame.reset_index(drop=True)
    keep = np.ones(len(frame), dtype=bool)
    if k == 0:
        keep &= frame["source"].isin(["human", "corrected"]).to_numpy()
    else:
        # pseudo-labels made by round k-1's model; older pseudo-labels are replaced, not reused
        is_pseudo = (frame["source"] == "pseudo").to_numpy()
        keep &= ~is_pseudo | (frame["round"].to_numpy() == k - 1)
    frame = frame[keep].reset_index(drop=True)
    landmarks = view.landmarks[keep]
    levels = np.where(frame["source"].to_numpy() == "pseudo", frame["level"].fillna("std").to_numpy(), "std")
    samples = store.samples().set_index("sample_id").loc[frame["sample_id"]]
    return {
        "images": samples["image_uri"].tolist(),
        "crop_boxes": training_crop_boxes(landmarks, cfg.crop_scale),
        "landmarks": landmarks,
        "levels": [str(v) for v in levels],
        "counts": {str(k_): int(v) for k_, v in pd.Series(levels).value_counts().items()},
    }


def train_round(store_url: str, k: int, cfg: STCConfig, progress: bool = True) -> str:
    """Train round k's model into the round folder; resumes an interrupted training of the same round."""
    from pipnet_core.data import FaceDataset
    from pipnet_core.train import TrainConfig, train

    store = Store.open(store_url)
    data = training_set(store, k, cfg)
    if not data["images"]:
        raise RuntimeError(f"round {k}: no labeled faces to train on in {store_url}; import human labels first")
    init_from = checkpoint_path(store, k - 1) if (k > 0 and warm_start(cfg)) else None
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        milestones=tuple(cfg.milestones),
        input_size=cfg.input_size,
        net_stride=cfg.net_stride,
        num_nb=cfg.num_nb,
        backbone=cfg.backbone,
        base_width=cfg.base_width,
        seed=cfg.seed + k,
        num_workers=cfg.num_workers,
        init_from=init_from,
        imagenet_weights=cfg.imagenet_weights,
    )
    dataset = FaceDataset(
        image_paths=data["images"],
        cache_crops=True,
        crop_boxes=data["crop_boxes"],
        landmarks=data["landmarks"],
        levels=data["levels"],
        input_size=cfg.input_size,
        flip=store.scheme.flip,
        augment=tcfg.augment,
    )
    out = checkpoint_path(store, k) if _is_local(store) else os.path.join(tempfile.mkdtemp(), "model.pt")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    train(tcfg, dataset, store.scheme, out, resume=True, progress=progress)
    if not _is_local(store):
        store.write_round_file(k, "model.pt", Path(out).read_bytes())
    mapping = fit_crop_mapping(store)
    store.write_round_json(k, "boxmap.json", mapping.to_dict())
    store.write_round_json(k, "training_set.json", {"faces": len(data["images"]), "levels": data["counts"]})
    return out


# ----------------------------------------------------------------------------- evaluate


def _predictor(store: Store, k: int, cfg: STCConfig, confidence: Any = None) -> Any:
    from pipnet_core.predict import Predictor

    return Predictor.from_checkpoint(checkpoint_path(store, k), backend=cfg.backend, confidence=confidence)


def _round_mapping(store: Store, k: int) -> Any:
    from annotations.ingest.boxmap import BoxMapping

    d = store.read_round_json(k, "boxmap.json", default=None)
    return BoxMapping.from_dict(d) if d else BoxMapping.identity()


def calibration_half(sample_ids: pd.Series) -> np.ndarray:
    """Deterministic half of the holdout used to calibrate confidence; the other half measures it."""
    return sample_ids.map(lambda s: int(hashlib.sha1(f"calib:{s}".encode()).hexdigest()[:8], 16) % 2 == 0).to_numpy()


def _meanface_norm(store: Store) -> float:
    from pipnet_core.metrics import norm_distance

    mf = store.scheme.meanface_array
    return float(norm_distance(mf[None], store.scheme)[0]) if mf is not None else 0.5


def evaluate_round(store_url: str, k: int, cfg: STCConfig) -> dict[str, Any]:
    """Holdout metrics of round k; calibrates the confidence model on one half of the holdout."""
    from pipnet_core.confidence import ConfidenceModel, spearman
    from pipnet_core.metrics import fr_auc, landmark_errors, nme, region_nme

    store = Store.open(store_url)
    hold = store.holdout()
    if len(hold) == 0:
        raise RuntimeError(f"{store_url} has no holdout faces with human labels: evaluation needs some")
    samples = store.samples().set_index("sample_id").loc[hold.frame["sample_id"]].reset_index()
    boxes = inference_crop_boxes(samples, _round_mapping(store, k), cfg.crop_scale)
    pred = _predictor(store, k, cfg).predict(samples["image_uri"].tolist(), boxes, batch_size=32, flip_tta=cfg.flip_tta)
    ok = np.ones(len(samples), dtype=bool)
    for idx, _reason in pred.failed:
        ok[idx] = False
    gt = hold.landmarks[ok].astype(np.float64)
    pr = pred.landmarks[ok].astype(np.float64)
    box = np.stack(samples["box"].map(lambda b: np.asarray(b, dtype=np.float64)).to_numpy())[ok]
    box_size = np.sqrt((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))  # used by "box"-normalised schemes
    per_face = nme(pr, gt, store.scheme, box_size=box_size)
    fr, auc = fr_auc(per_face)
    errors = landmark_errors(pr, gt, store.scheme, box_size=box_size)
    sig = {name: v[ok] for name, v in pred.signals.items()}
    calib = calibration_half(samples["sample_id"][ok])
    if calib.sum() >= 4 and (~calib).sum() >= 2:
        model = ConfidenceModel.fit({n: v[calib] for n, v in sig.items()}, errors[calib])
    else:
        model = ConfidenceModel.default(norm_distance=_meanface_norm(store))
    store.write_round_json(k, "confidence.json", model.to_dict())
    test = ~calib if (~calib).sum() >= 2 else np.ones(len(per_face), dtype=bool)
    predicted = model.predict_face_nme({n: v[test] for n, v in sig.items()})
    metrics = {
        "round": k,
        "faces": int(ok.sum()),
        "failed": len(pred.failed),
        "nme": float(np.mean(per_face)),
        "fr@0.1": float(fr),
        "auc@0.1": float(auc),
        "nme_by_region": {r: float(v) for r, v in region_nme(pr, gt, store.scheme, box_size=box_size).items()},
        "confidence_spearman": float(spearman(predicted, per_face[test])) if test.sum() >= 3 else None,
    }
    store.write_round_json(k, "metrics.json", metrics)
    store.write_round_file(
        k,
        "holdout_predictions.npz",
        _npz(per_face=per_face, predicted_nme=model.predict_face_nme(sig), landmarks=pr, gt=gt,
             sample_ids=np.asarray(samples["sample_id"][ok], dtype=str)),
    )  # fmt: skip
    return metrics


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


# ----------------------------------------------------------------------------- pool labeling


def plan_pool_shards(store_url: str, k: int, shard_size: int) -> list[str]:
    """Split the unlabeled pool into shard files (lists of sample ids); returns their paths.

    The plan is written once per round (rounds/round=k/shards/), so a rerun labels the same shards.
    """
    store = Store.open(store_url)
    existing = store.read_round_json(k, "shards/plan.json", default=None)
    if existing is None:
        pool = store.pool_unlabeled()
        ids = sorted(pool["sample_id"].tolist())
        shards = [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]
        for i, shard in enumerate(shards):
            store.write_round_json(k, f"shards/shard-{i:05d}.json", shard)
        existing = {"shards": [f"shards/shard-{i:05d}.json" for i in range(len(shards))], "faces": len(ids)}
        store.write_round_json(k, "shards/plan.json", existing)
    return list(existing["shards"])


def label_shard(store_url: str, k: int, shard: str, cfg_json: str) -> dict[str, int]:
    """Pseudo-label one shard with round k's model; written once (deterministic label ids dedupe reruns)."""
    from pipnet_core.confidence import ConfidenceModel

    cfg = STCConfig.from_dict(json.loads(cfg_json))
    store = Store.open(store_url)
    done = store.read_round_json(k, shard.replace(".json", ".done.json"), default=None)
    if done is not None:
        return done
    ids = store.read_round_json(k, shard)
    samples = store.samples().set_index("sample_id").loc[ids].reset_index()
    conf = store.read_round_json(k, "confidence.json", default=None)
    model = ConfidenceModel.from_dict(conf) if conf else None
    boxes = inference_crop_boxes(samples, _round_mapping(store, k), cfg.crop_scale)
    pred = _predictor(store, k, cfg, confidence=model).predict(
        samples["image_uri"].tolist(), boxes, batch_size=32, flip_tta=cfg.flip_tta
    )
    ok = np.ones(len(samples), dtype=bool)
    rejects = []
    for idx, reason in pred.failed:
        ok[idx] = False
        rejects.append({"stage": "pseudo", "source": samples["image_uri"][idx], "location": None,
                        "sample_id": samples["sample_id"][idx], "round": k, "reason": reason,
                        "created_at": pd.Timestamp.now(tz="UTC")})  # fmt: skip
    levels = policy_for(cfg).levels(k + 1, pred.predicted_nme[ok])
    rows = pd.DataFrame(
        {
            "sample_id": samples["sample_id"][ok].to_numpy(),
            "source": "pseudo",
            "round": k,
            "face_confidence": pred.face_confidence[ok].astype(np.float32),
            "predicted_nme": pred.predicted_nme[ok].astype(np.float32),
            "level": levels,
            "model_version": model_version(k),
        }
    )
    store.add_labels(rows, pred.landmarks[ok], landmark_confidence=pred.landmark_confidence[ok])
    if rejects:
        store.add_rejects(pd.DataFrame(rejects))
    result = {"labeled": int(ok.sum()), "failed": int((~ok).sum())}
    store.write_round_json(k, shard.replace(".json", ".done.json"), result)
    return result


# ----------------------------------------------------------------------------- review


def select_review_candidates(store_url: str, k: int, cfg: STCConfig) -> list[str]:
    """The faces of round k's pseudo-labels that people should see, within the round's budget."""
    from annotations.review.selection import pose_descriptor, select_for_review

    store = Store.open(store_url)
    view: LabelView = store.pseudo_labels(k)
    if len(view) == 0:
        return []
    frame = view.frame.reset_index(drop=True).copy()
    pose = pose_descriptor(view.landmarks, store.scheme)
    frame["yaw"], frame["pitch"] = pose[:, 0], pose[:, 1]
    samples = store.samples().set_index("sample_id")
    frame["split"] = samples.loc[frame["sample_id"], "split"].to_numpy()
    # the budget is a share of the whole pool, so it does not shrink as people correct faces
    budget = max(1, int(round(cfg.review_budget * len(store.samples(split="pool")))))
    exclude = set(store.in_review()["sample_id"])
    human = store.labels(source="human").frame["sample_id"]
    corrected = store.labels(source="corrected").frame["sample_id"]
    exclude |= set(human) | set(corrected)
    return select_for_review(frame, budget=budget, exclude=exclude)
