"""Does STC work? Accuracy per round, confidence quality and review value on the synthetic cross-domain setting.

Issue 7. One run, same data, same training budget per round, side by side:

* supervised only (round 0), and round 0 trained as long as all rounds together ((R + 1) x epochs), so
  extra epochs are not mistaken for self-training;
* plain self-training (every pseudo-label at the full task, schedule ``plain``), the paper's STC
  (``paper``: cls3, cls2, std, ... re-initialised each round), pipstc's confidence-routed curriculum
  (``confidence``: each pseudo-label routed by its own predicted NME, fine-tuned from the last round),
  and the last two with a human review budget of 5% of the pool per round. The simulated reviewer
  answers with the generator's ground truth (``pool_truth/*.pts``): a ``corrected`` label whose parent is
  the pseudo-label, annotator ``simulated-reviewer``. Only the benchmark does this. A control per review
  method trains the long supervised baseline plus the faces that method had corrected (no pseudo-labels),
  to tell the value of the reviewed faces from that of the self-training around them.

Data (flows.demo.make_demo_data): a small labeled set in the ``studio`` domain, a holdout and a pool in
the shifted ``wild`` domain (the paper's cross-domain setting, docs/architecture.md section 6); the pool has
simulated detector boxes and its truth kept aside. Round 0 is trained once in a base store, which is
then copied per method; each method runs R self-training rounds. The steps are the plain functions of
flows/ (train_round, evaluate_round, label_shard) and annotations/ (plan_pool_shards, round_candidates),
called directly: the Prefect flows (flows/stc.py) wrap exactly these, and their orchestration overhead
would only blur the timings.

Measured besides holdout NME / FR@0.1 / AUC@0.1 (bench/_stc_measure.py): confidence quality on the
holdout (Spearman of predicted vs real NME per face and per landmark, each signal alone and combined,
the combined model fitted on one half of the holdout and measured on the other, as evaluate_round does),
review value on the pool (share of the gross errors, NME > 0.1, found in the 5% least confident vs a
random 5% and vs ordering by score peak), and the real NME of the pseudo-labels routed to each level.

    python bench/bench_stc.py            # full: ~30-35 min on 2 idle cores (43 min on the shared machine)
    python bench/bench_stc.py --quick    # CI smoke test: a few minutes, tiny sizes, numbers meaningless

Writes <out>/stc.md, <out>/results.json and PNG plots (default out: bench/results; bench/results/quick
with --quick, so a smoke test never overwrites the full numbers).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch/numpy start their thread pools

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _stc_measure import analyse_confidence, analyse_review_value, pool_truth, pseudo_label_quality  # noqa: E402
from _stc_report import write_report  # noqa: E402

from annotations.review.candidates import round_candidates  # noqa: E402
from annotations.store import Store  # noqa: E402
from annotations.store.shards import plan_pool_shards  # noqa: E402
from flows import checkpoints, evaluation, labeling, training  # noqa: E402
from flows.config import STCConfig  # noqa: E402

THREADS = 2


@dataclass(frozen=True)
class Method:
    key: str
    title: str
    schedule: str
    review: bool


METHODS = (
    Method("plain", "plain self-training", "plain", False),
    Method("paper", "STC, paper schedule", "paper", False),
    Method("confidence", "STC, confidence-routed", "confidence", False),
    Method("paper+review", "STC, paper + 5% review", "paper", True),
    Method("confidence+review", "STC, confidence + 5% review", "confidence", True),
)


@dataclass
class Plan:
    """Sizes and settings of one benchmark run."""

    mode: str
    labeled: int
    holdout: int
    pool: int
    rounds: int
    cfg: STCConfig
    seed: int
    long_cfg: STCConfig = field(init=False)

    def __post_init__(self) -> None:
        # Supervised for as many epochs as round 0 plus all self-training rounds, schedule stretched alike.
        factor = self.rounds + 1
        self.long_cfg = self.cfg.replace(
            epochs=self.cfg.train.epochs * factor, milestones=tuple(m * factor for m in self.cfg.train.milestones)
        )


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        # STCConfig.tiny sizes, plus flip TTA so that every confidence signal exists in the tables.
        cfg = STCConfig.tiny(epochs=2, milestones=(1,), flip_tta=True, seed=args.seed)
        sizes, rounds = (40, 40, 60), 3
    else:
        # STCConfig.demo: a narrow ResNet-18 at 128 px (grid 8 via stride 16). Sizes and epochs from a measured
        # epoch: ~150 img/s training on 2 idle cores (a 1100-face epoch in ~7 s), so the ~220k training images
        # of the run take ~25 min alone; the machine is shared, and other jobs can slow it 2-7x.
        epochs = args.epochs or 14
        cfg = STCConfig.demo(epochs=epochs, milestones=(round(epochs * 0.7), round(epochs * 0.9)), seed=args.seed)
        sizes, rounds = (300, 300, 800), 3
    if args.sizes:
        sizes = tuple(int(v) for v in args.sizes.split(","))
    if args.epochs and args.quick:
        cfg = cfg.replace(epochs=args.epochs, milestones=(max(1, args.epochs // 2),))
    return Plan("quick" if args.quick else "full", *sizes, rounds=args.rounds or rounds, cfg=cfg, seed=args.seed)


class Clock:
    """Progress lines with the time since the start."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {msg}", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data-loader workers of every epoch)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


