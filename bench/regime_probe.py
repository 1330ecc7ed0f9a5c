"""Supervised probes of a cross-domain regime: round 0 and the oracle, to choose the regime before any method runs.

Issue 13 asks that the self-training benchmark's regime (generator settings, sizes, model, epochs)
be chosen from supervised runs alone: round 0 (the labeled source faces) trained to convergence, and
the oracle (the labeled faces plus the pool with its *true* labels). This script trains such runs
with pipnet_core directly (the same dataset, crops, augmentation and training loop a round uses) and
evaluates them on the three holdouts (source, occlusion, pose) along the way, so the NME curve shows
when training stops paying. Every evaluation is appended to ``<out>/runs.jsonl`` as it happens and
every run keeps its checkpoint, so a stopped probe resumes where it was.

    python bench/regime_probe.py --severity medium --model w16-128 --epochs 120 --oracle
    python bench/regime_probe.py --table          # the trade-off table of every finished run

Times are process CPU seconds (loader workers included) next to wall seconds: the machine is shared,
and CPU time moves far less than wall time when another job takes a core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse on shared cores

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotations.formats.pts import read_pts  # noqa: E402
from pipnet_core.augment import AugmentConfig  # noqa: E402
from pipnet_core.config import TrainConfig  # noqa: E402
from pipnet_core.crop import enlarge_box, landmark_box  # noqa: E402
from pipnet_core.schemes import get_scheme  # noqa: E402
from synthetic_faces import write_dataset  # noqa: E402
from synthetic_faces.regimes import regime_domains, regime_version  # noqa: E402

CROP_SCALE = 1.3  # the round's training and holdout crop: landmark box x1.3 (flows.config.STCConfig)
MODELS: dict[str, dict[str, Any]] = {
    "w16-128": dict(base_width=16, input_size=128, net_stride=16),
    "w32-128": dict(base_width=32, input_size=128, net_stride=16),
    "w64-128": dict(base_width=64, input_size=128, net_stride=16),
    "w16-256": dict(base_width=16, input_size=256, net_stride=32),
    "w32-256": dict(base_width=32, input_size=256, net_stride=32),
    "w16-96": dict(base_width=16, input_size=96, net_stride=16),
}
SIZES = {"source": "labeled", "occlusion": "holdout", "pose": "holdout", "pool": "pool"}


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_data(root: Path, severity: str, seed: int, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Write (once) the regime's faces: labeled source, source holdout, both target holdouts, the pool."""
    domains = regime_domains(severity)
    plan = {
        "labeled": (domains["source"], sizes["labeled"], 1),
        "source_holdout": (domains["source"], sizes["holdout"], 2),
        "occlusion_holdout": (domains["occlusion"], sizes["holdout"], 3),
        "pose_holdout": (domains["pose"], sizes["holdout"], 4),
        "pool": (domains["pool"], sizes["pool"], 5),
    }
    out = {}
    for name, (domain, n, salt) in plan.items():
        folder = root / f"{severity}-{regime_version(severity)}-s{seed}" / f"{name}-{n}"
        marker = folder / ".complete"
        if not marker.exists():
            write_dataset(folder, n, domain, seed=seed * 100 + salt)
            marker.write_text("ok")
        paths = sorted(folder.glob("*.jpg"))
        landmarks = np.stack([read_pts(p.with_suffix(".pts")) for p in paths]).astype(np.float64)
        out[name] = {"paths": [str(p) for p in paths], "landmarks": landmarks}
    return out


def evaluate(checkpoint: Path, data: dict[str, Any], names: list[str]) -> dict[str, dict[str, float]]:
    from pipnet_core.metrics import fr_auc, nme
    from pipnet_core.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, backend="torch")
    scheme = get_scheme("300w")
    out = {}
    for name in names:
        d = data[name]
        boxes = enlarge_box(landmark_box(d["landmarks"]), scale=CROP_SCALE)
        pred = predictor.predict(d["paths"], boxes, batch_size=64)
        per_face = nme(pred.landmarks.astype(np.float64), d["landmarks"], scheme)
        fr, auc = fr_auc(per_face)
        out[name] = {"nme": float(np.mean(per_face)), "fr": float(fr), "auc": float(auc)}
    return out


