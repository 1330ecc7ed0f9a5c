"""The self-training benchmark (issue 13) runs end to end in --quick mode and writes every table and plot.

Numbers of a quick run mean nothing (tiny sizes, two epochs), so only the run, the report's shape, the
baselines' step matching and the simulated reviewer's bookkeeping are checked here; the full run's
numbers live in bench/results/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from annotations.store import Store

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from bench_stc import METHODS  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("bench-stc")
    out, work = root / "out", root / "work"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_stc.py"), "--quick", "--out", str(out), "--work", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"bench_stc.py --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out, work, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quick_run_writes_every_table_and_plot(quick_run: tuple[Path, Path, dict]) -> None:
    out, _, res = quick_run
    md = (out / "stc.md").read_text()
    for heading in (
        "## Targets",
        "## Headline: the default schedule against supervised training of equal steps",
        "## Every method",
        "## Confidence quality of the default schedule",
        "## What a data team buys",
        "## Pseudo-label quality per level and round",
    ):
        assert heading in md, f"stc.md lacks {heading!r}"
    for png in ("nme_per_round.png", "review_value.png", "reliability.png"):
        assert (out / png).stat().st_size > 1000
    for method in METHODS:
        assert f"| {method.title} |" in md, f"no row for {method.title!r}"
    assert len(res["targets"]) == 4
    for key in ("confidence", "plain", "paper", "confidence+review"):
        rounds = res["runs"][key]["0"]["rounds"]
        assert [r["round"] for r in rounds] == [0, 1]
        assert set(rounds[1]["holdouts"]) == {"source", "occlusion", "pose"}
        assert rounds[1]["pseudo"]["levels"], f"{key}: no pseudo-label levels measured"


@pytest.mark.slow
def test_supervised_baselines_match_the_default_run(quick_run: tuple[Path, Path, dict]) -> None:
    _, _, res = quick_run
    default = res["runs"]["confidence"]["0"]
    images = sum(r["training_images"] for r in default["rounds"])
    steps = res["runs"]["supervised-steps"]["0"]
    assert steps["images_matched"] == images > 0
    labeled = res["plan"]["sizes"]["labeled"]
    batch = 8
    assert abs(steps["epochs"] * (labeled // batch) * batch - images) <= (labeled // batch) * batch / 2
    plan = res["plan"]
    assert res["runs"]["supervised-epochs"]["0"]["epochs"] == plan["round0_epochs"] + plan["rounds"] * plan["epochs"]
    rv = default["rounds"][-1]["review_value"]
    assert set(rv["to_95"]) == {"pipstc", "random", "worst first"}


@pytest.mark.slow
def test_simulated_reviewer_corrects_pseudo_labels_only_with_review(quick_run: tuple[Path, Path, dict]) -> None:
    _, work, res = quick_run
    methods = work / "s0" / "methods"
    reviewed = Store.open(str(methods / "confidence-review"))
    corrected = reviewed.labels(source="corrected").frame
    assert len(corrected) >= 1 and (corrected["annotator"] == "simulated-reviewer").all()
    pseudo_ids = set(reviewed.labels(source="pseudo").frame["label_id"])
    assert set(corrected["parent_label_id"]) <= pseudo_ids
    assert not set(corrected["sample_id"]) & set(reviewed.samples(split="holdout")["sample_id"])
    assert len(Store.open(str(methods / "confidence")).labels(source="corrected")) == 0
    control = Store.open(str(methods / "control"))
    assert set(control.labels(source="corrected").frame["sample_id"]) == set(corrected["sample_id"])
    assert res["runs"]["confidence+review"]["0"]["rounds"][0]["corrected"] == len(corrected)
