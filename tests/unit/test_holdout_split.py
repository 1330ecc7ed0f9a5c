"""The holdout's calibration and evaluation parts (issue 11 item 14)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flows.evaluation import calibrate_confidence, calibration_half, holdout_split_record
from pipnet_core.schemes import get_scheme


def test_the_parts_are_deterministic_disjoint_and_recorded() -> None:
    ids = pd.Series([f"face-{i}" for i in range(40)])
    calib = calibration_half(ids)
    assert 10 < calib.sum() < 30
    np.testing.assert_array_equal(calib, calibration_half(ids[::-1].reset_index(drop=True))[::-1])  # order-free
    record = holdout_split_record(ids, calib)
    assert set(record["calibration"]) | set(record["evaluation"]) == set(ids)
    assert not set(record["calibration"]) & set(record["evaluation"])


def test_a_holdout_too_small_to_split_is_evaluated_whole() -> None:
    assert not calibration_half(pd.Series(["a", "b", "c"])).any()


def test_the_confidence_model_sees_only_the_calibration_faces() -> None:
    rng = np.random.default_rng(0)
    n, m = 68, 12
    signals = {"vote_spread": rng.random((m, n)), "score_peak": rng.random((m, n))}
    errors = rng.random((m, n)) * 0.1
    calib = np.arange(m) < 6
    fitted = calibrate_confidence(signals, errors, calib, get_scheme("300w"))
    spoiled = {k: np.where(calib[:, None], v, 1e6) for k, v in signals.items()}  # evaluation faces changed
    again = calibrate_confidence(spoiled, np.where(calib[:, None], errors, 5.0), calib, get_scheme("300w"))
    assert fitted.to_dict() == again.to_dict()