def run(args: argparse.Namespace) -> None:
    from pipnet_core.data import FaceDataset
    from pipnet_core.train import train

    sizes = {"labeled": args.labeled, "holdout": args.holdout, "pool": args.pool}
    data = make_data(args.data, args.severity, args.seed, sizes)
    train_names = ["labeled", "pool"] if args.oracle else ["labeled"]
    paths = [p for n in train_names for p in data[n]["paths"]]
    landmarks = np.concatenate([data[n]["landmarks"] for n in train_names])
    e = args.epochs
    milestones = (int(round(e * 2 / 3)), int(round(e * 5 / 6)))
    tcfg = TrainConfig(epochs=e, milestones=milestones, lr=args.lr, batch_size=16, seed=args.seed,
                       num_workers=args.workers, augment=AugmentConfig() if not args.no_augment else None,
                       **MODELS[args.model])  # fmt: skip
    version = regime_version(args.severity)
    key = (f"{args.severity}-{version}-s{args.seed}-L{args.labeled}-U{args.pool}-{args.model}-e{e}-lr{args.lr:g}"
           f"{'-noaug' if args.no_augment else ''}{'-oracle' if args.oracle else ''}")  # fmt: skip
    work = args.work / key
    work.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "runs.jsonl"
    done = set()
    if log_path.exists():
        done = {(r["key"], r["epoch"]) for r in map(json.loads, log_path.read_text().splitlines())}
    dataset = FaceDataset(paths, enlarge_box(landmark_box(landmarks), scale=CROP_SCALE), landmarks,
                          input_size=tcfg.input_size, flip=get_scheme("300w").flip, cache_crops=True)  # fmt: skip
    evals = sorted({int(x) for x in args.evals.split(",")} | {e}) if args.evals else [e]
    spent = json.loads((work / "spent.json").read_text()) if (work / "spent.json").exists() else {"cpu": 0, "wall": 0}
    for stop in [s for s in evals if s <= e]:
        if (key, stop) in done:
            continue
        c0, w0 = cpu_seconds(), time.perf_counter()
        train(dataclasses.replace(tcfg, epochs=stop), dataset, get_scheme("300w"), work / "model.pt", resume=True,
              progress=False)  # fmt: skip
        spent = {"cpu": spent["cpu"] + cpu_seconds() - c0, "wall": spent["wall"] + time.perf_counter() - w0}
        (work / "spent.json").write_text(json.dumps(spent))
        metrics = evaluate(work / "model.pt", data, ["source_holdout", "occlusion_holdout", "pose_holdout"])
        row = {"key": key, "regime": version, "severity": args.severity, "seed": args.seed, "model": args.model,
               "lr": args.lr, "augment": not args.no_augment, "oracle": args.oracle, "labeled": args.labeled,
               "pool": args.pool, "epochs_total": e, "epoch": stop, "train_faces": len(paths), "cpu_s": spent["cpu"],
               "wall_s": spent["wall"]}  # fmt: skip
        row.update({f"{n}_{m}": v for n, r in metrics.items() for m, v in r.items()})
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{key} epoch {stop}: " + "  ".join(f"{n.split('_')[0]} {r['nme']:.4f}/{r['fr']:.2f}"
                                                  for n, r in metrics.items())
              + f"  cpu {spent['cpu'] / 60:.1f} min, wall {spent['wall'] / 60:.1f} min", flush=True)  # fmt: skip


def table(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    final = {}
    for r in rows:
        if r["epoch"] == r["epochs_total"]:
            final[r["key"]] = r
    lines = ["| run | epochs | CPU min | wall min | source NME / FR | occlusion NME / FR | pose NME / FR |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(final.values(), key=lambda r: (r["severity"], r["oracle"], r["model"], r["epochs_total"])):
        cells = [f"{r[f'{n}_holdout_nme']:.4f} / {r[f'{n}_holdout_fr']:.2f}" for n in ("source", "occlusion", "pose")]
        lines.append(f"| {r['key']} | {r['epochs_total']} | {r['cpu_s'] / 60:.1f} | {r['wall_s'] / 60:.1f} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--severity", default="medium", choices=["mild", "medium", "severe"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labeled", type=int, default=500)
    p.add_argument("--holdout", type=int, default=200)
    p.add_argument("--pool", type=int, default=1500)
    p.add_argument("--model", default="w16-128", choices=sorted(MODELS))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--evals", default="", help="comma-separated epochs to evaluate at (the last always)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--oracle", action="store_true", help="train on the labeled faces plus the pool with true labels")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "regime-data")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "regime-work")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "regime")
    p.add_argument("--table", action="store_true", help="print the table of finished runs and exit")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table(args.out))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
