"""Confidence per landmark and per face, from signals PIPNet gives for free (docs/algorithm.md sections 5.1, 5.2).

PIPNet's raw score peak is a weak confidence: the score map is trained with MSE towards a one-hot
target, can exceed 1 and can be high on occluded points. Better signals come with the model:

* ``vote_spread``: the NRM is a committee of 1 + max_len estimates per landmark; their spread
  around the merged landmark (pipnet_core.decode) grows where the face is ambiguous;
* ``coarse_agreement``: whether the STC coarse maps (cls2, cls3) put the landmark in the same place
  as the fine prediction;
* ``flip_disagreement``: the distance between the prediction on the crop and the un-mirrored
  prediction on its mirror image (flip test-time augmentation), optional, one more forward pass;
* ``score_peak``: the raw peak, kept as a weak feature.

:class:`ConfidenceModel` turns them into a predicted per-landmark error and a predicted face NME.
It is deliberately small, so that a holdout of a few dozen faces calibrates it:

1. per landmark, ``log(error)`` is a ridge least-squares fit on monotone features
   (``log vote_spread``, ``score_peak``, ``1 - coarse_agreement``, ``log flip_disagreement``), each
   weight constrained to its expected sign (a wrong-sign weight is noise and is dropped);
2. the face's raw prediction is the mean of the landmarks' predicted errors (log-normal means);
3. a monotone rescale ``log NME = a + b log raw`` (b > 0) calibrates it against the real face NMEs;
4. confidences are probabilities under the fitted log-normal residuals: a landmark's confidence is
   P(error < ``landmark_threshold``), a face's is P(NME < ``face_threshold``); both default to 0.1,
   the failure threshold of FR@0.1 (docs/algorithm.md section 2.12).

Errors are in the scheme's NME units (pipnet_core.metrics.landmark_errors).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.special import ndtr
from scipy.stats import rankdata

from pipnet_core.decode import Decoded

__all__ = ["FEATURES", "ConfidenceModel", "signals", "spearman", "unmirror"]

# Feature name -> expected sign of its weight on log(error).
FEATURES: dict[str, int] = {"vote_spread": 1, "score_peak": -1, "coarse_agreement": 1, "flip_disagreement": 1}
_EPS_SIGNAL = 1e-4  # normalised crop units: below any spread a real model shows (a 256 crop pixel is 4e-3)
_EPS_ERROR = 1e-3  # NME units: errors below 0.1% of the inter-ocular distance are all "exact"
_MIN_SIGMA = 0.05
_RIDGE = 1.0  # on standardised features: negligible with hundreds of landmarks, stabilising with few
_VERSION = 1


def unmirror(landmarks: np.ndarray, flip: Sequence[int]) -> np.ndarray:
    """Bring landmarks predicted on a mirrored crop back to the original crop.

    Args:
        landmarks: (B, N, 2) predicted on the horizontally mirrored crop, normalised crop units.
        flip: The scheme's flip table (``flip[i]`` lands at slot i after mirroring).

    Returns:
        (B, N, 2): landmark k is the mirrored prediction of slot ``flip[k]`` with ``x -> 1 - x``.
    """
    perm = np.asarray(flip, dtype=np.int64)
    out = np.asarray(landmarks)[:, perm].copy()
    out[..., 0] = 1.0 - out[..., 0]
    return out


def signals(
    decoded: Decoded, flip_decoded: Decoded | None = None, flip: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Per-landmark confidence signals of a decoded batch.

    Args:
        decoded: Decode of the crops.
        flip_decoded: Optional decode of the horizontally mirrored crops, as the model returned it
            (still mirrored: this function un-mirrors it with ``flip``).
        flip: The scheme's flip table; required with ``flip_decoded``.

    Returns:
        ``{"score_peak", "vote_spread"}``, plus ``"coarse_agreement"`` when the decode had coarse maps
        and ``"flip_disagreement"`` (distance to the un-mirrored prediction, normalised crop units)
        when ``flip_decoded`` is given; each (B, N).
    """
    out = {"score_peak": np.asarray(decoded.score_peak), "vote_spread": np.asarray(decoded.vote_spread)}
    if decoded.coarse_agreement is not None:
        out["coarse_agreement"] = np.asarray(decoded.coarse_agreement)
    if flip_decoded is not None:
        if flip is None:
            raise ValueError("flip_decoded needs the scheme's flip table to un-mirror it (scheme.flip)")
        back = unmirror(flip_decoded.landmarks, flip)
        out["flip_disagreement"] = np.linalg.norm(np.asarray(decoded.landmarks) - back, axis=-1)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally long arrays (pairs with a non-finite value dropped).

    Returns:
        The correlation, or NaN when fewer than 2 pairs remain or one side is constant.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: arrays differ in size ({x.size} vs {y.size})")
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    rx, ry = rankdata(x[keep]), rankdata(y[keep])
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _feature(name: str, values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if name in ("vote_spread", "flip_disagreement"):
        return np.log(np.maximum(v, 0.0) + _EPS_SIGNAL)
    if name == "coarse_agreement":
        return 1.0 - v
    if name == "score_peak":
        return v
    raise ValueError(f"unknown confidence signal {name!r}; known: {sorted(FEATURES)}")


def _design(
    signals: dict[str, np.ndarray], real_errors: np.ndarray, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features (B, N, F), errors (B, N), landmarks usable for fitting (B, N) and faces with any (B,)."""
    if not names:
        raise ValueError(f"no usable signals: need at least one of {sorted(FEATURES)}, got {sorted(signals)}")
    err = np.asarray(real_errors, dtype=np.float64)
    if err.ndim != 2:
        raise ValueError(f"real_errors must have shape (B, N), got {err.shape}")
    cols = []
    for name in names:
        if name not in signals:
            raise ValueError(f"signal {name!r} asked for but not given (have {sorted(signals)})")
        if np.shape(signals[name]) != err.shape:
            raise ValueError(f"signal {name!r} has shape {np.shape(signals[name])}, errors {err.shape}")
        cols.append(_feature(name, signals[name]))
    x_all = np.stack(cols, axis=-1)
    rows = np.isfinite(err) & np.isfinite(x_all).all(axis=-1)
    faces = rows.any(axis=1)
    if rows.sum() < 10 or faces.sum() < 2:
        raise ValueError(
            f"need at least 2 faces and 10 landmarks with known error to calibrate, got {int(faces.sum())} "
            f"faces and {int(rows.sum())} landmarks"
        )
    return x_all, err, rows, faces


def _signed_ridge(xs: np.ndarray, t: np.ndarray, signs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Ridge weights of standardised features whose sign agrees with ``signs``.

    A weight of the wrong sign is dropped, one at a time (the most wrong first), and the rest refitted:
    every signal must push the predicted error the way it is known to. ``weights`` (R,) weight each
    row's squared residual (mean 1, so the ridge keeps its strength relative to the data).
    """
    active = np.ones(len(signs), dtype=bool)
    w = np.zeros(len(signs))
    r = np.ones(len(t)) if weights is None else weights
    centred = t - np.average(t, weights=r)
    for _ in range(len(signs)):
        w = np.zeros(len(signs))
        if active.any():
            a = xs[:, active]
            ar = a * r[:, None]
            w[active] = np.linalg.solve(ar.T @ a + _RIDGE * np.eye(a.shape[1]), ar.T @ centred)
        wrong = active & (w * signs < 0)
        if not wrong.any():
            break
        active[np.argmin(np.where(wrong, w * signs, np.inf))] = False
    return np.where(active, w, 0.0)


def _face_weights(weights: np.ndarray | None, num_faces: int) -> np.ndarray:
    """(B,) face weights, checked; ones when None."""
    if weights is None:
        return np.ones(num_faces)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (num_faces,):
        raise ValueError(f"weights must have shape (B,) = ({num_faces},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w


@dataclass
class ConfidenceModel:
    """Signals -> predicted per-landmark error, face NME and confidences; see the module docstring.

    Attributes:
        features: Signal names used, in order.
        weights: Weight of each standardised feature on log(error).
        mean: Feature means used for standardising.
        scale: Feature standard deviations used for standardising.
        intercept: Bias of log(error).
        landmark_sigma: Residual standard deviation of log(error).
        rescale_a: Face calibration ``log NME = a + b log raw``.
        rescale_b: Its slope (> 0, so the ranking of faces is kept).
        face_sigma: Residual standard deviation of log face NME after calibration.
        landmark_threshold: A landmark's confidence is P(error < this), NME units.
        face_threshold: A face's confidence is P(NME < this).
        calibrated: False for :meth:`default`, True after :meth:`fit`.
        stats: Fit diagnostics (counts, Spearman of predicted vs real on the fit data).
    """

    features: tuple[str, ...]
    weights: tuple[float, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    intercept: float
    landmark_sigma: float
    rescale_a: float = 0.0
    rescale_b: float = 1.0
    face_sigma: float = 0.5
    landmark_threshold: float = 0.1
    face_threshold: float = 0.1
    calibrated: bool = False
    stats: dict[str, float] = field(default_factory=dict)

    @classmethod
    def default(cls, norm_distance: float = 0.5) -> ConfidenceModel:
        """An uncalibrated model usable before any holdout exists.

        It assumes a landmark's error is about its vote spread, converted to NME units.

        Args:
            norm_distance: The NME normaliser in normalised crop units (inter-ocular distance on the
                scheme's mean face, about 0.54 for 300W and 0.50 for WFLW; 1.0 for box schemes).
        """
        return cls(
            features=("vote_spread",),
            weights=(1.0,),
            mean=(0.0,),
            scale=(1.0,),
            intercept=-math.log(norm_distance),
            landmark_sigma=0.75,  # wide: an uncalibrated guess should not claim certainty
            face_sigma=0.5,
        )

    # -- prediction -----------------------------------------------------------------------------

    def _log_error(self, sig: dict[str, np.ndarray]) -> np.ndarray:
        missing = [f for f in self.features if f not in sig]
        if missing:
            raise ValueError(
                f"confidence model needs signal(s) {missing}; got {sorted(sig)}. coarse_agreement needs the STC "
                "coarse maps in decode(), flip_disagreement a decode of the mirrored crops"
            )
        z = np.zeros(np.shape(sig[self.features[0]]), dtype=np.float64)
        for name, w, m, s in zip(self.features, self.weights, self.mean, self.scale, strict=True):
            z = z + w * (_feature(name, sig[name]) - m) / s
        return self.intercept + z

    def predict_landmark_errors(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """(B, N) expected per-landmark error, NME units."""
        return np.exp(self._log_error(signals) + self.landmark_sigma**2 / 2)

    def predict_face_nme(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """(B,) predicted face NME."""
        raw = self.predict_landmark_errors(signals).mean(axis=1)
        return np.exp(self.rescale_a + self.rescale_b * np.log(raw))

    def landmark_confidence(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """(B, N) in [0, 1]: probability that each landmark's error is below ``landmark_threshold``."""
        z = (math.log(self.landmark_threshold) - self._log_error(signals)) / self.landmark_sigma
        return ndtr(z)

    def face_confidence(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """(B,) in [0, 1]: probability that the face's NME is below ``face_threshold``."""
        z = (math.log(self.face_threshold) - np.log(self.predict_face_nme(signals))) / self.face_sigma
        return ndtr(z)

    def ranking(self, signals: dict[str, np.ndarray], real_errors: np.ndarray) -> dict[str, float]:
        """How well the predictions rank real errors (Spearman), for the round report.

        Args:
            signals: (B, N) signals of faces with ground truth (the holdout).
            real_errors: (B, N) real per-landmark errors, NME units (NaN = missing).
        """
        err = np.asarray(real_errors, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # faces with no known error: NaN
            real_face = np.nanmean(np.where(np.isfinite(err), err, np.nan), axis=1)
        return {
            "spearman_face": spearman(self.predict_face_nme(signals), real_face),
            "spearman_landmark": spearman(self.predict_landmark_errors(signals), err),
        }

    # -- fitting ----------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        signals: dict[str, np.ndarray],
        real_errors: np.ndarray,
        features: Sequence[str] | None = None,
        landmark_threshold: float = 0.1,
        face_threshold: float = 0.1,
        weights: np.ndarray | None = None,
    ) -> ConfidenceModel:
        """Calibrate on faces with known errors (the holdout, or corrected pseudo-labels).

        Args:
            signals: Signal name -> (B, N), as from :func:`signals`.
            real_errors: (B, N) real per-landmark errors in NME units; NaN rows are left out.
            features: Signals to use; default every known signal present.
            landmark_threshold: See the class attributes.
            face_threshold: See the class attributes.
            weights: (B,) non-negative weight of each face, e.g. inverse inclusion probabilities of
                reviewed pool faces, so that a sample chosen by confidence fits like the pool it came
                from (flows/calibration.py). Every landmark of a face carries its weight, in the
                landmark fit, the face-level rescale and the residual widths. None: all equal.

        Raises:
            ValueError: shapes disagree, weights are negative or not finite, or fewer than 2 faces /
                10 landmarks with known error.
        """
        names = tuple(f for f in FEATURES if f in signals) if features is None else tuple(features)
        x_all, err, rows, faces = _design(signals, real_errors, names)
        face_w = _face_weights(weights, err.shape[0])
        faces &= face_w > 0
        rows &= faces[:, None]
        x, t = x_all[rows], np.log(err[rows] + _EPS_ERROR)
        r = np.broadcast_to(face_w[:, None], err.shape)[rows]
        r = r / r.mean()
        mean = np.average(x, axis=0, weights=r)
        std = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=r))
        scale = np.where(std > 1e-12, std, 1.0)
        xs = (x - mean) / scale
        w = _signed_ridge(xs, t, np.array([FEATURES[n] for n in names]), r)
        intercept = float(np.average(t, weights=r))  # features are centred, so the bias is the mean target
        resid = t - intercept - xs @ w
        model = cls(
            features=names,
            weights=tuple(float(v) for v in w),
            mean=tuple(float(v) for v in mean),
            scale=tuple(float(v) for v in scale),
            intercept=intercept,
            landmark_sigma=float(max(np.sqrt(np.average(resid**2, weights=r)), _MIN_SIGMA)),
            landmark_threshold=landmark_threshold,
            face_threshold=face_threshold,
            calibrated=True,
        )
        model._fit_face_level({n: np.asarray(signals[n]) for n in names}, np.where(rows, err, np.nan), faces, face_w)
        if weights is not None:
            model.stats["weighted"] = 1.0
        return model

    def _fit_face_level(
        self, signals: dict[str, np.ndarray], err: np.ndarray, faces: np.ndarray, weights: np.ndarray
    ) -> None:
        """Calibrate the mean of predicted landmark errors against the real face NME (log-linear, weighted)."""
        sig_faces = {n: v[faces] for n, v in signals.items()}
        with np.errstate(invalid="ignore"):
            real_face = np.nanmean(err[faces], axis=1)
        w = weights[faces] / weights[faces].mean()
        log_raw = np.log(self.predict_landmark_errors(sig_faces).mean(axis=1))
        log_real = np.log(real_face + _EPS_ERROR)
        raw_mean, real_mean = np.average(log_raw, weights=w), np.average(log_real, weights=w)
        raw_var = np.average((log_raw - raw_mean) ** 2, weights=w)
        b = 1.0
        if faces.sum() >= 3 and raw_var > 1e-18:
            b = float(np.average((log_raw - raw_mean) * (log_real - real_mean), weights=w) / raw_var)
            b = max(b, 0.05)  # monotone increasing: keep the ranking even when the fit is poor
        a = float(real_mean - b * raw_mean)
        self.rescale_a, self.rescale_b = a, b
        self.face_sigma = float(max(np.sqrt(np.average((log_real - a - b * log_raw) ** 2, weights=w)), _MIN_SIGMA))
        self.stats = {
            "num_faces": float(faces.sum()),
            "num_landmarks": float(np.isfinite(err).sum()),
            **self.ranking(signals, err),
        }

    # -- persistence ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored with the round."""
        d = asdict(self)
        d["features"] = list(self.features)
        for key in ("weights", "mean", "scale"):
            d[key] = [float(v) for v in d[key]]
        d["stats"] = {k: (None if not math.isfinite(v) else float(v)) for k, v in self.stats.items()}
        d["version"] = _VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfidenceModel:
        """Read :meth:`to_dict` output back.

        Raises:
            ValueError: a missing field, an unknown signal, or an unsupported version.
        """
        if d.get("version", _VERSION) != _VERSION:
            raise ValueError(f"confidence model version {d.get('version')} is not supported (expected {_VERSION})")
        needed = ("features", "weights", "mean", "scale", "intercept", "landmark_sigma")
        missing = [k for k in needed if k not in d]
        if missing:
            raise ValueError(f"confidence model dict is missing {missing}")
        unknown = [f for f in d["features"] if f not in FEATURES]
        if unknown:
            raise ValueError(f"confidence model uses unknown signal(s) {unknown}; known: {sorted(FEATURES)}")
        lengths = {len(d[k]) for k in ("features", "weights", "mean", "scale")}
        if len(lengths) != 1:
            raise ValueError("confidence model dict: features, weights, mean and scale must have the same length")
        return cls(
            features=tuple(d["features"]),
            weights=tuple(float(v) for v in d["weights"]),
            mean=tuple(float(v) for v in d["mean"]),
            scale=tuple(float(v) for v in d["scale"]),
            intercept=float(d["intercept"]),
            landmark_sigma=float(d["landmark_sigma"]),
            rescale_a=float(d.get("rescale_a", 0.0)),
            rescale_b=float(d.get("rescale_b", 1.0)),
            face_sigma=float(d.get("face_sigma", 0.5)),
            landmark_threshold=float(d.get("landmark_threshold", 0.1)),
            face_threshold=float(d.get("face_threshold", 0.1)),
            calibrated=bool(d.get("calibrated", False)),
            stats={k: (float("nan") if v is None else float(v)) for k, v in (d.get("stats") or {}).items()},
        )
