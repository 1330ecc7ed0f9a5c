"""Which faces people should see: the least sure first, within a budget, spread over head poses.

Selection is uncertainty sampling (the faces the model is least sure of carry the most information
per reviewer minute; Settles, "Active Learning Literature Survey", 2009, section 3.1), made diverse
over head pose so that one round's budget is not spent on 50 copies of the same profile face (the
diversity argument of batch-mode active learning, e.g. Brinker, ICML 2003). Pose is binned on a coarse
yaw x pitch grid and the bins are visited round-robin, worst bin first; only the worst
``pool_factor * budget`` faces take part, so everything picked is still among the least sure.

The pose descriptor needs no 3D model: under yaw the points on the face's midline (nose, chin) move
sideways relative to the mirrored pairs around them (eye corners, jaw), because they sit closer to
the camera; under pitch they move up or down. The scheme's flip table says which landmarks are
mirrored pairs and which lie on the midline, so the descriptor works for any scheme that has one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from pipnet_core.schemes import Scheme

__all__ = ["pose_descriptor", "select_for_review"]


def _pairs_and_midline(scheme: Scheme) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flip = np.asarray(scheme.flip, dtype=np.int64)
    idx = np.arange(scheme.num_landmarks)
    a = idx[idx < flip]
    b = flip[a]
    return a, b, idx[idx == flip]


def _raw_pose(landmarks: np.ndarray, scheme: Scheme) -> np.ndarray:
    """(B, N, 2) -> (B, 2) yaw/pitch proxies before centring on the mean face."""
    lm = np.asarray(landmarks, dtype=np.float64)
    a, b, mid = _pairs_and_midline(scheme)
    out = np.zeros((lm.shape[0], 2), dtype=np.float64)
    if len(a) == 0:
        return out
    # Orient every pair the same way (left to right in the mean face) before measuring roll.
    sign = np.ones(len(a))
    mf = scheme.meanface_array
    if mf is not None:
        sign = np.where(mf[b, 0] >= mf[a, 0], 1.0, -1.0)
    vec = (lm[:, b] - lm[:, a]) * sign[None, :, None]  # (B, P, 2)
    roll = np.arctan2(np.nansum(vec[..., 1], axis=1), np.nansum(vec[..., 0], axis=1))  # (B,)
    c, s = np.cos(-roll), np.sin(-roll)
    centre = np.nanmean(lm, axis=1, keepdims=True)
    d = lm - centre
    x = c[:, None] * d[..., 0] - s[:, None] * d[..., 1]  # roll-free coordinates
    y = s[:, None] * d[..., 0] + c[:, None] * d[..., 1]
    with np.errstate(invalid="ignore"):
        width = np.nanmax(x, axis=1) - np.nanmin(x, axis=1)
        height = np.nanmax(y, axis=1) - np.nanmin(y, axis=1)
    pair_mx, pair_my = (x[:, a] + x[:, b]) / 2, (y[:, a] + y[:, b]) / 2
    sep = np.nanmean(np.abs(x[:, b] - x[:, a]), axis=0)  # (P,) how far apart each pair is on average
    if len(mid):
        front_x, front_y = x[:, mid], y[:, mid]
        back = np.ones(len(a), dtype=bool)
    else:  # no midline landmark: the narrowest pairs (nose wings, inner eye corners) stand in for it
        order = np.argsort(sep, kind="stable")
        front = order[: max(1, len(order) // 2)]
        back = np.ones(len(a), dtype=bool)
        back[front] = False
        if not back.any():
            return out
        front_x, front_y = pair_mx[:, front], pair_my[:, front]
    with np.errstate(invalid="ignore", divide="ignore"):
        yaw = (np.nanmean(front_x, axis=1) - np.nanmean(pair_mx[:, back], axis=1)) / width
        pitch = (np.nanmean(front_y, axis=1) - np.nanmean(pair_my[:, back], axis=1)) / height
    out[:, 0], out[:, 1] = yaw, pitch
    return np.where(np.isfinite(out), out, 0.0)


def pose_descriptor(landmarks: np.ndarray, scheme: Scheme) -> np.ndarray:
    """Yaw and pitch proxies of faces from their landmarks.

    Args:
        landmarks: (B, N, 2) landmarks in any consistent units (pixels or crop units); NaN allowed.
        scheme: Gives the mirrored pairs (flip table) and the mean face.

    Returns:
        (B, 2) float32: column 0 grows with yaw, column 1 with pitch, both dimensionless (offset of
        the midline landmarks from the mirrored pairs, over face width resp. height, after removing
        roll); yaw is 0 for a mirror-symmetric face and changes sign when the face is mirrored, pitch
        is 0 for a face pitched like the scheme's mean face. Zeros for a scheme without a flip table.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (scheme.num_landmarks, 2):
        raise ValueError(f"landmarks must have shape (B, {scheme.num_landmarks}, 2), got {lm.shape}")
    if scheme.flip is None or lm.shape[0] == 0:
        return np.zeros((lm.shape[0], 2), dtype=np.float32)
    pose = _raw_pose(lm, scheme)
    mf = scheme.meanface_array
    if mf is not None:
        # Pitch is measured from the mean face's (the midline sits lower than the eyes in every face);
        # yaw is not: a mirror-symmetric face has yaw 0 by construction, and mirroring a face exactly
        # negates its yaw.
        pose[:, 1] -= _raw_pose(mf[None], scheme)[0, 1]
    return pose.astype(np.float32)


