"""The self-training benchmark (issues 13 and 14): methods side by side in a cross-domain regime, over seeds.

The regime (synthetic_faces.regimes, chosen from supervised runs alone, see bench/RESULTS.md) has a
labeled source domain, a broad unlabeled pool and two target holdouts (occlusion, pose) beside a
source holdout, like PIPNet's 300W -> CelebA -> COFW/WFLW setting. Per seed (data and initialisation):

1. the faces are written and imported into a store the way a team imports them (flows.ingest_steps:
   .pts folders for the labeled set and the source holdout, an image folder with detector-like boxes
   for the pool); round 0 (supervised) is trained once, to convergence, and shared by every method;
2. each self-training method copies that store and runs the real round flow (flows.stc.stc_round) for
   R rounds: pseudo-label the pool, review step, train, evaluate; the review method gets a simulated
   reviewer (truth + noise of 1 % of the inter-ocular distance per landmark) at 5 % of the pool;
3. the supervised baselines train on the labeled faces only, for as many images as the default
   schedule's whole run (primary) or as many epochs; the control adds the review method's corrected
   faces to them, with no pseudo-labels.

Every round of every method is evaluated on all three holdouts with its calibrated confidence
(bench/_stc_measure.py), and at each round of the default schedule the pool is ordered by pipstc's
selection, at random and worst first to count the corrections each needs to get 95 % of the pool's
labels within NME 0.08. Results are cached per (seed, method, round), so a stopped run resumes.

    python bench/bench_stc.py                      # the full benchmark (hours; resumable)
    python bench/bench_stc.py --seeds 3,4 --severity mild   # others: other seeds, a neighbouring regime
    python bench/bench_stc.py --quick              # CI: tiny sizes, one seed; numbers meaningless
    python bench/bench_stc.py --methods confidence,stld --report-only   # report what is cached, train nothing
    python bench/bench_stc.py --restore bench/results/results.json ...  # a lost work folder: reuse its rows

The remedies (``confidence-shares``, ``confidence-crossfit``) are the default schedule with one switch
each (Method.overrides); with --restore, a method resumed from restored rows still needs its store for any
round not cached (the store is not in results.json), so only add rounds or methods that start from round 0.

Writes <out>/stc.md, <out>/results.json and PNG plots (default out: bench/results; bench/results/quick
with --quick). A Prefect API serves the round flows: PREFECT_API_URL when set, else Prefect's temporary
local server.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning threads collapse on shared cores

import argparse
import csv
import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _stc_measure import (  # noqa: E402
    evaluate_holdouts,
    pool_truth,
    pseudo_label_quality,
    simulated_detector_boxes,
    training_images,
)
from regime_probe import MODELS, make_data  # noqa: E402

from annotations.store import Store  # noqa: E402
from flows.config import STCConfig  # noqa: E402

DEFAULT_SCHEDULE = "confidence"  # declared in bench/RESULTS.md before the first full run; the targets apply to it


@dataclass(frozen=True)
class Method:
    key: str
    title: str
    kind: str  # "self" (rounds of a schedule) | "steps" | "epochs" (supervised) | "control"
    schedule: str = DEFAULT_SCHEDULE
    review: bool = False
    seeds: str = "all"  # "all" seeds (headline comparisons) or "first"
    epoch_factor: int = 1  # x the plan's epochs per round: schedules that retrain from scratch get twice as many
    overrides: tuple[tuple[str, Any], ...] = ()  # STCConfig fields of this method (a remedy's switch)


METHODS = (
    Method("confidence", "pipstc default: STC, confidence-routed", "self", "confidence"),
    Method("supervised-steps", "supervised, equal steps (primary baseline)", "steps"),
    Method("supervised-epochs", "supervised, equal epochs", "epochs"),
    Method("plain", "plain self-training", "self", "plain", seeds="first", epoch_factor=2),
    Method("paper", "STC, paper schedule", "self", "paper", seeds="first", epoch_factor=2),
    Method("stld", "STLD (selection-free)", "self", "stld", seeds="first"),
    Method("stld+review", "STLD + 5% review per round", "self", "stld", True, "first"),
    Method("confidence+review", "pipstc default + 5% review per round", "self", "confidence", True, "first"),
    Method("control", "control: supervised + the same corrected faces", "control", seeds="first"),
    # Remedies (issue 13): the default with one switch the headline's data pointed to.
    Method("confidence-shares", "remedy: default, levels by round 0's shares", "self", "confidence", seeds="first",
           overrides=(("routing", "round0-shares"),)),  # fmt: skip
    Method("confidence-crossfit", "remedy: default, two-fold cross pseudo-labeling", "self", "confidence",
           seeds="first", overrides=(("cross_fit", True),)),  # fmt: skip
)


@dataclass
class Plan:
    seeds: tuple[int, ...]
    severity: str
    sizes: dict[str, int]
    model: str
    round0_epochs: int
    epochs: int
    rounds: int
    review_budget: float = 0.05
    reviewer_noise: float = 0.01
    quick: bool = False
    methods: tuple[Method, ...] = METHODS
    report_only: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self, schedule: str, epochs: int, seed: int, review: bool = False) -> STCConfig:
        base = STCConfig.tiny() if self.quick else STCConfig()
        model = {} if self.quick else MODELS[self.model]
        return base.replace(**model, epochs=epochs, milestones=milestones_for(epochs), lr=1e-3,
                            batch_size=8 if self.quick else 16, seed=seed, schedule=schedule,
                            review_budget=self.review_budget if review else 0.0, **self.extra)  # fmt: skip


def milestones_for(epochs: int) -> tuple[int, int]:
    """LR drops (x0.1) at 2/3 and 5/6 of the epochs, as STLD's CPU-sized schedule suggests (docs/algorithm.md 6.2)."""
    return max(1, int(round(epochs * 2 / 3))), max(1, int(round(epochs * 5 / 6)))


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(seeds=(0,), severity=args.severity, sizes={"labeled": 24, "holdout": 12, "pool": 32},
                    model="w16-128", round0_epochs=3, epochs=2, rounds=1, quick=True)  # fmt: skip
    seeds = tuple(int(s) for s in args.seeds.split(","))
    methods = METHODS
    if args.methods:
        keys = [k.strip() for k in args.methods.split(",") if k.strip()]
        unknown = sorted(set(keys) - {m.key for m in METHODS})
        if unknown:
            known = ", ".join(m.key for m in METHODS)
            raise SystemExit(f"--methods: unknown {', '.join(unknown)}; choose from {known}")
        methods = tuple(m for m in METHODS if m.key in keys)
    return Plan(seeds=seeds, severity=args.severity,
                sizes={"labeled": args.labeled, "holdout": args.holdout, "pool": args.pool}, model=args.model,
                round0_epochs=args.round0_epochs, epochs=args.epochs, rounds=args.rounds,
                methods=methods, report_only=args.report_only)  # fmt: skip


