"""Training targets of PIPNet and of its STC curriculum levels (docs/algorithm.md sections 2.7 and 4.2).

For a grid of S x S cells over the crop, landmark i at normalised (x, y) is assigned the cell
``mx = clamp(floor(x * S), 0, S - 1)``, ``my`` likewise. The score target is one-hot at that cell (no
Gaussian); the offset targets are ``x * S - mx`` and ``y * S - my`` (cell units, measured from the
cell's top-left corner), and neighbour channel ``i * C + j`` holds the offset of landmark ``nb[i, j]``
from the same cell. Everything else is zero and unsupervised. Landmarks outside the crop keep a
clamped cell and offsets outside [0, 1).

:func:`encode_dense` writes the maps exactly as the official data loader does; :func:`build_targets`
gives the compact form the loss needs (the GT cell index and the values there), the coarse one-hot
maps for STC (``cls2`` at S/2, ``cls3`` at S/4, the maps the shared score head produces on max-pooled
features, section 4.1) and the per-sample masks of the curriculum levels:

=======  ==========================================
level    supervised outputs
=======  ==========================================
std      cls1 (S x S) + offsets + neighbours
cls2     cls2 (S/2 x S/2) score map only
cls3     cls3 (S/4 x S/4) score map only
cls1     cls1 only (implemented but unused in the paper)
=======  ==========================================

Missing landmarks (NaN, the masked loss the author suggests in issue #46) get all-zero maps and
``valid = 0``; every vote that involves them gets ``nb_valid = 0``.

Beside its level, a sample can carry a :class:`SampleTasks` entry that says which head set it feeds
(the main heads, or STLD's second set that only pseudo-labels feed), whether it supervises offsets
and neighbours (STLD's shrink head does so with a coarse score map), the exponent p of its
regression loss ``|e|^p / p`` and the weight of its loss terms (docs/algorithm.md section 6.2).
Without one every sample feeds the main heads with PIPNet's own loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["HEAD_MAIN", "HEAD_AUX", "LEVEL_MASKS", "SampleTasks", "Targets", "build_targets", "encode_dense"]

# Which of (cls1, cls2, cls3) a level supervises, and whether it supervises offsets and neighbours.
LEVEL_MASKS: dict[str, tuple[tuple[float, float, float], float]] = {
    "std": ((1.0, 0.0, 0.0), 1.0),
    "cls2": ((0.0, 1.0, 0.0), 0.0),
    "cls3": ((0.0, 0.0, 1.0), 0.0),
    "cls1": ((1.0, 0.0, 0.0), 0.0),
}
HEAD_MAIN = 0  # the official heads: the only ones prediction uses
HEAD_AUX = 1  # the second head set (PIPNet(aux_heads=True)), fed by pseudo-labels under STLD


@dataclass(frozen=True)
class SampleTasks:
    """How each of M samples enters the loss, beyond its level.

    Attributes:
        head: (M,) int, :data:`HEAD_MAIN` or :data:`HEAD_AUX`.
        regress: (M,) bool, whether the sample supervises offsets and neighbours (its level's own
            choice for the main heads; True with a coarse score map on STLD's shrink head).
        shrink: (M,) float, exponent p >= 1 of the regression loss ``|e|^p / p`` (1: PIPNet's L1).
        weight: (M,) float >= 0, factor of the sample's loss terms (STLD's pseudo-label weight).
    """

    head: np.ndarray
    regress: np.ndarray
    shrink: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        m = len(self.head)
        for name in ("regress", "shrink", "weight"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"SampleTasks.{name} has {len(getattr(self, name))} entries for {m} samples")
        if not np.isin(self.head, (HEAD_MAIN, HEAD_AUX)).all():
            raise ValueError(f"SampleTasks.head must be {HEAD_MAIN} (main) or {HEAD_AUX} (aux)")
        if m and (np.min(self.shrink) < 1 or not np.isfinite(self.shrink).all()):
            # below 1 the gradient |e|^(p-1) is infinite at e = 0
            raise ValueError(f"SampleTasks.shrink (the exponent p) must be >= 1, got {np.min(self.shrink)}")
        if m and (np.min(self.weight) < 0 or not np.isfinite(self.weight).all()):
            raise ValueError("SampleTasks.weight must be finite and >= 0")

    @classmethod
    def default(cls, levels: Sequence[str]) -> SampleTasks:
        """Every sample on the main heads with PIPNet's loss (its level decides the regression)."""
        m = len(levels)
        regress = np.array([LEVEL_MASKS[str(lv)][1] > 0 for lv in levels], dtype=bool)
        return cls(np.zeros(m, np.int64), regress, np.ones(m, np.float32), np.ones(m, np.float32))

    def take(self, index: Sequence[int] | np.ndarray) -> SampleTasks:
        """The entries of ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64)
        return SampleTasks(self.head[idx], self.regress[idx], self.shrink[idx], self.weight[idx])


@dataclass
class Targets:
    """Targets of a batch, compact where the loss only looks at the GT cell.

    Attributes:
        cls1: (B, N, S, S) one-hot score maps.
        cls2: (B, N, S//2, S//2) one-hot coarse maps (cell = fine cell // 2, i.e. max-pool aligned).
        cls3: (B, N, S//4, S//4) one-hot coarsest maps (cell = fine cell // 4).
        cell: (B, N) int64 flat index ``my * S + mx`` of the GT cell in the S x S map (0 if missing).
        x: (B, N) offset target at that cell, cell units.
        y: (B, N) likewise.
        nb_x: (B, N, C) neighbour offset targets at landmark i's cell; ``[:, i, j]`` is channel i*C+j.
        nb_y: (B, N, C) likewise.
        valid: (B, N) 1 where the landmark is present; 0 for NaN (maps all zero, no loss at all).
        nb_valid: (B, N, C) 1 where both landmark i and its neighbour ``nb[i, j]`` are present.
        mask_cls: (B, 3) which of cls1, cls2, cls3 each sample supervises.
        mask_reg: (B,) whether each sample supervises offsets and neighbours.
        head: (B,) head set each sample feeds (:data:`HEAD_MAIN` or :data:`HEAD_AUX`).
        shrink: (B,) exponent p of each sample's regression loss.
        weight: (B,) factor of each sample's loss terms.
    """

    cls1: np.ndarray
    cls2: np.ndarray
    cls3: np.ndarray
    cell: np.ndarray
    x: np.ndarray
    y: np.ndarray
    nb_x: np.ndarray
    nb_y: np.ndarray
    valid: np.ndarray
    nb_valid: np.ndarray
    mask_cls: np.ndarray
    mask_reg: np.ndarray
    head: np.ndarray
    shrink: np.ndarray
    weight: np.ndarray


def _check(landmarks: np.ndarray, grid: int, nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lm = np.asarray(landmarks, dtype=np.float64)
    nb = np.asarray(nb)
    if lm.ndim != 3 or lm.shape[2] != 2:
        raise ValueError(f"landmarks must have shape (B, N, 2), got {lm.shape}")
    if nb.ndim != 2 or nb.shape[0] != lm.shape[1]:
        raise ValueError(f"neighbour table must have shape (N, C) with N = {lm.shape[1]}, got {nb.shape}")
    if not isinstance(grid, int | np.integer) or grid < 1:
        raise ValueError(f"grid must be a positive integer (input size / net stride), got {grid!r}")
    return lm, nb.astype(np.int64)


def _cells(lm: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid mask (B, N) and clamped integer cells mx, my (B, N); missing landmarks get cell 0."""
    valid = np.isfinite(lm).all(axis=2)
    safe = np.where(valid[..., None], lm, 0.0)
    cells = np.clip(np.floor(safe * grid), 0, grid - 1).astype(np.int64)
    return valid, cells[..., 0], cells[..., 1]


def _one_hot(mx: np.ndarray, my: np.ndarray, valid: np.ndarray, size: int, dtype: np.dtype) -> np.ndarray:
    b, n = mx.shape
    flat = np.zeros((b, n, size * size), dtype=dtype)
    np.put_along_axis(flat, (my * size + mx)[..., None], valid[..., None].astype(dtype), axis=2)
    return flat.reshape(b, n, size, size)


def encode_dense(
    landmarks: np.ndarray, grid: int, nb: np.ndarray, dtype: np.dtype | type = np.float32
) -> dict[str, np.ndarray]:
    """Dense PIPNet target maps, as the official data loader writes them (docs/algorithm.md section 2.7).

    Args:
        landmarks: (B, N, 2) normalised crop coordinates; NaN landmarks leave their maps zero.
        grid: S, the score map size (input size / net stride).
        nb: (N, C) neighbour table.
        dtype: Output float type (float64 keeps the encode -> decode round trip exact).

    Returns:
        ``{"cls": (B, N, S, S), "x": (B, N, S, S), "y": (B, N, S, S), "nb_x": (B, C*N, S, S),
        "nb_y": (B, C*N, S, S)}``.
    """
    lm, nb = _check(landmarks, grid, nb)
    t = build_targets(lm, ["cls1"] * lm.shape[0], nb, grid, dtype=dtype, coarse=False)
    b, n = t.cell.shape
    c = nb.shape[1]
    flat_cell = t.cell[..., None]  # (B, N, 1)
    out = {"cls": t.cls1}
    for key, val in (("x", t.x), ("y", t.y)):
        m = np.zeros((b, n, grid * grid), dtype=dtype)
        np.put_along_axis(m, flat_cell, val[..., None], axis=2)
        out[key] = m.reshape(b, n, grid, grid)
    for key, val in (("nb_x", t.nb_x), ("nb_y", t.nb_y)):
        m = np.zeros((b, n, c, grid * grid), dtype=dtype)
        np.put_along_axis(m, np.broadcast_to(flat_cell[..., None], (b, n, c, 1)), val[..., None], axis=3)
        out[key] = m.reshape(b, n * c, grid, grid)  # channel i*C + j
    return out


def build_targets(
    landmarks: np.ndarray,
    levels: Sequence[str],
    nb: np.ndarray,
    grid: int,
    dtype: np.dtype | type = np.float32,
    coarse: bool = True,
    tasks: SampleTasks | None = None,
) -> Targets:
    """Compact targets and curriculum masks for a batch (docs/algorithm.md sections 2.7, 4.2, 4.3).

    Args:
        landmarks: (B, N, 2) normalised crop coordinates; NaN = missing; values outside [0, 1] are
            allowed (clamped cell, offsets outside [0, 1)).
        levels: B level names, one per sample: ``std``, ``cls2``, ``cls3`` (or ``cls1``).
        nb: (N, C) neighbour table (``NeighbourTable.nb``).
        grid: S, the fine score map size.
        dtype: Float type of the maps and offsets.
        coarse: Build the cls2/cls3 maps (False leaves them with zero-size spatial dimensions).
        tasks: Per-sample head set, regression switch, shrink exponent and weight; None: every
            sample on the main heads with PIPNet's loss.

    Raises:
        ValueError: an unknown level (named), shapes that do not match, or a coarse level asked for
            on a grid too small to have that map (S // 2 or S // 4 == 0).
    """
    lm, nb = _check(landmarks, grid, nb)
    b, n, _ = lm.shape
    if len(levels) != b:
        raise ValueError(f"got {len(levels)} levels for a batch of {b} samples; give one level per sample")
    unknown = sorted({str(lv) for lv in levels} - set(LEVEL_MASKS))
    if unknown:
        raise ValueError(f"unknown curriculum level(s) {unknown}; use one of {sorted(LEVEL_MASKS)}")
    mask_cls = np.array([LEVEL_MASKS[lv][0] for lv in levels], dtype=np.float32).reshape(b, 3)
    tasks = SampleTasks.default(levels) if tasks is None else tasks
    if len(tasks.head) != b:
        raise ValueError(f"got tasks for {len(tasks.head)} samples in a batch of {b}")
    mask_reg = np.asarray(tasks.regress, dtype=np.float32).reshape(b)
    for k, size in ((1, grid // 2), (2, grid // 4)):
        if size == 0 and mask_cls[:, k].any():
            raise ValueError(f"level cls{k + 1} needs a score map of S // {2**k} >= 1 cells, but S = {grid}")

    valid, mx, my = _cells(lm, grid)
    safe = np.where(valid[..., None], lm, 0.0) * grid  # landmark in grid units
    x = np.where(valid, safe[..., 0] - mx, 0.0)
    y = np.where(valid, safe[..., 1] - my, 0.0)
    # Neighbour k = nb[i, j] measured from landmark i's cell; gathered for the whole batch at once.
    nb_x = safe[:, nb, 0] - mx[..., None]  # (B, N, C)
    nb_y = safe[:, nb, 1] - my[..., None]
    nb_valid = valid[..., None] & valid[:, nb]
    nb_x = np.where(nb_valid, nb_x, 0.0)
    nb_y = np.where(nb_valid, nb_y, 0.0)

    def coarse_map(factor: int) -> np.ndarray:
        size = grid // factor
        if not coarse or size == 0:
            return np.zeros((b, n, 0, 0), dtype=dtype)
        # Coarse cell = fine cell // factor (clamped): the cell of a 2x2 / 4x4 max-pool window, which for
        # S divisible by 4 equals the floor(x * S / factor) rule (docs/algorithm.md section 4.2).
        cx = np.minimum(mx // factor, size - 1)
        cy = np.minimum(my // factor, size - 1)
        return _one_hot(cx, cy, valid, size, dtype)

    return Targets(
        cls1=_one_hot(mx, my, valid, grid, dtype),
        cls2=coarse_map(2),
        cls3=coarse_map(4),
        cell=np.where(valid, my * grid + mx, 0).astype(np.int64),
        x=x.astype(dtype),
        y=y.astype(dtype),
        nb_x=nb_x.astype(dtype),
        nb_y=nb_y.astype(dtype),
        valid=valid.astype(np.float32),
        nb_valid=nb_valid.astype(np.float32),
        mask_cls=mask_cls,
        mask_reg=mask_reg,
        head=np.asarray(tasks.head, dtype=np.int64).reshape(b),
        shrink=np.asarray(tasks.shrink, dtype=np.float32).reshape(b),
        weight=np.asarray(tasks.weight, dtype=np.float32).reshape(b),
    )
