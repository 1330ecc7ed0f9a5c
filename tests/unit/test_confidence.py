"""Confidence signals and the calibrated confidence model (docs/algorithm.md section 5.2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipnet_core.confidence import ConfidenceModel, signals, spearman, unmirror
from pipnet_core.decode import decode
from pipnet_core.meanface import build_neighbour_table
from pipnet_core.schemes import get_scheme
from pipnet_core.targets import build_targets, encode_dense


def _synthetic(rng: np.random.Generator, faces: int = 80, n: int = 68) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Signals and errors where the error is a noisy monotone function of the vote spread."""
    difficulty = rng.lognormal(0.0, 0.6, size=(faces, 1))  # some faces are much harder than others
    spread = 0.01 * difficulty * rng.lognormal(0.0, 0.5, size=(faces, n))
    errors = 2.0 * spread * rng.lognormal(0.0, 0.4, size=(faces, n))
    sig = {
        "vote_spread": spread,
        "score_peak": rng.uniform(0.3, 1.2, size=(faces, n)),  # uninformative here
        "coarse_agreement": rng.uniform(0.0, 1.0, size=(faces, n)),  # uninformative here
    }
    return sig, errors


def test_fitted_model_ranks_face_nme() -> None:
    rng = np.random.default_rng(0)
    train_sig, train_err = _synthetic(rng)
    model = ConfidenceModel.fit(train_sig, train_err)
    test_sig, test_err = _synthetic(rng)  # fresh faces: no credit for memorising
    pred = model.predict_face_nme(test_sig)
    real = test_err.mean(axis=1)
    assert pred.shape == (80,)
    assert spearman(pred, real) > 0.8
    # calibrated in scale too, not only in rank
    assert np.median(pred / real) == pytest.approx(1.0, rel=0.25)
    assert model.weights[0] > 0  # vote spread raises the predicted error
    assert model.calibrated and model.stats["spearman_face"] > 0.8
    report = model.ranking(test_sig, test_err)
    assert report["spearman_face"] > 0.8 and report["spearman_landmark"] > 0.5


def test_confidences_are_probabilities_and_monotone() -> None:
    rng = np.random.default_rng(1)
    sig, err = _synthetic(rng)
    model = ConfidenceModel.fit(sig, err, landmark_threshold=0.03, face_threshold=0.03)
    lc = model.landmark_confidence(sig)
    fc = model.face_confidence(sig)
    assert lc.shape == (80, 68) and fc.shape == (80,)
    assert ((lc >= 0) & (lc <= 1)).all() and ((fc >= 0) & (fc <= 1)).all()
    assert lc.std() > 0.05 and fc.std() > 0.05  # the thresholds sit inside the error range here
    # more spread -> less confident, everything else equal
    more = dict(sig, vote_spread=sig["vote_spread"] * 3)
    assert (model.landmark_confidence(more) < lc).all()
    assert (model.face_confidence(more) <= fc).all()  # probabilities may saturate at 0 or 1
    assert (model.predict_face_nme(more) > model.predict_face_nme(sig)).all()
    assert spearman(fc, -err.mean(axis=1)) > 0.8


def test_wrong_sign_weights_are_dropped() -> None:
    rng = np.random.default_rng(2)
    sig, err = _synthetic(rng)
    # a score peak that *rises* with the error would get a positive weight; its expected sign is negative
    sig["score_peak"] = np.log(err) + rng.normal(0, 0.1, size=err.shape)
    model = ConfidenceModel.fit(sig, err)
    w = dict(zip(model.features, model.weights, strict=True))
    assert w["score_peak"] == 0.0
    assert w["vote_spread"] > 0


def test_round_trip_through_json() -> None:
    rng = np.random.default_rng(3)
    sig, err = _synthetic(rng, faces=20)
    model = ConfidenceModel.fit(sig, err)
    again = ConfidenceModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    np.testing.assert_allclose(again.predict_face_nme(sig), model.predict_face_nme(sig))
    np.testing.assert_allclose(again.landmark_confidence(sig), model.landmark_confidence(sig))
    with pytest.raises(ValueError, match="unknown signal"):
        ConfidenceModel.from_dict(dict(model.to_dict(), features=["magic"], weights=[1.0], mean=[0.0], scale=[1.0]))
    with pytest.raises(ValueError, match="missing"):
        ConfidenceModel.from_dict({"features": ["vote_spread"]})


def test_default_model_works_before_any_fit() -> None:
    model = ConfidenceModel.default(norm_distance=0.54)
    spread = np.array([[0.001, 0.01, 0.05]])
    sig = {"vote_spread": spread, "score_peak": np.ones((1, 3))}
    err = model.predict_landmark_errors(sig)
    assert (np.diff(err[0]) > 0).all()
    assert 0.5 < err[0, 1] / (0.01 / 0.54) < 2  # about the spread in NME units
    lc = model.landmark_confidence(sig)
    assert ((lc > 0) & (lc < 1)).all() and (np.diff(lc[0]) < 0).all()
    assert model.face_confidence(sig).shape == (1,)
    assert not model.calibrated
    assert ConfidenceModel.from_dict(model.to_dict()) == model


