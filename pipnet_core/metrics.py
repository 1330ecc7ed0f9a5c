"""Landmark accuracy metrics: NME, CED, FR@0.1 and AUC@0.1 (docs/algorithm.md section 2.12).

* NME of a face = mean over its landmarks of ``||pred_k - gt_k||_2 / d``. ``d`` is the distance between
  the scheme's two normalisation landmarks of the ground truth (outer eye corners: 300W 36/45, WFLW
  60/72, COFW 8/9), or for ``norm == "box"`` the face-box size (AFLW-Full: 1 in the normalised crop).
  The official code takes it in normalised crop coordinates; the same functions work on pixels.
* CED(x) = fraction of faces with NME <= x on ``0 : step : threshold``; FR = 1 - CED(threshold);
  AUC = Simpson integral of the CED over [0, threshold] divided by threshold (``scipy.integrate.simps``
  in the official code, ``simpson`` here).

Missing ground-truth landmarks (NaN) are left out of a face's mean; a face whose normalisation
distance cannot be measured (a norm landmark missing) gets NaN NME and is left out of CED/FR/AUC.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.integrate import simpson

from pipnet_core.schemes import Scheme

__all__ = ["ause", "ced", "failure_auroc", "fr_auc", "landmark_errors", "nme", "norm_distance", "region_nme",
           "reliability"]


def _check(pred: np.ndarray, gt: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(f"pred and gt must both have shape (B, N, 2), got {p.shape} and {g.shape}")
    if p.shape[1] != scheme.num_landmarks:
        raise ValueError(f"scheme {scheme.name!r} has {scheme.num_landmarks} landmarks, the arrays {p.shape[1]}")
    return p, g


def norm_distance(gt: np.ndarray, scheme: Scheme, box_size: np.ndarray | None = None) -> np.ndarray:
    """The NME normaliser d of every face.

    Args:
        gt: (B, N, 2) ground truth.
        scheme: Gives the normalisation landmarks or ``"box"``.
        box_size: (B,) face-box size for ``"box"`` normalisation, in the units of ``gt``; None means
            1.0 (normalised crop units, AFLW-Full).

    Returns:
        (B,) float64; NaN where a normalisation landmark is missing.
    """
    g = np.asarray(gt, dtype=np.float64)
    if scheme.norm == "box":
        if box_size is None:
            return np.ones(g.shape[0])
        d = np.asarray(box_size, dtype=np.float64).reshape(-1)
        if d.shape[0] != g.shape[0]:
            raise ValueError(f"box_size must have shape (B,) = ({g.shape[0]},), got {np.shape(box_size)}")
        return d
    a, b = scheme.norm
    return np.linalg.norm(g[:, a] - g[:, b], axis=-1)


def landmark_errors(pred: np.ndarray, gt: np.ndarray, scheme: Scheme, box_size: np.ndarray | None = None) -> np.ndarray:
    """Per-landmark normalised errors.

    Args:
        pred: (B, N, 2) predictions (pixels or normalised crop units, the same as ``gt``).
        gt: (B, N, 2) ground truth; NaN = missing.
        scheme: Normalisation (see :func:`norm_distance`).
        box_size: (B,) for ``"box"`` schemes, or None.

    Returns:
        (B, N) float64 ``||pred - gt|| / d``; NaN where the GT landmark or d is missing.
    """
    p, g = _check(pred, gt, scheme)
    d = norm_distance(g, scheme, box_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.linalg.norm(p - g, axis=-1) / d[:, None]


def _nanmean(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN rows are legitimately NaN
        return np.nanmean(a, axis=axis)


def nme(pred: np.ndarray, gt: np.ndarray, scheme: Scheme, box_size: np.ndarray | None = None) -> np.ndarray:
    """NME of every face: (B,) mean over present landmarks of :func:`landmark_errors`."""
    return _nanmean(landmark_errors(pred, gt, scheme, box_size), axis=1)


def region_nme(
    pred: np.ndarray, gt: np.ndarray, scheme: Scheme, box_size: np.ndarray | None = None
) -> dict[str, float]:
    """Mean NME per scheme region (jaw, brows, nose, eyes, mouth, ...), averaged over faces.

    Returns:
        Region name -> mean over faces of the region's NME (NaN if never measurable).
    """
    err = landmark_errors(pred, gt, scheme, box_size)
    out: dict[str, float] = {}
    for region, idx in scheme.regions.items():
        if len(idx):
            out[region] = float(_nanmean(_nanmean(err[:, list(idx)], axis=1)))
    return out


def _grid(threshold: float, step: float) -> np.ndarray:
    if not (threshold > 0 and 0 < step <= threshold):
        raise ValueError(f"need threshold > 0 and 0 < step <= threshold, got threshold={threshold}, step={step}")
    # linspace, not arange: the last point is exactly the threshold (arange's float end is fragile).
    return np.linspace(0.0, threshold, int(round(threshold / step)) + 1)


def ced(nmes: np.ndarray, threshold: float = 0.1, step: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution.

    Args:
        nmes: (B,) per-face NME; NaN faces are left out.
        threshold: Last x value (0.1 in the papers).
        step: Spacing of the x values (1e-4 in the official code).

    Returns:
        ``(xs, ys)``: xs from 0 to threshold, ys the fraction of faces with NME <= x.
    """
    v = np.asarray(nmes, dtype=np.float64).reshape(-1)
    v = np.sort(v[np.isfinite(v)])
    if v.size == 0:
        raise ValueError("ced: no finite NME values (every face was missing its normalisation landmarks)")
    xs = _grid(threshold, step)
    ys = np.searchsorted(v, xs, side="right") / v.size
    return xs, ys


