"""Decode PIPNet outputs into landmarks, vectorised over the batch (docs/algorithm.md section 2.11).

For each landmark i the raw score map's argmax cell ``id`` gives ``cx = id % S``, ``cy = id // S``
(integer division: the true-division bug of issue #4 cost COFW 5 points of NME). The own estimate is
``((cx + ox) / S, (cy + oy) / S)``; the neighbour heads at the same cell give landmark i's votes for
its C neighbours. The merged landmark k is the plain mean of its own estimate and its ``max_len``
cyclically padded votes (reverse index, section 2.6), so the own estimate always weighs
``1 / (1 + max_len)`` (1/23 on 300W) and votes from rarely-voting landmarks are duplicated: this is
what the published numbers use.

Beside the landmarks this returns the free confidence signals of docs/algorithm.md section 5.1:

* ``score_peak``: the raw maximum of the cls1 map (weak on its own: it can exceed 1 and can be high
  on occluded points);
* ``vote_spread``: the weighted RMS distance of the 1 + max_len estimates from the merged landmark
  (the NRM is a built-in committee; its disagreement is the standard deviation the merge averages);
* ``coarse_agreement``: whether the STC coarse maps (cls2, cls3) put the landmark where the fine
  prediction does, defined in :func:`coarse_agreement`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipnet_core.meanface import NeighbourTable

__all__ = ["Decoded", "coarse_agreement", "decode"]


@dataclass
class Decoded:
    """Decoded landmarks and per-landmark signals of a batch.

    Attributes:
        landmarks: (B, N, 2) merged landmarks, normalised crop coordinates (the model's answer).
        own: (B, N, 2) each landmark's own estimate (argmax cell + offsets).
        votes: (B, N, max_len, 2) the padded neighbour votes for each landmark used in the merge.
        score_peak: (B, N) raw maximum of the cls1 score map.
        vote_spread: (B, N) RMS distance of the 1 + max_len estimates from the merged landmark,
            normalised crop units.
        coarse_agreement: (B, N) in [0, 1], or None when no coarse map was given.
    """

    landmarks: np.ndarray
    own: np.ndarray
    votes: np.ndarray
    score_peak: np.ndarray
    vote_spread: np.ndarray
    coarse_agreement: np.ndarray | None = None


def _gather(maps: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Values of (B, K, S*S) maps at per-(b, k) flat cells idx (B, K)."""
    return np.take_along_axis(maps, idx[..., None], axis=-1)[..., 0]


def coarse_agreement(landmarks: np.ndarray, coarse_maps: list[np.ndarray]) -> np.ndarray:
    """How well the coarse score maps agree with the fine landmarks, in [0, 1].

    For each coarse map (size s x s, cell side 1/s in normalised units) take its argmax cell and the
    distance ``d`` from the fine landmark (clamped into the crop, as the targets clamp the cell) to
    that cell's square, in coarse-cell units (0 inside). The agreement with that map is
    ``max(0, 1 - d)``: 1 when the fine landmark lies in the coarse winner cell, falling linearly to 0
    one coarse cell away. A landmark just across a cell border from the coarse winner is therefore
    still nearly in agreement (a border case is ambiguity, not a contradiction), while a coarse map
    that points to a different region of the face gives 0. The result is the mean over the maps.

    Args:
        landmarks: (B, N, 2) fine (merged) landmarks, normalised crop units.
        coarse_maps: list of (B, N, s, s) raw coarse score maps (cls2, cls3).

    Returns:
        (B, N) agreement.
    """
    pts = np.clip(landmarks, 0.0, 1.0)
    scores = []
    for cmap in coarse_maps:
        b, n, s, s2 = cmap.shape
        if s != s2 or s == 0:
            raise ValueError(f"coarse score maps must be square and non-empty, got {cmap.shape}")
        idx = cmap.reshape(b, n, s * s).argmax(axis=-1)
        cell = np.stack([idx % s, idx // s], axis=-1).astype(pts.dtype)  # (B, N, 2) top-left, cells
        p = pts * s  # landmark in coarse-cell units
        gap = np.maximum(np.maximum(cell - p, p - (cell + 1.0)), 0.0)  # per-axis distance to the square
        dist = np.sqrt((gap**2).sum(axis=-1))
        scores.append(np.maximum(0.0, 1.0 - dist))
    return np.mean(scores, axis=0)


def decode(
    cls: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    nb_x: np.ndarray,
    nb_y: np.ndarray,
    table: NeighbourTable,
    cls2: np.ndarray | None = None,
    cls3: np.ndarray | None = None,
) -> Decoded:
    """Decode a batch of PIPNet outputs with the official merge.

    Args:
        cls: (B, N, S, S) raw score maps (cls1).
        x: (B, N, S, S) x offset maps, cell units from the cell's top-left.
        y: (B, N, S, S) y offset maps.
        nb_x: (B, C*N, S, S) neighbour x offset maps (channel i*C + j).
        nb_y: (B, C*N, S, S) neighbour y offset maps.
        table: The neighbour table the model was trained with.
        cls2: Optional (B, N, S/2, S/2) coarse score maps.
        cls3: Optional (B, N, S/4, S/4) coarsest score maps.

    Returns:
        :class:`Decoded`. Float64 inputs stay float64 (exact round trips); others give float32.
    """
    cls = np.asarray(cls)
    if cls.ndim != 4 or cls.shape[2] != cls.shape[3]:
        raise ValueError(f"score maps must have shape (B, N, S, S), got {cls.shape}")
    b, n, s, _ = cls.shape
    c = table.num_nb
    if table.num_landmarks != n:
        raise ValueError(f"the neighbour table is for {table.num_landmarks} landmarks but the maps have {n}")
    for name, arr, want in (("x", x, (b, n, s, s)), ("y", y, (b, n, s, s)),
                            ("nb_x", nb_x, (b, c * n, s, s)), ("nb_y", nb_y, (b, c * n, s, s))):  # fmt: skip
        if np.shape(arr) != want:
            raise ValueError(f"{name} must have shape {want} (C = {c}), got {np.shape(arr)}")
    dtype = np.result_type(np.asarray(x).dtype, np.float32)

    flat_cls = cls.reshape(b, n, s * s)
    idx = flat_cls.argmax(axis=-1)  # (B, N), first maximum on ties (as torch.max on CPU)
    score_peak = _gather(flat_cls, idx)
    cx = (idx % s).astype(dtype)
    cy = (idx // s).astype(dtype)  # integer division, issue #4
    own = np.stack(
        [(cx + _gather(np.asarray(x, dtype).reshape(b, n, s * s), idx)) / s,
         (cy + _gather(np.asarray(y, dtype).reshape(b, n, s * s), idx)) / s],
        axis=-1,
    )  # fmt: skip

    idx_nb = np.repeat(idx, c, axis=1)  # (B, N*C): channel i*C + j reads landmark i's cell
    vx = (np.repeat(cx, c, axis=1) + _gather(np.asarray(nb_x, dtype).reshape(b, n * c, s * s), idx_nb)) / s
    vy = (np.repeat(cy, c, axis=1) + _gather(np.asarray(nb_y, dtype).reshape(b, n * c, s * s), idx_nb)) / s
    flat_vote = table.reverse_index1 * c + table.reverse_index2  # (N*max_len,) channel of each padded vote
    votes = np.stack([vx[:, flat_vote], vy[:, flat_vote]], axis=-1).reshape(b, n, table.max_len, 2)

    estimates = np.concatenate([own[:, :, None, :], votes], axis=2)  # (B, N, 1 + max_len, 2)
    merged = estimates.mean(axis=2)
    spread = np.sqrt(((estimates - merged[:, :, None, :]) ** 2).sum(axis=-1).mean(axis=-1))

    coarse = [m for m in (cls2, cls3) if m is not None and np.asarray(m).shape[-1] > 0]  # 0x0: grid too small
    agreement = coarse_agreement(merged, [np.asarray(m) for m in coarse]).astype(dtype) if coarse else None
    return Decoded(
        landmarks=merged.astype(dtype),
        own=own.astype(dtype),
        votes=votes.astype(dtype),
        score_peak=score_peak.astype(dtype),
        vote_spread=spread.astype(dtype),
        coarse_agreement=agreement,
    )