def _badness(frame: pd.DataFrame) -> pd.Series:
    """Higher is worse: predicted NME, else 1 - face confidence; unknown quality counts as worst."""
    if "predicted_nme" in frame and frame["predicted_nme"].notna().any():
        bad = frame["predicted_nme"].astype(float)
    elif "face_confidence" in frame:
        bad = 1.0 - frame["face_confidence"].astype(float)
    else:
        raise ValueError("candidates need a 'predicted_nme' or a 'face_confidence' column to rank faces")
    return bad.fillna(np.inf)


def _bin(values: np.ndarray, n: int) -> np.ndarray:
    """Equal-width bins over the 2nd-98th percentile range (extremes go to the end bins), so rare
    poses get bins of their own instead of being folded into the common ones."""
    if n <= 1 or len(values) == 0:
        return np.zeros(len(values), dtype=np.int64)
    lo, hi = np.percentile(values, [2, 98])
    if not hi > lo:
        return np.zeros(len(values), dtype=np.int64)
    return np.clip(((values - lo) / (hi - lo) * n).astype(np.int64), 0, n - 1)


def select_for_review(
    candidates: pd.DataFrame,
    budget: int,
    exclude: Iterable[str] = (),
    *,
    pose_columns: tuple[str, ...] = ("yaw", "pitch"),
    bins: tuple[int, ...] = (5, 3),
    pool_factor: float = 10.0,
) -> list[str]:
    """Pick up to ``budget`` faces for review.

    Args:
        candidates: One row per face (or per pseudo-label; the worst row of a sample counts) with
            ``sample_id``, ``split``, ``predicted_nme`` (higher is worse) or ``face_confidence``
            (lower is worse), and the pose columns (e.g. from :func:`pose_descriptor`); missing pose
            columns mean no pose spreading.
        budget: Most faces to return.
        exclude: Sample ids never to pick (already in review, human-labeled or corrected).
        pose_columns: Pose descriptor columns, binned with ``bins`` bins each.
        bins: Bins per pose column (5 yaw x 3 pitch: left/frontal/right at two strengths, up/level/down).
        pool_factor: Only the worst ``pool_factor * budget`` faces are considered: with the default 10
            and a budget of 5% of the pool, the better half of the pool never goes to people, while
            a pose whose faces are all a little better than the worst profiles still gets its share.

    Returns:
        Sample ids in pick order: round-robin over pose bins, the bin holding the worst face first,
        the worst face of each bin first. Never a holdout face, never an excluded one.
    """
    if budget <= 0 or len(candidates) == 0:
        return []
    for col in ("sample_id", "split"):
        if col not in candidates:
            raise ValueError(f"candidates need a {col!r} column (holdout faces must never go to review)")
    excluded = set(exclude)
    frame = candidates[(candidates["split"] != "holdout") & ~candidates["sample_id"].isin(excluded)].copy()
    if frame.empty:
        return []
    frame["_bad"] = _badness(frame)
    # One row per sample: its worst label; ties broken by sample id so the result is deterministic.
    frame = frame.sort_values(["_bad", "sample_id"], ascending=[False, True], kind="stable")
    frame = frame.drop_duplicates("sample_id", keep="first")
    frame = frame.head(max(budget, int(np.ceil(pool_factor * budget))))
    cols = [c for c in pose_columns if c in frame]
    key = np.zeros(len(frame), dtype=np.int64)
    for col, n in zip(cols, bins, strict=False):
        values = frame[col].astype(float).fillna(0.0).to_numpy()
        key = key * max(n, 1) + _bin(values, n)
    frame["_bin"] = key
    # frame is sorted worst first, so each bin's list is worst first and bins appear in order of their worst face.
    queues = [list(g["sample_id"]) for _, g in frame.groupby("_bin", sort=False)]
    picked: list[str] = []
    depth = 0
    while len(picked) < budget:
        row = [q[depth] for q in queues if depth < len(q)]
        if not row:
            break
        picked += row[: budget - len(picked)]
        depth += 1
    return picked