class Clock:
    """Wall and process CPU seconds since the start (CPU moves far less than wall on shared cores)."""

    def __init__(self, log_path: Path) -> None:
        self.t0, self.log_path = time.perf_counter(), log_path

    def __call__(self, msg: str) -> None:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        line = f"[{time.perf_counter() - self.t0:8.0f} s wall, {cpu:8.0f} s cpu] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")


# ----------------------------------------------------------------------------- data and round 0


def ingest(work: Path, data: dict[str, Any], seed: int) -> str:
    """The labeled faces, the source holdout and the pool (detector-like boxes) in a fresh store, once."""
    from flows.ingest_steps import ingest_source
    from pipnet_core.schemes import get_scheme

    url = str(work / "ingested")
    if Path(url, ".complete").exists():
        return url
    shutil.rmtree(url, ignore_errors=True)
    Store.create(url, get_scheme("300w"))
    ingest_source(url, str(Path(data["labeled"]["paths"][0]).parent), "pts", split="train", dataset="source")
    ingest_source(url, str(Path(data["source_holdout"]["paths"][0]).parent), "pts", split="holdout",
                  dataset="source-holdout")  # fmt: skip
    pool_dir = Path(data["pool"]["paths"][0]).parent
    boxes = simulated_detector_boxes(data["pool"]["landmarks"], np.random.default_rng(seed))
    with open(work / "pool_boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "x0", "y0", "x1", "y1", "score"])
        w.writerows([Path(p).name, *[f"{v:.2f}" for v in b], "0.99"] for p, b in zip(data["pool"]["paths"], boxes,
                                                                                    strict=True))  # fmt: skip
    ingest_source(url, str(pool_dir), "pool", boxes_file=str(work / "pool_boxes.csv"), dataset="pool")
    Path(url, ".complete").write_text("ok")
    return url


def training_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The round's training_set.json without its per-face lists (sample and label ids, levels)."""
    return None if record is None else {k: v for k, v in record.items() if not isinstance(v, list) or k == "stages"}


def train_round0(work: Path, ingested: str, plan: Plan, seed: int, log: Clock) -> str:
    """Round 0 (supervised on the labeled faces) trained and evaluated once per seed, shared by the methods."""
    from flows.evaluation import evaluate_round
    from flows.training import train_round

    url = str(work / "round0")
    if Path(url, ".complete").exists():
        return url
    shutil.rmtree(url, ignore_errors=True)
    shutil.copytree(ingested, url)
    cfg = plan.config(DEFAULT_SCHEDULE, plan.round0_epochs, seed)
    Store.open(url).write_round_json(0, "config.json", cfg.to_dict())
    train_round(url, 0, cfg, progress=False)
    evaluate_round(url, 0, cfg)
    store = Store.open(url)
    shared = {"shared": "round 0 of the benchmark, trained once per seed"}
    store.mark_step(0, "sync_reviews", shared)
    store.mark_step(0, "train", {**shared, "checkpoint": "rounds/round=0/model.pt"})
    store.mark_step(0, "evaluate", {**shared, **store.read_round_json(0, "metrics.json")})
    Path(url, ".complete").write_text("ok")
    log(f"seed {seed}: round 0 trained ({plan.round0_epochs} epochs)")
    return url


# ----------------------------------------------------------------------------- runs


def _cache(work: Path, key: str, k: int) -> Path:
    return work / "results" / f"{key.replace('+', '-')}-r{k}.json"


def _measure(url: str, k: int, cfg: STCConfig, data: dict[str, Any], truth: dict[str, np.ndarray],
             review_value: bool, seed: int) -> dict[str, Any]:  # fmt: skip
    from flows.simulate_review import correction_curves, pool_quality

    store = Store.open(url)
    holdouts = {name: data[f"{name}_holdout"] for name in ("source", "occlusion", "pose")}
    row: dict[str, Any] = {"round": k, "holdouts": evaluate_holdouts(store, k, cfg, holdouts),
                           "training_images": training_images(store, k, cfg),
                           "training_set": training_summary(store.read_round_json(k, "training_set.json"))}  # fmt: skip
    if truth and store.pseudo_labels(k).frame.shape[0]:
        row["pseudo"] = pseudo_label_quality(store, k, truth)
        row["pool"] = pool_quality(store, k, truth)
        if review_value:
            row["review_value"] = correction_curves(url, k, truth, seed=seed)
    return row


def run_self_training(work: Path, method: Method, plan: Plan, seed: int, data: dict[str, Any],
                      truth: dict[str, np.ndarray], log: Clock) -> list[dict[str, Any]]:  # fmt: skip
    """R rounds of ``method`` on a copy of the seed's round-0 store, through the real round flow."""
    from flows.simulate_review import simulated_review
    from flows.stc import stc_round

    url = str(work / "methods" / method.key.replace("+", "-"))
    if not Path(url, "store.json").exists():
        shutil.copytree(str(work / "round0"), url)
    cfg = plan.config(method.schedule, plan.epochs * method.epoch_factor, seed, review=method.review)
    cfg = cfg.replace(**dict(method.overrides))
    rows = []
    for k in range(plan.rounds + 1):
        cache = _cache(work, method.key, k)
        if cache.exists():
            rows.append(json.loads(cache.read_text()))
            continue
        store = Store.open(url)
        round_cfg = cfg if k else cfg.replace(epochs=plan.round0_epochs, milestones=milestones_for(plan.round0_epochs))
        store.write_round_json(k, "config.json", round_cfg.to_dict())
        t0 = time.perf_counter()
        stc_round(url, k, round_cfg.to_dict())
        if method.review and k < plan.rounds and "simulated_review" not in store.completed_steps(k):
            n = simulated_review(url, k, truth, noise=plan.reviewer_noise, seed=seed)
            store.mark_step(k, "simulated_review", {"corrected": n})
        row = _measure(url, k, round_cfg, data, truth, review_value=not method.review, seed=seed)
        row["corrected"] = int(store.completed_steps(k).get("simulated_review", {}).get("corrected", 0))
        row["seconds"] = time.perf_counter() - t0
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(row, default=float))
        rows.append(row)
        h = row["holdouts"]
        log(f"seed {seed} {method.key:<18} round {k}: NME source {h['source']['nme']:.4f} occlusion "
            f"{h['occlusion']['nme']:.4f} pose {h['pose']['nme']:.4f} | pseudo NME "
            f"{row.get('pseudo', {}).get('nme', float('nan')):.4f} | {row['seconds']:.0f} s")  # fmt: skip
    return rows