# ----------------------------------------------------------------------------- store steps


def ingest(url: str, paths: dict[str, Path], images: Path) -> None:
    from flows.ingest_steps import ingest_source
    from pipnet_core.schemes import get_scheme

    Store.create(url, get_scheme("300w"))
    ingest_source(url, str(paths["labeled"]), "pts", split="train", dataset="bench-labeled")
    ingest_source(url, str(paths["holdout"]), "pts", split="holdout", dataset="bench-holdout")
    ingest_source(url, str(paths["pool"]), "pool", dataset="bench-pool", boxes_file=str(images / "pool_boxes.csv"))


def label_pool(url: str, k: int, cfg: STCConfig) -> int:
    """Pseudo-label the unlabeled pool with round k's model (the label-pool flow's shards, run in turn)."""
    labeled = 0
    for shard in plan_pool_shards(Store.open(url), k, cfg.shard_size):
        labeled += labeling.label_shard(url, k, shard, cfg.to_json())["labeled"]
    return labeled


def simulate_review(url: str, k: int, cfg: STCConfig, truth: dict[str, np.ndarray]) -> int:
    """The benchmark's reviewer: the faces select_review_candidates picks come back with their true landmarks.

    Stored as a real pull would store them (annotations/review/pull.py): a ``corrected`` label of the
    pseudo-label's round, ``parent_label_id`` = the pseudo-label, plus pushed/completed review events.
    """
    ids = round_candidates(Store.open(url), k, cfg.review_budget)
    if not ids:
        return 0
    store = Store.open(url)
    pseudo = store.pseudo_labels(k).frame.drop_duplicates("sample_id", keep="last").set_index("sample_id")
    parent = pseudo.loc[ids, "label_id"].astype(str).to_numpy()
    rows = pd.DataFrame(
        {
            "sample_id": ids,
            "source": "corrected",
            "round": k,
            "model_version": checkpoints.model_version(k),
            "annotator": "simulated-reviewer",
            "parent_label_id": parent,
        }
    )
    store.add_labels(rows, np.stack([truth[s] for s in ids]).astype(np.float32))
    now = pd.Timestamp.now(tz="UTC")
    events = pd.DataFrame(
        {
            "sample_id": ids * 2,
            "round": k,
            "status": ["pushed"] * len(ids) + ["completed"] * len(ids),
            "label_id": list(parent) * 2,
            "note": "simulated reviewer (benchmark only)",
            "updated_at": [now] * len(ids) + [now + pd.Timedelta(seconds=1)] * len(ids),
        }
    )
    store.add_reviews(events)
    return len(ids)


def holdout_per_face(url: str, k: int) -> list[float]:
    import io

    data = np.load(io.BytesIO(Store.open(url).read_round_file(k, "holdout_predictions.npz")))
    return [float(v) for v in data["per_face"]]


def round_row(k: int, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": k,
        "nme": metrics["nme"],
        "fr": metrics["fr@0.1"],
        "auc": metrics["auc@0.1"],
        "confidence_spearman": metrics.get("confidence_spearman"),
    }


# ----------------------------------------------------------------------------- the run


