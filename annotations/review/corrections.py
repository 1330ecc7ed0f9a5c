"""Corrections as data: each reviewed face's correction beside the pseudo-label it corrected.

A correction (a ``corrected`` label, annotations/review/pull.py) names its parent, the pseudo-label
the reviewer started from (``parent_label_id``, of round ``round``). The pair is what the model got
wrong on a target-domain face, measured by a person:

* the **correction delta** of a landmark is how far the person moved it, in NME units (the distance
  over the correction's normaliser, pipnet_core/metrics.py: outer eye corners for 300W), so it reads
  like the NME of the pseudo-label against the person's answer;
* the face's **real NME** is the mean delta over its landmarks: the audit's estimate of the pool's
  quality (:mod:`~annotations.review.audit`) and the recalibration of the confidence model
  (flows/calibration.py) are built on it.

Only the newest correction of a sample counts (an updated annotation supersedes), and only while
the sample's latest review state is still a completion (:mod:`annotations.store.exclusions`): a face
rejected after it was corrected does not count.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from annotations.store.exclusions import latest_review_status
from pipnet_core.metrics import landmark_errors
from pipnet_core.schemes import Scheme

__all__ = ["CorrectionPairs", "correction_deltas", "correction_pairs"]

DECILES = 10


@dataclass
class CorrectionPairs:
    """Reviewed faces with the pseudo-label each correction fixed.

    Attributes:
        frame: One row per face: ``sample_id``, ``label_id`` (the correction), ``parent_label_id``,
            ``round`` (the parent pseudo-label's round), ``annotator``, ``predicted_nme`` and
            ``face_confidence`` of the parent, ``nme`` (real NME of the parent against the correction).
        corrected: (M, N, 2) the people's landmarks, image pixels (NaN = missing).
        parent: (M, N, 2) the pseudo-labels they corrected, image pixels.
        parent_confidence: (M, N) per-landmark confidence of the parents (NaN where unknown).
        errors: (M, N) correction delta per landmark, NME units (NaN where a landmark is missing).
    """

    frame: pd.DataFrame
    corrected: np.ndarray
    parent: np.ndarray
    parent_confidence: np.ndarray
    errors: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)


def _empty(n: int) -> CorrectionPairs:
    cols = ["sample_id", "label_id", "parent_label_id", "round", "annotator", "predicted_nme", "face_confidence", "nme"]
    z2, z1 = np.zeros((0, n, 2), np.float32), np.zeros((0, n), np.float64)
    return CorrectionPairs(pd.DataFrame(columns=cols), z2, z2.copy(), z1, z1.copy())


def _newest_corrections(store: Any) -> Any:
    """The newest correction of each sample whose latest review state is not a rejection or a skip."""
    view = store.labels(source="corrected")
    if len(view) == 0:
        return view
    frame = view.frame
    order = np.lexsort((np.arange(len(frame)), frame["created_at"].to_numpy()))
    newest = {str(frame["sample_id"].iat[i]): int(i) for i in order}  # later rows overwrite earlier ones
    status = latest_review_status(store).set_index("sample_id")["status"]
    rows = [i for sid, i in newest.items() if status.get(sid, "completed") == "completed"]
    return view.take(np.sort(np.asarray(rows, dtype=np.int64)))


def _box_size(store: Any, sample_ids: np.ndarray) -> np.ndarray | None:
    if store.scheme.norm != "box":
        return None
    box = store.samples().set_index("sample_id").loc[sample_ids, "box"]
    b = np.stack(box.map(lambda v: np.asarray(v, dtype=np.float64)).to_numpy())
    return np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))


def correction_pairs(store: Any) -> CorrectionPairs:
    """Every current correction of the store with its parent pseudo-label (corrections without a
    stored parent, e.g. imported ones, are left out: there is nothing to compare them with)."""
    n = store.scheme.num_landmarks
    view = _newest_corrections(store)
    if len(view) == 0:
        return _empty(n)
    frame = view.frame.reset_index(drop=True)
    parents: dict[str, tuple[Any, int]] = {}
    for r in sorted(set(frame["round"].astype(int))):
        pseudo = store.pseudo_labels(r)
        for i, lid in enumerate(pseudo.frame["label_id"].astype(str)):
            parents[lid] = (pseudo, i)
    keep = [i for i, lid in enumerate(frame["parent_label_id"]) if isinstance(lid, str) and lid in parents]
    if not keep:
        return _empty(n)
    frame = frame.iloc[keep].reset_index(drop=True)
    corrected = view.landmarks[keep]
    parent = np.empty_like(corrected)
    conf = np.full((len(keep), n), np.nan)
    pred_nme, face_conf = np.full(len(keep), np.nan), np.full(len(keep), np.nan)
    for j, lid in enumerate(frame["parent_label_id"]):
        pv, i = parents[lid]
        parent[j] = pv.landmarks[i]
        if pv.landmark_confidence is not None:
            conf[j] = pv.landmark_confidence[i]
        pred_nme[j] = pv.frame["predicted_nme"].iat[i] if pd.notna(pv.frame["predicted_nme"].iat[i]) else np.nan
        face_conf[j] = pv.frame["face_confidence"].iat[i] if pd.notna(pv.frame["face_confidence"].iat[i]) else np.nan
    sids = frame["sample_id"].to_numpy(dtype=object)
    errors = landmark_errors(parent, corrected, store.scheme, box_size=_box_size(store, sids))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # a face with no measurable landmark: NaN
        face_nme = np.nanmean(errors, axis=1)
    out = pd.DataFrame({
        "sample_id": sids.astype(str), "label_id": frame["label_id"].astype(str),
        "parent_label_id": frame["parent_label_id"].astype(str), "round": frame["round"].astype(int),
        "annotator": frame["annotator"], "predicted_nme": pred_nme, "face_confidence": face_conf, "nme": face_nme,
    })  # fmt: skip
    return CorrectionPairs(out, corrected, parent, conf, errors)


def _mean(values: np.ndarray) -> float | None:
    v = values[np.isfinite(values)]
    return float(v.mean()) if v.size else None


def _deciles(delta: np.ndarray, confidence: np.ndarray) -> list[dict[str, Any]]:
    """Mean delta per decile of the landmarks' confidence (decile 1 = least confident tenth)."""
    ok = np.isfinite(delta) & np.isfinite(confidence)
    if ok.sum() < DECILES:
        return []
    d, c = delta[ok], confidence[ok]
    edges = np.quantile(c, np.linspace(0, 1, DECILES + 1))
    which = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, DECILES - 1)
    out = []
    for i in range(DECILES):
        sel = which == i
        if sel.any():
            out.append({"decile": i + 1, "confidence": [float(edges[i]), float(edges[i + 1])],
                        "landmarks": int(sel.sum()), "delta": float(d[sel].mean())})  # fmt: skip
    return out


