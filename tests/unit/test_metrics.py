"""NME, CED, FR and AUC against hand-computed values (docs/algorithm.md section 2.12)."""

from __future__ import annotations

import numpy as np
import pytest

from pipnet_core.metrics import ced, fr_auc, landmark_errors, nme, norm_distance, region_nme
from pipnet_core.schemes import get_scheme, scheme_from_dict

TINY = scheme_from_dict(
    {"name": "tiny", "num_landmarks": 4, "norm": [0, 1], "regions": {"eyes": [0, 1], "mouth": [2, 3]}}
)
BOX = scheme_from_dict({"name": "tinybox", "num_landmarks": 3, "norm": "box"})


def test_nme_by_hand() -> None:
    gt = np.array([[[0.0, 0.0], [4.0, 0.0], [2.0, 2.0], [2.0, 3.0]]])  # inter-ocular distance 4
    pred = gt.copy()
    pred[0, 0] += [3.0, 4.0]  # error 5
    pred[0, 2] += [0.0, -2.0]  # error 2
    err = landmark_errors(pred, gt, TINY)
    np.testing.assert_allclose(err, [[5 / 4, 0.0, 2 / 4, 0.0]])
    np.testing.assert_allclose(nme(pred, gt, TINY), [(5 + 2) / 4 / 4])
    # pixels or normalised units alike: scaling both changes nothing
    np.testing.assert_allclose(nme(pred / 100, gt / 100, TINY), nme(pred, gt, TINY))
    assert norm_distance(gt, TINY)[0] == pytest.approx(4.0)


def test_nme_ignores_missing_landmarks_and_flags_missing_norm() -> None:
    gt = np.array([[[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [np.nan, np.nan]], [[np.nan, np.nan], [2, 0], [1, 1], [1, 2]]])
    pred = np.nan_to_num(gt) + np.array([0.0, 1.0])  # every landmark off by 1
    out = nme(pred, gt, TINY)
    assert out[0] == pytest.approx(0.5)  # 3 present landmarks, each 1/2
    assert np.isnan(out[1])  # landmark 0 (a norm landmark) is missing: d unknown


def test_box_normalisation() -> None:
    gt = np.zeros((2, 3, 2))
    pred = gt + np.array([0.03, 0.04])  # error 0.05 everywhere
    np.testing.assert_allclose(nme(pred, gt, BOX), [0.05, 0.05])  # d = 1 in the normalised crop
    np.testing.assert_allclose(nme(pred * 200, gt, BOX, box_size=np.array([200.0, 100.0])), [0.05, 0.1])
    with pytest.raises(ValueError, match="box_size"):
        nme(pred, gt, BOX, box_size=np.array([1.0]))


def test_builtin_norm_indices() -> None:
    for name, pair in (("300w", (36, 45)), ("wflw", (60, 72)), ("cofw", (8, 9))):
        scheme = get_scheme(name)
        gt = np.zeros((1, scheme.num_landmarks, 2))
        gt[0, pair[1]] = [0.5, 0.0]
        pred = gt + [0.0, 0.1]
        assert nme(pred, gt, scheme)[0] == pytest.approx(0.2)


def test_region_nme() -> None:
    gt = np.array([[[0.0, 0.0], [4.0, 0.0], [2.0, 2.0], [2.0, 3.0]]] * 2)
    pred = gt.copy()
    pred[0, 2] += [4.0, 0.0]  # mouth error 1.0 (normalised) in face 0
    pred[1, 0] += [0.0, 2.0]  # eye error 0.5 in face 1
    out = region_nme(pred, gt, TINY)
    assert out == pytest.approx({"eyes": (0 + 0.25) / 2, "mouth": (0.5 + 0) / 2})


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="4 landmarks"):
        nme(np.zeros((1, 5, 2)), np.zeros((1, 5, 2)), TINY)
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        nme(np.zeros((1, 4, 2)), np.zeros((1, 4, 3)), TINY)


def test_ced_curve() -> None:
    xs, ys = ced(np.array([0.01, 0.02, 0.02, 0.5, np.nan]), threshold=0.1, step=0.01)
    np.testing.assert_allclose(xs, np.arange(11) / 100)
    assert xs[-1] == 0.1
    np.testing.assert_allclose(ys[:4], [0.0, 0.25, 0.75, 0.75])
    assert ys[-1] == 0.75
    assert len(ced(np.array([0.05]))[0]) == 1001  # 0 : 1e-4 : 0.1


@pytest.mark.parametrize(
    ("value", "fr", "auc"),
    [(0.0, 0.0, 1.0), (0.05, 0.0, 0.5), (0.1, 0.0, 0.0), (0.2, 1.0, 0.0), (0.025, 0.0, 0.75)],
)
def test_fr_auc_on_known_ceds(value: float, fr: float, auc: float) -> None:
    got_fr, got_auc = fr_auc(np.full(50, value))
    assert got_fr == pytest.approx(fr)
    # Simpson weights a grid point by up to 4/3 of a step: a jump in the CED moves the area by <= 1.4e-3
    assert got_auc == pytest.approx(auc, abs=1.4e-3)


def test_fr_auc_mixed() -> None:
    nmes = np.array([0.0, 0.0, 0.05, 0.2])  # CED: 0.5 until 0.05, then 0.75
    fr, auc = fr_auc(nmes)
    assert fr == pytest.approx(0.25)
    assert auc == pytest.approx(0.5 * 0.5 + 0.75 * 0.5, abs=1.4e-3)


def test_ced_refuses_empty() -> None:
    with pytest.raises(ValueError, match="no finite"):
        ced(np.array([np.nan]))
    with pytest.raises(ValueError, match="step"):
        ced(np.array([0.1]), step=0)


def test_failure_auroc_is_one_for_a_perfect_ranking_and_half_for_noise() -> None:
    from pipnet_core.metrics import failure_auroc

    real = np.array([0.02, 0.03, 0.05, 0.09, 0.2, 0.4])
    assert failure_auroc(real, real) == 1.0
    assert failure_auroc(-real, real) == 0.0
    assert failure_auroc(np.ones(6), real) == 0.5  # all tied
    assert np.isnan(failure_auroc(real, np.full(6, 0.01)))  # no failures
    rng = np.random.default_rng(0)
    r = rng.gamma(2, 0.04, 4000)
    assert abs(failure_auroc(rng.random(4000), r) - 0.5) < 0.03


def test_ause_is_zero_for_the_oracle_and_grows_with_a_worse_ranking() -> None:
    from pipnet_core.metrics import ause, reliability

    rng = np.random.default_rng(1)
    real = rng.gamma(2, 0.03, 500)
    assert ause(real, real) == 0.0
    noisy = ause(real + rng.normal(0, 0.02, 500), real)
    assert 0 < noisy < ause(rng.random(500), real)
    bins = reliability(real * 2, real, bins=5)
    assert [b["faces"] for b in bins] == [100] * 5
    np.testing.assert_allclose([b["predicted"] for b in bins], [2 * b["real"] for b in bins])
