"""Thresholds of the confidence schedule from reviewed faces, and where they go (flows/calibration.py).

The refit itself needs trained models: tests/flows/test_stc_flows.py and
tests/integration/test_review_rounds_labelstudio.py run it in real rounds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotations.store import Store
from flows.calibration import CALIBRATION_FILE, choose_thresholds, recalibrate_round, round_policy
from flows.config import STCConfig
from flows.stc import resolve_config
from pipnet_core.schemes import get_scheme


def test_each_threshold_is_the_highest_cut_under_the_gross_error_rate() -> None:
    predicted = np.linspace(0.01, 0.2, 100)
    real = predicted.copy()  # a perfectly calibrated model
    t = choose_thresholds(predicted, real, np.ones(100), gross_nme=0.1, max_gross_rate=0.05)
    # std: gross above 0.1 real NME; 47 good faces, then 2 gross ones keep the rate at 2/49 <= 5%.
    assert t["std_below"] == pytest.approx(predicted[48]) and t["std_below"] > predicted[48]
    assert (predicted < t["std_below"]).sum() == 49
    # cls2 and cls3 tolerate 0.2 and 0.3: no face is gross, the cut sits just above the highest one.
    assert t["cls2_below"] == t["cls3_below"] == pytest.approx(0.2) and t["cls2_below"] > 0.2


def test_weights_count_and_the_thresholds_stay_ordered() -> None:
    rng = np.random.default_rng(0)
    predicted = rng.uniform(0.02, 0.3, 200)
    real = predicted * rng.lognormal(0.0, 0.5, 200)
    plain = choose_thresholds(predicted, real, np.ones(200), 0.1, 0.05)
    heavy = np.where(real > 0.1, 10.0, 1.0)  # gross faces that stand for many pool faces
    weighted = choose_thresholds(predicted, real, heavy, 0.1, 0.05)
    assert weighted["std_below"] < plain["std_below"]
    for t in (plain, weighted):
        assert 0 < t["std_below"] <= t["cls2_below"] <= t["cls3_below"]
    # Everything gross: nothing is trusted beyond the best face seen.
    worst = choose_thresholds(np.array([0.2, 0.3]), np.array([0.5, 0.6]), np.ones(2), 0.1, 0.05)
    assert worst == {"std_below": 0.2, "cls2_below": 0.2, "cls3_below": 0.2}
    with pytest.raises(ValueError, match="no reviewed face"):
        choose_thresholds(np.array([np.nan]), np.array([0.1]), np.ones(1), 0.1, 0.05)


def test_a_rounds_thresholds_route_its_pseudo_labels_and_enter_the_next_rounds_config(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    store = Store.create(url, get_scheme("300w"))
    cfg = STCConfig.tiny(schedule="confidence")
    chosen = {"std_below": 0.031, "cls2_below": 0.062, "cls3_below": 0.2}
    store.write_round_json(1, CALIBRATION_FILE, {"round": 1, "recalibrated": True, "thresholds": chosen})
    predicted = np.array([0.03, 0.04, 0.1, 0.17])
    assert round_policy(store, 1, cfg).levels(2, predicted).tolist() == ["std", "cls2", "cls3", "cls3"]
    assert cfg.policy().levels(2, predicted).tolist() == ["std", "std", "cls3", "review"]  # the defaults
    assert resolve_config(url, 1, cfg.to_dict())[0].std_below == cfg.std_below  # round 0 chose nothing
    resolved, _ = resolve_config(url, 2, cfg.to_dict())
    recorded = store.read_round_json(2, "config.json")
    assert {n: recorded[n] for n in chosen} == chosen and resolved.std_below == 0.031
    fixed = cfg.replace(thresholds_from_reviews=False)
    assert resolve_config(url, 3, fixed.to_dict())[0].std_below == cfg.std_below
    assert round_policy(store, 1, fixed).levels(2, predicted).tolist() == ["std", "std", "cls3", "review"]


def test_without_reviewed_faces_nothing_changes_and_that_is_recorded(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    Store.create(url, get_scheme("300w"))
    summary = recalibrate_round(url, 0, STCConfig.tiny())
    assert summary == {"recalibrated": False, "reviewed": 0, "thresholds": None}
    record = Store.open(url).read_round_json(0, CALIBRATION_FILE)
    assert "0 reviewed pool faces" in record["reason"] and record["previous_thresholds"]["std_below"] == 0.05
    assert Store.open(url).read_round_json(0, "confidence.json", default=None) is None


def test_round0_shares_routing_takes_round_0s_level_shares_from_the_store(tmp_path: Path) -> None:
    import pandas as pd

    from flows.labeling import route
    from tests.unit.review_store import face_landmarks, make_pool_store, pool_ids

    store = make_pool_store(tmp_path, n=10)
    ids = pool_ids(10)
    first = ["std"] * 4 + ["cls2"] * 4 + ["review"] * 2  # round 0's model routed these by its thresholds
    store.add_labels(pd.DataFrame({"sample_id": ids, "source": "pseudo", "round": 0, "level": first,
                                   "predicted_nme": np.float32(0.05), "model_version": "round-0"}),
                     face_landmarks(10))  # fmt: skip
    inflated = np.linspace(0.001, 0.01, 10)[::-1]  # round 1's model: every face under std_below, worst first
    cfg = STCConfig.tiny(schedule="confidence")
    shares = cfg.replace(routing="round0-shares")
    assert route(store, 1, cfg, cfg.policy(), inflated).tolist() == ["std"] * 10  # thresholds: all promoted
    assert route(store, 1, shares, shares.policy(), inflated).tolist() == (
        ["review"] * 2 + ["cls2"] * 4 + ["std"] * 4
    )  # round 0's shares, by rank
    assert route(store, 0, shares, shares.policy(), inflated).tolist() == ["std"] * 10  # round 0 itself: thresholds
    # the counts round 0's label-pool step recorded are used when there (no read of the pool's labels)
    store.mark_step(0, "label_pool", {"levels": {"std": 2, "cls2": 2, "cls3": 2, "review": 4}})
    assert route(store, 1, shares, shares.policy(), inflated).tolist() == (
        ["review"] * 4 + ["cls3"] * 2 + ["cls2"] * 2 + ["std"] * 2
    )
    with pytest.raises(ValueError, match="routing"):
        STCConfig(routing="quantile")
    with pytest.raises(ValueError, match="cross_fit"):
        STCConfig(schedule="stld", cross_fit=True)  # STLD's two stages have no single stage to fold