def test_fit_needs_data_and_signals() -> None:
    sig = {"vote_spread": np.full((1, 5), 0.01)}
    with pytest.raises(ValueError, match="at least 2 faces"):
        ConfidenceModel.fit(sig, np.full((1, 5), 0.02))
    model = ConfidenceModel.fit({"vote_spread": np.full((4, 5), 0.01)}, np.full((4, 5), 0.02))
    assert np.isfinite(model.predict_face_nme({"vote_spread": np.full((2, 5), 0.01)})).all()
    with pytest.raises(ValueError, match="coarse_agreement"):
        ConfidenceModel.fit(sig, np.full((1, 5), 0.02), features=["coarse_agreement"])
    full = ConfidenceModel.fit(*_synthetic(np.random.default_rng(4), faces=10))
    with pytest.raises(ValueError, match="coarse maps"):
        full.predict_face_nme({"vote_spread": np.ones((1, 68)), "score_peak": np.ones((1, 68))})


def test_fit_ignores_missing_errors() -> None:
    rng = np.random.default_rng(5)
    sig, err = _synthetic(rng, faces=30)
    err[0] = np.nan  # a face with no ground truth
    err[1, :10] = np.nan
    model = ConfidenceModel.fit(sig, err)
    assert model.stats["num_faces"] == 29
    assert model.stats["num_landmarks"] == 29 * 68 - 10
    assert np.isfinite(model.predict_face_nme(sig)).all()


def test_spearman() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(4), np.arange(4)))
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(0.9486833, abs=1e-6)


def test_signals_from_decode_with_flip() -> None:
    scheme = get_scheme("300w")
    table = build_neighbour_table(scheme.meanface_array)
    gt = scheme.meanface_array[None] + np.array([0.03, -0.02])
    mirrored = unmirror(gt, scheme.flip)  # mirroring is its own inverse with an involutive table
    np.testing.assert_allclose(unmirror(mirrored, scheme.flip), gt)

    def run(lm: np.ndarray):
        maps = encode_dense(lm, 8, table.nb, dtype=np.float64)
        t = build_targets(lm, ["std"], table.nb, 8, dtype=np.float64)
        return decode(maps["cls"], maps["x"], maps["y"], maps["nb_x"], maps["nb_y"], table, cls2=t.cls2, cls3=t.cls3)

    dec, dec_flip = run(gt), run(mirrored)
    sig = signals(dec, dec_flip, scheme.flip)
    assert set(sig) == {"score_peak", "vote_spread", "coarse_agreement", "flip_disagreement"}
    np.testing.assert_allclose(sig["flip_disagreement"], 0.0, atol=1e-9)
    np.testing.assert_allclose(sig["score_peak"], 1.0)
    # the mirrored prediction of the left eye corner is off by 0.05: only that landmark disagrees
    wrong = mirrored.copy()
    wrong[0, scheme.flip[36]] += [0.05, 0.0]
    sig2 = signals(dec, run(wrong), scheme.flip)
    assert sig2["flip_disagreement"][0, 36] == pytest.approx(0.05, abs=1e-4)
    assert np.delete(sig2["flip_disagreement"][0], 36).max() < 0.01
    assert set(signals(dec)) == {"score_peak", "vote_spread", "coarse_agreement"}
    with pytest.raises(ValueError, match="flip table"):
        signals(dec, dec_flip)


def test_equal_weights_fit_like_no_weights_and_a_zero_weight_drops_the_face() -> None:
    rng = np.random.default_rng(4)
    sig, err = _synthetic(rng, faces=40)
    plain = ConfidenceModel.fit(sig, err)
    ones = ConfidenceModel.fit(sig, err, weights=np.full(40, 3.0))  # only relative weights matter
    for name in ("weights", "mean", "scale"):
        np.testing.assert_allclose(getattr(ones, name), getattr(plain, name), rtol=1e-9, atol=1e-12)
    for name in ("intercept", "landmark_sigma", "rescale_a", "rescale_b", "face_sigma"):
        assert getattr(ones, name) == pytest.approx(getattr(plain, name), rel=1e-9)
    w = np.ones(40)
    w[:5] = 0.0
    dropped = ConfidenceModel.fit(sig, err, weights=w)
    without = ConfidenceModel.fit({n: v[5:] for n, v in sig.items()}, err[5:])
    np.testing.assert_allclose(dropped.weights, without.weights, rtol=1e-9, atol=1e-12)
    assert dropped.rescale_a == pytest.approx(without.rescale_a, rel=1e-9)
    with pytest.raises(ValueError, match="weights must"):
        ConfidenceModel.fit(sig, err, weights=-w)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        ConfidenceModel.fit(sig, err, weights=np.ones(3))


def test_inverse_probability_weights_undo_a_sample_chosen_by_confidence() -> None:
    """Reviewed pool faces: a random audit (p = 0.05) plus the worst faces; the worst fit differently."""
    rng = np.random.default_rng(5)
    sig, err = _synthetic(rng, faces=600)
    spread = sig["vote_spread"].mean(axis=1)
    worst = spread >= np.quantile(spread, 0.9)
    err = err * np.where(worst, 4.0, 1.0)[:, None]  # the model's hardest faces are much worse than it shows
    audit = rng.choice(np.flatnonzero(~worst), 30, replace=False)
    chosen = np.concatenate([audit, np.flatnonzero(worst)])
    weights = np.concatenate([np.full(30, 1 / 0.05), np.ones(int(worst.sum()))])
    sample = {n: v[chosen] for n, v in sig.items()}
    unweighted = ConfidenceModel.fit(sample, err[chosen])
    weighted = ConfidenceModel.fit(sample, err[chosen], weights=weights)
    assert weighted.stats["weighted"] == 1.0
    typical = ~worst  # the faces the pool is mostly made of
    real = err[typical].mean(axis=1)

    def bias(model: ConfidenceModel) -> float:
        return abs(float(np.median(np.log(model.predict_face_nme({n: v[typical] for n, v in sig.items()}) / real))))

    assert bias(weighted) < 0.15 < bias(unweighted)
