"""Pool quality against corrections: the curve, the count to reach a target, the orders compared."""

from __future__ import annotations

import numpy as np
import pandas as pd

from annotations.review.value import corrections_curve, corrections_to_reach, review_orders
from pipnet_core.schemes import get_scheme


def test_curve_counts_each_corrected_bad_face_once() -> None:
    errors = np.array([0.02, 0.30, 0.05, 0.12, np.nan])  # 2 good, 3 bad (NaN is bad)
    curve = corrections_curve(errors, np.array([1, 0, 3, 4, 2]), threshold=0.08)
    np.testing.assert_allclose(curve, [0.4, 0.6, 0.6, 0.8, 1.0, 1.0])
    assert corrections_to_reach(curve, 0.95) == 4
    assert corrections_to_reach(corrections_curve(errors, np.array([0, 2])), 0.95) is None


def test_worst_first_needs_exactly_the_bad_faces_and_random_needs_more() -> None:
    rng = np.random.default_rng(0)
    errors = rng.gamma(2.0, 0.03, size=400)
    bad = int((errors > 0.08).sum())
    scheme = get_scheme("300w")
    landmarks = np.repeat(scheme.meanface_array[None] * 100, 400, axis=0) + rng.normal(0, 1, (400, 68, 2))
    predicted = errors + rng.normal(0, 0.01, 400)
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(400)], "predicted_nme": predicted})
    orders = review_orders(frame, landmarks, errors, scheme, seed=1)
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(400))
    to95 = {k: corrections_to_reach(corrections_curve(errors, o), 0.95) for k, o in orders.items()}
    assert to95["worst first"] == max(0, bad - int(0.05 * 400))  # the oracle bound: 1 - share good, in faces
    assert to95["worst first"] <= to95["pipstc"] < to95["random"]