def run_method(
    method: Method, base_url: str, work: Path, plan: Plan, truth: dict[str, np.ndarray], base_row: dict, log: Clock
) -> dict[str, Any]:
    """Copy the base store (round 0 trained and evaluated) and run R self-training rounds of ``method``."""
    url = str(work / f"store-{method.key.replace('+', '-')}")
    shutil.copytree(base_url, url)
    cfg = plan.cfg.replace(schedule=method.schedule)
    rounds = [dict(base_row, seconds={})]
    corrected = 0
    levels: list[dict[str, Any]] = []
    for k in range(plan.rounds + 1):
        row = rounds[k]
        if k > 0:
            _, row["seconds"]["train"] = timed(training.train_round, url, k, cfg, progress=False)
            metrics, row["seconds"]["evaluate"] = timed(evaluation.evaluate_round, url, k, cfg)
            row.update(round_row(k, metrics))
            row["training_set"] = Store.open(url).read_round_json(k, "training_set.json")
        n, row["seconds"]["label_pool"] = timed(label_pool, url, k, cfg)
        quality = pseudo_label_quality(Store.open(url), k, truth)
        row["pseudo_nme"], row["pseudo_gross"], row["pseudo_faces"] = quality["nme"], quality["gross"], n
        levels += [{"method": method.key, "round": k, **lv} for lv in quality["levels"]]
        if method.review and k < plan.rounds:  # the last round's review would train nothing
            got, row["seconds"]["review"] = timed(simulate_review, url, k, cfg, truth)
            corrected += got
        row["corrected_total"] = corrected
        if k < plan.rounds:
            rounds.append({"round": k + 1, "seconds": {}})
        spent = sum(row["seconds"].values())
        if k > 0:
            log(f"{method.key:<18} round {k}: holdout NME {row['nme']:.4f} FR {row['fr']:.3f} | pseudo NME "
                f"{row['pseudo_nme']:.4f} | corrected {corrected} | {spent:.0f} s "
                f"(train {row['seconds']['train']:.0f} s)")  # fmt: skip
    return {
        "title": method.title,
        "schedule": method.schedule,
        "review": method.review,
        "url": url,
        "rounds": rounds,
        "levels": levels,
        "final_per_face": holdout_per_face(url, plan.rounds),
    }


def run_label_control(ingested_url: str, method_url: str, work: Path, plan: Plan, key: str) -> dict[str, Any]:
    """Supervised on the labeled faces plus every face a review method had corrected, as long as the long baseline.

    It tells what the reviewed faces are worth as plain labels, apart from the self-training around them.
    The control holds every correction from its first epoch, while the method got them round by round, so
    if anything the control is favoured.
    """
    url = str(work / f"store-supervised-{key.replace('+', '-')}")
    shutil.copytree(ingested_url, url)
    corrected = Store.open(method_url).labels(source="corrected")
    # A plain list: an arrow-backed pandas "str" column taken from a label view crashes add_labels (see the report).
    ids = [str(v) for v in corrected.frame["sample_id"]]
    rows = pd.DataFrame({"sample_id": ids, "source": "corrected", "round": 0, "annotator": "simulated-reviewer"})
    Store.open(url).add_labels(rows, corrected.landmarks)
    training.train_round(url, 0, plan.long_cfg, progress=False)
    metrics = evaluation.evaluate_round(url, 0, plan.long_cfg)
    return {
        **round_row(0, metrics),
        "epochs": plan.long_cfg.train.epochs,
        "faces_added": len(rows),
        "per_face": holdout_per_face(url, 0),
    }