def fr_auc(nmes: np.ndarray, threshold: float = 0.1, step: float = 1e-4) -> tuple[float, float]:
    """Failure rate and area under the CED at ``threshold``.

    Returns:
        ``(fr, auc)``: ``fr = 1 - CED(threshold)``, ``auc = simpson(CED, xs) / threshold``.
    """
    xs, ys = ced(nmes, threshold, step)
    return float(1.0 - ys[-1]), float(simpson(ys, x=xs) / threshold)


# ----------------------------------------------------------------------------- confidence quality


def _finite_pairs(predicted: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64).ravel()
    r = np.asarray(real, dtype=np.float64).ravel()
    if p.shape != r.shape:
        raise ValueError(f"predicted and real errors differ in size ({p.size} vs {r.size})")
    keep = np.isfinite(p) & np.isfinite(r)
    return p[keep], r[keep]


def failure_auroc(predicted: np.ndarray, real: np.ndarray, threshold: float = 0.08) -> float:
    """How well a predicted error finds failures: the AUROC of ``predicted`` for ``real > threshold``.

    The probability that a random failure is ranked worse than a random success (ties count half;
    the Mann-Whitney U statistic over the two groups' sizes). NaN when either group is empty.
    """
    from scipy.stats import rankdata

    p, r = _finite_pairs(predicted, real)
    bad = r > threshold
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    if n_bad == 0 or n_good == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[bad].sum() - n_bad * (n_bad + 1) / 2) / (n_bad * n_good))


def ause(predicted: np.ndarray, real: np.ndarray, steps: int = 20) -> float:
    """Area under the sparsification error curve (Ilg et al., ECCV 2018), in NME units; 0 is a perfect ranking.

    Remove the faces with the largest predicted error in ``steps`` equal fractions (0 .. (steps-1)/steps);
    after each removal take the mean real error of what is left; the oracle removes by real error. The
    area between the two curves (mean over the fractions) is how much of the real error the ranking misses.
    """
    p, r = _finite_pairs(predicted, real)
    if len(r) < 2:
        return float("nan")
    by_pred, by_real = r[np.argsort(-p, kind="stable")], r[np.argsort(-r, kind="stable")]
    fracs = np.arange(steps) / steps
    keep = [max(1, int(round((1 - f) * len(r)))) for f in fracs]
    curve = np.array([by_pred[len(r) - n :].mean() for n in keep])
    oracle = np.array([by_real[len(r) - n :].mean() for n in keep])
    return float(np.mean(curve - oracle))


def reliability(predicted: np.ndarray, real: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Faces in equal-count bins of predicted error: mean predicted vs mean and median real error per bin."""
    p, r = _finite_pairs(predicted, real)
    out = []
    for chunk in np.array_split(np.argsort(p, kind="stable"), min(bins, max(len(p), 1))):
        if len(chunk):
            out.append({"predicted": float(p[chunk].mean()), "real": float(r[chunk].mean()),
                        "real_median": float(np.median(r[chunk])), "faces": int(len(chunk))})  # fmt: skip
    return out
