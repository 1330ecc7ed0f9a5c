"""`pipstc simulate` end to end on tiny data, on a real Prefect API: hide labels, run arms, write the report."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from annotations.store import Store
from flows.simulate import Arm, estimate_cost, plan_simulation, simulation
from flows.simulate_review import TRUTH_FILE, load_truth
from pipnet_core.metrics import nme


def test_simulation_hides_labels_runs_each_arm_and_reports(tiny_store: str, tmp_path: Path) -> None:
    plan = plan_simulation(tiny_store, schedules=("confidence",), budgets=(0.0, 0.25), rounds=1, quick=True)
    assert [a.key for a in plan.arms] == ["confidence", "confidence+review0.25"]
    cost = estimate_cost(plan, faces=24, num_landmarks=68)
    # 19 of 24 faces hidden: round 0 trains 5 faces, round 1 those and the 19 pseudo-labels, 2 epochs each, 2 arms
    assert cost["images_per_s"] > 0 and cost["training_images"] == 2 * (5 * 2 + 24 * 2)
    out = tmp_path / "sim"
    result = simulation(tiny_store, str(out), asdict(plan))
    assert Path(result["report"]).read_text().startswith("# pipstc simulate")
    saved = json.loads((out / "simulation.json").read_text())
    assert saved["hidden"] == {"train_faces": 24, "hidden": 19, "kept": 5, "holdout": 12}
    truth = load_truth(out / TRUTH_FILE)
    assert len(truth) == 19
    for arm in plan.arms:
        store = Store.open(str(out / "stores" / arm.key.replace("+", "-")))
        assert set(store.samples(split="pool")["sample_id"]) == set(truth)  # the team's own pool is left out
        assert len(store.labels(source="human").frame) == 5 + 12  # kept train labels and the holdout
        metrics = store.read_round_json(1, "metrics.json")
        assert metrics["faces"] + metrics["calibration_faces"] == 12  # the holdout: evaluation + calibration parts
    reviewed = Store.open(str(out / "stores" / "confidence-review0.25")).labels(source="corrected")
    assert len(reviewed) >= 1  # the simulated reviewer answered round 0's review
    gt = np.stack([truth[s] for s in reviewed.frame["sample_id"]])
    assert float(nme(reviewed.landmarks.astype(float), gt.astype(float), Store.open(tiny_store).scheme).max()) < 0.05
    assert len(Store.open(str(out / "stores" / "confidence")).labels(source="corrected")) == 0
    rows = {(r["arm"], r["round"]): r for r in saved["rounds"]}
    assert rows[("confidence+review0.25", 1)]["corrected"] == len(reviewed)
    assert all(0.0 <= r["pool_good"] <= 1.0 for r in saved["rounds"])
    curves = saved["curves"]["curves"]
    assert curves["pipstc"][0] == curves["random"][0] and curves["random"][-1] == 1.0
    # rerunning resumes: nothing is retrained, the same rows come back
    stamp = (out / "stores" / "confidence" / "rounds" / "round=1" / "model.pt").stat().st_mtime_ns
    simulation(tiny_store, str(out), asdict(plan))
    assert (out / "stores" / "confidence" / "rounds" / "round=1" / "model.pt").stat().st_mtime_ns == stamp


def test_arm_keys_name_schedule_and_budget() -> None:
    assert Arm("paper", 0.0).key == "paper" and Arm("stld", 0.05).key == "stld+review0.05"
