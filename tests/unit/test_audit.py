"""The audit slice's estimate of the pool's quality, and correction deltas (annotations/review/audit.py,
corrections.py).

The truth comes from the synthetic face generator: pseudo-labels are its landmarks plus a known
error, so the real share of the pool under NME 0.08 is known exactly and the estimate can be held
against it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from annotations.review.audit import (
    audit_outcomes,
    draw_audit,
    estimate_pool_quality,
    wilson_interval,
)
from annotations.review.candidates import plan_round_review
from annotations.review.corrections import correction_deltas, correction_pairs
from annotations.review.policy import ReviewPolicy
from pipnet_core.metrics import nme
from synthetic_faces import DOMAINS, generate_batch
from tests.unit.review_store import SCHEME, add_pseudo, correct, events, face_landmarks, make_pool_store, pool_ids


@pytest.fixture(scope="module")
def pool_truth() -> tuple[np.ndarray, np.ndarray]:
    """300 generator faces: (truth (300, 68, 2), pseudo-labels (300, 68, 2)) with a known error each."""
    _, truth, _ = generate_batch(300, dataclasses.replace(DOMAINS["wild"], image_size=96), seed=21)
    rng = np.random.default_rng(21)
    d = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=1)  # the 300W normaliser
    scale = np.where(rng.random(300) < 0.7, rng.uniform(0.01, 0.06, 300), rng.uniform(0.08, 0.3, 300))
    pseudo = truth + rng.normal(size=truth.shape) * (scale * d)[:, None, None] / np.sqrt(2)
    return truth.astype(np.float32), pseudo.astype(np.float32)


def test_wilson_interval_matches_the_formula_at_known_points() -> None:
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_interval_covers_the_true_share_at_about_its_nominal_rate(pool_truth) -> None:  # type: ignore[no-untyped-def]
    truth, pseudo = pool_truth
    real = nme(pseudo, truth, SCHEME)
    ids = pool_ids(len(real))
    good = dict(zip(ids, real < 0.08, strict=True))
    share = float(np.mean(real < 0.08))
    assert 0.4 < share < 0.9  # the pool is neither all good nor all bad: the test can fail
    hits, widths = [], []
    for seed in range(400):
        drawn = draw_audit(ids, 30, seed, 1)
        lo, hi = wilson_interval(sum(good[s] for s in drawn), 30)
        hits.append(lo <= share <= hi)
        widths.append(hi - lo)
    coverage = float(np.mean(hits))
    # 95% nominal; a 30-face sample without replacement from 300 faces is slightly conservative.
    assert 0.92 <= coverage <= 0.99, coverage
    assert 0.2 < np.mean(widths) < 0.4


def test_the_store_estimate_uses_audit_faces_only_and_holds_the_truth(tmp_path: Path, pool_truth) -> None:  # type: ignore[no-untyped-def]
    truth, pseudo = pool_truth
    store = make_pool_store(tmp_path, n=300)
    ids = pool_ids(300)
    real = nme(pseudo, truth, SCHEME)
    # The model is right to doubt its worst faces: predicted NME follows the real one.
    add_pseudo(store, 1, ids, predicted_nme=real + 0.01, landmarks=pseudo)
    plan = plan_round_review(store, 1, ReviewPolicy(budget=0.2, audit_share=0.5, audit_min=20, seed=4))
    assert len(plan.audit) == 30 and len(plan.selected) == 30
    events(store, plan.sample_ids, 1, "pushed")
    where = {s: i for i, s in enumerate(ids)}
    answered = plan.sample_ids[1:]  # the first audit face is skipped
    events(store, plan.sample_ids[:1], 1, "skipped", offset_s=1)
    correct(store, answered, 1, truth[[where[s] for s in answered]])

    outcomes = audit_outcomes(store)
    assert set(outcomes["sample_id"]) == set(plan.audit)
    assert (outcomes.set_index("sample_id").loc[plan.audit[0], "status"]) == "skipped"
    est = estimate_pool_quality(outcomes, 0.08)
    assert est["n"] == 29 and est["skipped"] == 1 and est["rounds"] == [1]
    audited = np.array([real[where[s]] for s in plan.audit[1:]])
    assert est["share"] == pytest.approx(np.mean(audited < 0.08))
    share = float(np.mean(real < 0.08))
    assert est["low"] <= share <= est["high"], (est, share)
    # The faces chosen by confidence would have told another story.
    selected = np.array([real[where[s]] for s in plan.selected])
    assert np.mean(selected < 0.08) < est["low"]


def test_correction_deltas_measure_how_far_people_moved_each_landmark(tmp_path: Path) -> None:
    store = make_pool_store(tmp_path, n=20)
    ids = pool_ids(20)
    shown = face_landmarks(20)
    confidence = np.full((20, 68), 0.9, dtype=np.float32)
    confidence[:, 30] = 0.1  # the model doubts the nose tip
    store.add_labels(pd.DataFrame({"sample_id": ids, "source": "pseudo", "round": 2, "predicted_nme": 0.05,
                                   "level": "std"}), shown, landmark_confidence=confidence)  # fmt: skip
    d = np.linalg.norm(shown[:, 36] - shown[:, 45], axis=1)
    fixed = shown.copy()
    fixed[:, 30, 0] += 0.1 * d  # people move the nose tip by 0.1 inter-ocular distances
    correct(store, ids[:10], 2, fixed[:10])
    pairs = correction_pairs(store)
    assert len(pairs) == 10 and set(pairs.frame["round"]) == {2}
    np.testing.assert_allclose(pairs.errors[:, 30], 0.1, atol=1e-5)
    assert np.abs(np.delete(pairs.errors, 30, axis=1)).max() < 1e-6
    np.testing.assert_allclose(pairs.frame["nme"], 0.1 / 68, atol=1e-6)
    (delta,) = correction_deltas(pairs, SCHEME)
    assert delta["round"] == 2 and delta["faces"] == 10
    assert delta["regions"]["nose"] == pytest.approx(0.1 / 9, abs=1e-6) and delta["regions"]["jaw"] == pytest.approx(0)
    assert delta["landmarks"][30] == pytest.approx(0.1, abs=1e-5)
    first, *rest = delta["deciles"]
    assert first["decile"] == 1 and first["confidence"][0] == pytest.approx(0.1)
    assert first["delta"] > 0.05 and all(r["delta"] < 1e-6 for r in rest)
    # A face rejected after it was corrected no longer counts.
    events(store, ids[:1], 2, "rejected", offset_s=5)
    assert len(correction_pairs(store)) == 9