def _supervised(work: Path, ingested: str, key: str, plan: Plan, seed: int, epochs: int, data: dict[str, Any],
                extra_from: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One supervised training on the labeled faces (plus, for the control, the corrected faces of a run)."""
    from flows.evaluation import evaluate_round
    from flows.training import train_round

    cache = _cache(work, key, plan.rounds)
    if cache.exists():
        return json.loads(cache.read_text())
    url = str(work / "methods" / key)
    shutil.rmtree(url, ignore_errors=True)
    shutil.copytree(ingested, url)
    store = Store.open(url)
    added = 0
    if extra_from is not None:
        corrected = Store.open(extra_from).labels(source="corrected")
        ids = [str(s) for s in corrected.frame["sample_id"]]
        rows = pd.DataFrame({"sample_id": ids, "source": "corrected", "round": 0, "annotator": "simulated-reviewer"})
        store.add_labels(rows, corrected.landmarks)
        added = len(ids)
    cfg = plan.config(DEFAULT_SCHEDULE, epochs, seed)
    store.write_round_json(0, "config.json", cfg.to_dict())
    train_round(url, 0, cfg, progress=False)
    evaluate_round(url, 0, cfg)
    row = _measure(url, 0, cfg, data, {}, review_value=False, seed=seed)
    row.update({"round": plan.rounds, "epochs": epochs, "faces_added": added})
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, default=float))
    return row


def _epochs_for(images: int, faces: int, batch: int) -> int:
    return max(1, int(round(images / max((faces // batch) * batch, 1))))


def _cached_runs(work: Path, plan: Plan, seed: int, log: Clock) -> dict[str, Any]:
    """``--report-only``: the (seed, method) runs whose every round is cached, as :func:`run_seed` returns them."""
    runs: dict[str, Any] = {}
    for method in plan.methods:
        if method.seeds == "first" and seed != plan.seeds[0]:
            continue
        last = _cache(work, method.key, plan.rounds)
        if not last.exists():
            log(f"seed {seed}: {method.key} not in the report (--report-only: it has not run to its last round)")
            continue
        if method.kind == "self":
            runs[method.key] = {"rounds": [json.loads(_cache(work, method.key, k).read_text())
                                           for k in range(plan.rounds + 1)]}  # fmt: skip
        else:
            row = json.loads(last.read_text())
            ref = runs.get("confidence+review" if method.kind == "control" else DEFAULT_SCHEDULE)
            images = sum(r["training_images"] for r in ref["rounds"]) if ref else row.get("images_matched")
            runs[method.key] = {"rounds": [row], "epochs": row["epochs"], "images_matched": images}
    return runs


def restore_caches(results_json: Path, work_root: Path, plan: Plan, log: Clock) -> None:
    """Write the per-(seed, method, round) caches back from a report's results.json (a lost work folder).

    Only rows of the same plan (severity, sizes, model, epochs, rounds) are restored, and never over a
    cache that exists: the benchmark then resumes as if the earlier sitting's work folder were still here.
    """
    saved = json.loads(results_json.read_text())
    keys = ("severity", "sizes", "model", "round0_epochs", "epochs", "rounds")
    mine = {"severity": plan.severity, "sizes": plan.sizes, "model": plan.model,
            "round0_epochs": plan.round0_epochs, "epochs": plan.epochs, "rounds": plan.rounds}  # fmt: skip
    theirs = {k: saved["plan"][k] for k in keys}
    if theirs != mine:
        raise SystemExit(f"--restore {results_json}: its plan {theirs} is not this run's {mine}")
    n = 0
    for key, by_seed in saved["runs"].items():
        for seed, run in by_seed.items():
            rows = run["rounds"]
            for row in rows:
                k = plan.rounds if len(rows) == 1 else int(row["round"])
                if len(rows) == 1:
                    row = {**row, "epochs": run.get("epochs", row.get("epochs")),
                           "images_matched": run.get("images_matched")}  # fmt: skip
                cache = _cache(work_root / f"s{seed}", key, k)
                if not cache.exists():
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps(row, default=float))
                    n += 1
    log(f"restored {n} cached rounds from {results_json}")


def run_seed(work: Path, plan: Plan, seed: int, log: Clock) -> dict[str, Any]:
    """Every method of the plan on one seed's data; returns ``{method key: {"rounds": [...], ...}}``."""
    sizes = plan.sizes
    if plan.report_only:  # the cached rows are all a report needs: no faces, no round 0
        return _cached_runs(work, plan, seed, log)
    data = make_data(work.parent / "faces", plan.severity, seed, sizes)
    ingested = ingest(work, data, seed)
    train_round0(work, ingested, plan, seed, log)
    truth = pool_truth(Store.open(ingested), data["pool"]["paths"], data["pool"]["landmarks"])
    batch = plan.config(DEFAULT_SCHEDULE, 1, seed).train.batch_size
    runs: dict[str, Any] = {}
    for method in plan.methods:
        if method.seeds == "first" and seed != plan.seeds[0]:
            continue
        if method.kind == "self":
            try:
                plan.config(method.schedule, 1, seed).policy()
            except ValueError as e:
                log(f"seed {seed}: {method.key} skipped: {e}")
                continue
            runs[method.key] = {"rounds": run_self_training(work, method, plan, seed, data, truth, log)}
            continue
        ref = "confidence+review" if method.kind == "control" else DEFAULT_SCHEDULE
        if ref not in runs:
            log(f"seed {seed}: {method.key} skipped: {ref} did not run")
            continue
        images = sum(r["training_images"] for r in runs[ref]["rounds"])
        if method.kind == "epochs":
            epochs = plan.round0_epochs + plan.rounds * plan.epochs
        else:
            corrected = sum(r.get("corrected", 0) for r in runs[ref]["rounds"]) if method.kind == "control" else 0
            epochs = _epochs_for(images, sizes["labeled"] + corrected, batch)
        extra = str(work / "methods" / "confidence-review") if method.kind == "control" else None
        row = _supervised(work, ingested, method.key, plan, seed, epochs, data, extra_from=extra)
        runs[method.key] = {"rounds": [row], "epochs": epochs, "images_matched": images}
        h = row["holdouts"]
        log(f"seed {seed} {method.key:<18} ({epochs} epochs): NME source {h['source']['nme']:.4f} "
            f"occlusion {h['occlusion']['nme']:.4f} pose {h['pose']['nme']:.4f}")  # fmt: skip
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (data and initialisation)")
    p.add_argument("--severity", default="medium", choices=["mild", "medium", "severe"])
    p.add_argument("--labeled", type=int, default=500)
    p.add_argument("--pool", type=int, default=1500)
    p.add_argument("--holdout", type=int, default=200)
    p.add_argument("--model", default="w16-128", choices=sorted(MODELS))
    p.add_argument("--round0-epochs", type=int, default=120)
    p.add_argument("--epochs", type=int, default=20,
                   help="epochs of each self-training round (x2 for the schedules that retrain from scratch)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", default=None,
                   help="comma-separated method keys to run (default: all); cached rounds of others are not read")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the (seed, method) runs whose last round is cached")
    p.add_argument("--restore", type=Path, default=None,
                   help="an earlier run's results.json (same plan): its rows become the cache")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: bench/out/stc[-quick])")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: bench/results[/quick])")
    args = p.parse_args(argv)
    plan = make_plan(args)
    work = args.work or ROOT / "bench" / "out" / ("stc-quick" if args.quick else f"stc-{args.severity}")
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = Clock(work / "progress.log")
    log(f"plan: {plan}")
    if args.restore is not None:
        restore_caches(args.restore, work, plan, log)
    results = {"plan": {"seeds": list(plan.seeds), "severity": plan.severity, "sizes": plan.sizes, "model": plan.model,
                        "round0_epochs": plan.round0_epochs, "epochs": plan.epochs, "rounds": plan.rounds,
                        "review_budget": plan.review_budget, "reviewer_noise": plan.reviewer_noise,
                        "default": DEFAULT_SCHEDULE, "quick": plan.quick,
                        "command": "python bench/bench_stc.py " + " ".join(argv or sys.argv[1:])},
               "methods": {m.key: m.title for m in plan.methods}, "runs": {}}  # fmt: skip
    for seed in plan.seeds:
        for key, run in run_seed(work / f"s{seed}", plan, seed, log).items():
            results["runs"].setdefault(key, {})[str(seed)] = run
    from _stc_report import write_report

    write_report(results, out)
    log(f"report written to {out / 'stc.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