def run(plan: Plan, work: Path, out: Path, command: str) -> dict[str, Any]:
    import torch

    from flows.demo import make_demo_data

    torch.set_num_threads(THREADS)
    log = Clock()
    log(f"{plan.mode} run: labeled {plan.labeled} studio faces, holdout {plan.holdout} + pool {plan.pool} wild faces, "
        f"{plan.rounds} self-training rounds x {plan.cfg.train.epochs} epochs; work dir {work}")  # fmt: skip
    images = work / "images"
    paths, t_data = timed(make_demo_data, images, (plan.labeled, plan.holdout, plan.pool), plan.seed)
    base_url, long_url = str(work / "store-base"), str(work / "store-supervised-long")
    ingested_url = str(work / "store-ingested")
    ingest(ingested_url, paths, images)
    for url in (base_url, long_url):  # before any training: every store starts from the same faces
        shutil.copytree(ingested_url, url)
    truth = pool_truth(Store.open(base_url), paths["pool_truth"])
    log(f"data {t_data:.0f} s; {len(truth)} pool faces with truth")

    timings: dict[str, float] = {"data": t_data}
    _, timings["round0_train"] = timed(training.train_round, base_url, 0, plan.cfg, progress=False)
    metrics0, timings["round0_evaluate"] = timed(evaluation.evaluate_round, base_url, 0, plan.cfg)
    base_row = round_row(0, metrics0)
    log(f"round 0 (supervised, {plan.cfg.train.epochs} epochs): holdout NME {metrics0['nme']:.4f} "
        f"FR {metrics0['fr@0.1']:.3f} ({timings['round0_train']:.0f} s training)")  # fmt: skip

    _, timings["long_train"] = timed(training.train_round, long_url, 0, plan.long_cfg, progress=False)
    metrics_long = evaluation.evaluate_round(long_url, 0, plan.long_cfg)
    log(f"supervised, {plan.long_cfg.train.epochs} epochs: holdout NME {metrics_long['nme']:.4f} "
        f"FR {metrics_long['fr@0.1']:.3f} ({timings['long_train']:.0f} s training)")  # fmt: skip

    methods: dict[str, Any] = {}
    for method in METHODS:
        t = time.perf_counter()
        methods[method.key] = run_method(method, base_url, work, plan, truth, base_row, log)
        timings[f"method:{method.key}"] = time.perf_counter() - t

    controls: dict[str, Any] = {}
    for method in (m for m in METHODS if m.review):
        t = time.perf_counter()
        controls[method.key] = run_label_control(ingested_url, methods[method.key]["url"], work, plan, method.key)
        timings[f"control:{method.key}"] = time.perf_counter() - t
        log(f"supervised, {plan.long_cfg.train.epochs} epochs, + the {controls[method.key]['faces_added']} faces "
            "corrected "
            f"in {method.key}: holdout NME {controls[method.key]['nme']:.4f}")  # fmt: skip

    log("analysing confidence (holdout) and review value (pool)")
    analysed = {"round 0": (base_url, 0)} | {f"{m.key}, round {plan.rounds}": (methods[m.key]["url"], plan.rounds)
                                            for m in METHODS}  # fmt: skip
    confidence, review_value = {}, {}
    t = time.perf_counter()
    for name, (url, k) in analysed.items():  # the schedule plays no part in prediction
        confidence[name] = analyse_confidence(Store.open(url), k, plan.cfg)
        review_value[name] = analyse_review_value(Store.open(url), k, plan.cfg, truth)
    timings["analysis"] = time.perf_counter() - t
    timings["total"] = log.elapsed()
    timings["cpu_share"] = cpu_seconds() / (timings["total"] * THREADS)  # well below 1: other jobs shared the cores

    results = {
        "command": command,
        "mode": plan.mode,
        "finished": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "sizes": {"labeled": plan.labeled, "holdout": plan.holdout, "pool": plan.pool},
        "rounds": plan.rounds,
        "seed": plan.seed,
        "threads": THREADS,
        "config": plan.cfg.to_dict(),
        "long_epochs": plan.long_cfg.train.epochs,
        "long_milestones": list(plan.long_cfg.train.milestones),
        "baselines": {
            "supervised": {**base_row, "epochs": plan.cfg.train.epochs, "per_face": holdout_per_face(base_url, 0)},
            "supervised-long": {
                **round_row(0, metrics_long),
                "epochs": plan.long_cfg.train.epochs,
                "per_face": holdout_per_face(long_url, 0),
            },
        },  # fmt: skip
        "methods": {k: {kk: vv for kk, vv in v.items() if kk != "url"} for k, v in methods.items()},
        "controls": controls,
        "confidence": confidence,
        "review_value": review_value,
        "timings": timings,
    }
    write_report(results, out)
    log(f"done: {out / 'stc.md'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test: tiny sizes, a few minutes")
    parser.add_argument("--out", type=Path, default=None, help="where stc.md, results.json and plots go")
    parser.add_argument("--work", type=Path, default=None, help="keep stores and images here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0, help="data, training and selection seed")
    parser.add_argument("--rounds", type=int, default=None, help="self-training rounds (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per round")
    parser.add_argument("--sizes", default=None, help="labeled,holdout,pool face counts")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    out = args.out or (ROOT / "bench" / "results" / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/bench_stc.py " + " ".join(argv if argv is not None else sys.argv[1:])
    warnings.filterwarnings("ignore", category=UserWarning)  # torch/onnx export chatter, not results
    if args.work:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        run(plan, args.work, out, command.strip())
    else:
        with tempfile.TemporaryDirectory(prefix="pipstc-bench-stc-") as tmp:
            run(plan, Path(tmp), out, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
