"""The STC benchmark (issue 7) runs end to end in --quick mode and writes every table, method and plot.

Numbers of a quick run mean nothing (tiny sizes, two epochs), so only the run, the report's shape and
the simulated reviewer's bookkeeping are checked here; the full run's numbers live in bench/results/.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from annotations.store import Store

ROOT = Path(__file__).resolve().parents[2]
METHODS = {
    "plain": "plain self-training",
    "paper": "STC, paper schedule",
    "confidence": "STC, confidence-routed",
    "paper+review": "STC, paper + 5% review",
    "confidence+review": "STC, confidence + 5% review",
}
SIGNAL_TITLES = (
    "score peak (negated)",
    "neighbour-vote spread",
    "coarse/fine agreement (negated)",
    "flip disagreement",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("bench-stc")
    out, work = root / "out", root / "work"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_stc.py"), "--quick", "--out", str(out), "--work", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"bench_stc.py --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out, work, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quick_run_writes_every_table_with_every_method(quick_run: tuple[Path, Path, dict]) -> None:
    out, _, res = quick_run
    md = (out / "stc.md").read_text()
    for heading in (
        "## Targets",
        "### Holdout NME per round",
        "### Every round in detail",
        "### Confidence quality, round 0 model (holdout)",
        "### Reliability, round 0 model",
        "### Review value, round 0 model (pool)",
        "### Pseudo-label quality per level (confidence schedule)",
    ):
        assert heading in md, f"stc.md lacks {heading!r}"
    assert set(res["methods"]) == set(METHODS)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for title in METHODS.values():
        assert any(line.startswith(f"| {title} |") for line in rows), f"no table row for {title!r}"
    assert any(line.startswith("| supervised (2 epochs) | ") for line in rows)
    assert any(line.startswith(f"| supervised ({res['long_epochs']} epochs) | ") for line in rows)
    assert res["long_epochs"] == res["config"]["train"]["epochs"] * (res["rounds"] + 1)
    assert set(res["controls"]) == {"paper+review", "confidence+review"}
    for key, control in res["controls"].items():
        assert control["faces_added"] == res["methods"][key]["rounds"][-1]["corrected_total"] > 0
        assert any(line.startswith(f"| supervised ({res['long_epochs']} epochs) + the {control['faces_added']} faces "
                                   f"corrected in {METHODS[key]} |") for line in rows)  # fmt: skip
    for key, method in res["methods"].items():
        assert [r["round"] for r in method["rounds"]] == list(range(res["rounds"] + 1)), key
        assert all(math.isfinite(r["nme"]) and math.isfinite(r["pseudo_nme"]) for r in method["rounds"]), key
    for title in SIGNAL_TITLES:
        assert any(line.startswith(f"| {title} |") for line in rows), f"no confidence row for {title!r}"
        assert any(line.startswith(f"| {title} alone |") for line in rows), f"no review-value row for {title!r}"
    assert any(line.startswith("| least confident (combined predicted NME) |") for line in rows)
    assert any(line.startswith("| random 5% (expected) |") for line in rows)
    assert {lv["method"] for lv in res["methods"]["confidence"]["levels"]} == {"confidence"}
    assert len(res["targets"]) == 3 and all(isinstance(t["met"], bool) for t in res["targets"])
    for png in ("nme_per_round.png", "ced_final.png", "reliability.png"):
        assert f"]({png})" in md
        size = (out / png).stat().st_size
        assert 0 < size < 200_000, f"{png} is {size} bytes"


@pytest.mark.slow
def test_simulated_reviewer_corrects_pseudo_labels_only_with_review(quick_run: tuple[Path, Path, dict]) -> None:
    _, work, res = quick_run
    for key, method in res["methods"].items():
        corrected = method["rounds"][-1]["corrected_total"]
        assert (corrected > 0) == method["review"], f"{key}: {corrected} corrections"
    store = Store.open(str(work / "store-confidence-review"))
    corrected = store.labels(source="corrected").frame
    assert len(corrected) == res["methods"]["confidence+review"]["rounds"][-1]["corrected_total"]
    assert set(corrected["annotator"]) == {"simulated-reviewer"}
    pseudo = store.labels(source="pseudo").frame.set_index("label_id")
    parents = pseudo.loc[corrected["parent_label_id"]]
    # each correction fixes a pseudo-label of the same face, made in the correction's round
    assert (parents["sample_id"].to_numpy() == corrected["sample_id"].to_numpy()).all()
    assert (parents["round"].to_numpy() == corrected["round"].to_numpy()).all()
    assert not set(corrected["sample_id"]) & set(store.samples(split="holdout")["sample_id"])
    # a corrected face is not pseudo-labelled again in later rounds
    for _, row in corrected.iterrows():
        later = store.labels(source="pseudo").frame
        later = later[(later["sample_id"] == row["sample_id"]) & (later["round"] > row["round"])]
        assert later.empty, f"{row['sample_id']} was pseudo-labelled again after its correction"