def correction_deltas(pairs: CorrectionPairs, scheme: Scheme) -> list[dict[str, Any]]:
    """How far people moved the landmarks, per round of the corrected pseudo-labels.

    Args:
        pairs: From :func:`correction_pairs`.
        scheme: Gives the regions and landmark names.

    Returns:
        One dict per round, oldest first: ``round``, ``faces``, ``mean`` (mean delta over all
        landmarks, NME units), ``regions`` (region -> mean delta), ``landmarks`` (N mean deltas, in
        scheme order; None where never measured) and ``deciles`` (mean delta per decile of the
        pseudo-label's per-landmark confidence, least confident first, with the confidence range).
    """
    out = []
    rounds = pairs.frame["round"].to_numpy()
    for r in sorted(set(rounds.tolist())):
        sel = rounds == r
        err, conf = pairs.errors[sel], pairs.parent_confidence[sel]
        regions = {name: _mean(err[:, list(idx)]) for name, idx in scheme.regions.items() if len(idx)}
        out.append({
            "round": int(r), "faces": int(sel.sum()), "mean": _mean(err),
            "regions": regions, "landmarks": [_mean(err[:, i]) for i in range(err.shape[1])],
            "deciles": _deciles(err.ravel(), conf.ravel()),
        })  # fmt: skip
    return out
