"""The ``pipstc`` command line: the whole pipeline from one laptop, no Prefect set-up needed.

Without PREFECT_API_URL the flows run on Prefect's temporary local server; point PREFECT_API_URL at
a team server to see runs there. Label Studio is reached through PIPSTC_LABEL_STUDIO_URL and
PIPSTC_LABEL_STUDIO_TOKEN (the token only ever from the environment).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from flows.errors import EXIT_FAILED, EXIT_OK

__all__ = ["main"]

SCHEDULES = ["paper", "confidence", "plain", "stld"]  # pipnet_core.curriculum.create_policy

EPILOG = """\
typical session:
  pipstc init ./store --scheme 300w                   new store for 68-point faces
  pipstc import ./store ./faces --format pts          human labels (images with .pts beside them)
  pipstc import ./store ./holdout --format pts --split holdout
  pipstc pool add ./store ./unlabeled_images          faces nobody labeled, found by the embedded detector
  pipstc run ./store --rounds 5 --schedule paper      round 0 + five STC rounds
  pipstc run ./store --schedule stld                  round 0 + STLD's rounds (pretraining, shrink regression)
  pipstc review pull ./store                          bring reviewers' corrections in
  pipstc rejects ./store --stage import               every row that could not be used, with the reason
  pipstc report ./store                               print the latest round report
  pipstc demo                                         everything above on synthetic faces

exit status: 0 done; 1 nothing usable came out (every row rejected, no face found) or an unexpected
error; 2 the command could not run as given (usage, an unreadable input file, a store or config
problem: the one-line message says what to fix; --debug adds the traceback); 130 interrupted.
"""


def _env_defaults() -> None:
    # Must precede the first torch import. Spinning OpenMP threads collapse 10-20x when another
    # process shares the cores (measured here: 0.5 s vs 5-8 s per training step); passive waiting
    # costs little on an idle machine. Set OMP_WAIT_POLICY=ACTIVE to opt out.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # A slow first start on 2 busy cores exceeds Prefect's 20 s default (docs/orchestration.md section 2)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def _config(args: argparse.Namespace) -> dict[str, Any] | None:
    """The config values the command line gives explicitly: --small's demo sizes, then the --config file,
    then single flags (the most specific wins); None when it gives none."""
    from flows.config import STCConfig, merge_overrides

    small = STCConfig.demo().to_dict() if getattr(args, "small", False) else None
    from_file = None
    if getattr(args, "config", None):
        from flows.preflight import read_config_file

        from_file = read_config_file(args.config)
    flags = {k: v for k in ("epochs", "schedule", "dask_address", "review_budget")
             if (v := getattr(args, k, None)) is not None}  # fmt: skip
    if getattr(args, "train_processes", None) is not None:
        flags["processes"] = args.train_processes  # TrainConfig.processes: torch DDP on this machine
    overrides = merge_overrides(small, from_file, flags)
    STCConfig().with_overrides(overrides)  # unknown keys and bad values fail here, before any flow starts
    return overrides or None


def cmd_init(args: argparse.Namespace) -> int:
    from annotations.store import Store
    from pipnet_core.schemes import get_scheme

    store = Store.create(args.store, get_scheme(args.scheme), holdout_fraction=args.holdout_fraction)
    print(f"created store {store.url} for scheme {store.scheme.name} ({store.scheme.num_landmarks} landmarks)")
    return 0


def _print_import(report: dict[str, Any], as_json: bool) -> int:
    """The import's summary (or its JSON report); exit status 1 when no row could be imported."""
    from flows.ingest_steps import summarise_import

    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(summarise_import(report)))
    if report["faces"] == 0:
        print(f"error: {report['source']}: nothing imported, every row was rejected — fix the rows listed "
              f"above and import again", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from annotations.store.migrate import migrate

    print(migrate(args.store).summary())
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from flows.ingest_steps import ingest_source

    report = ingest_source(args.store, args.source, args.format, split=args.split, dataset=args.dataset)
    return _print_import(report, args.json)


def cmd_pool_add(args: argparse.Namespace) -> int:
    from flows.ingest_steps import ingest_source

    report = ingest_source(
        args.store, args.folder, "pool", dataset=args.dataset, detector=args.detector, boxes_file=args.boxes
    )
    return _print_import(report, args.json)


def cmd_rejects(args: argparse.Namespace) -> int:
    from flows.rejects import REJECT_CSV_COLUMNS, find_rejects, format_reject, reject_records, summarise_rejects

    frame = find_rejects(args.store, round=args.round, stage=args.stage, source=args.source)
    records = reject_records(frame)
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(REJECT_CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(records)
    else:
        for row in records:
            print(format_reject(row))
    stages = sorted(find_rejects(args.store)["stage"].unique()) if frame.empty else []
    print(summarise_rejects(frame, stages), file=sys.stderr)
    return EXIT_OK


def _preflight(args: argparse.Namespace, k: int) -> None:
    """Every precondition of round k, checked before Prefect starts (flows.preflight)."""
    from flows.errors import ConfigFileError
    from flows.preflight import preflight_round

    try:
        config = _config(args)
    except (ValueError, TypeError) as e:
        where = args.config or "options"
        raise ConfigFileError(where, f"invalid config: {e}", "fix or remove the field named") from None
    preflight_round(args.store, k, config)




def cmd_round(args: argparse.Namespace) -> int:
    _preflight(args, args.round)
    from flows.stc import check_round_configs, stc_round

    # a rerun's conflicting explicit value: one line (flows.errors), before Prefect starts
    check_round_configs(args.store, range(args.round, args.round + 1), _config(args), args.force_config)
    result = stc_round(args.store, args.round, _config(args), force_config=args.force_config)
    print(json.dumps(result["metrics"], indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _preflight(args, args.start)
    from flows.config import STCConfig
    from flows.stc import check_round_configs, stc

    config = _config(args)
    last = args.rounds if args.rounds is not None else STCConfig().with_overrides(config).policy().rounds
    check_round_configs(args.store, range(args.start, last + 1), config, args.force_config)
    # no --schedule: the --config file's schedule, else the default (confidence)
    stc(args.store, rounds=args.rounds, schedule=args.schedule, config=config, start_round=args.start,
        force_config=args.force_config)  # fmt: skip
    return cmd_report(argparse.Namespace(store=args.store, round=None))


def cmd_review(args: argparse.Namespace) -> int:
    from flows import review_steps

    if args.action == "push":
        out = review_steps.push_round(args.store, args.round, budget=args.budget)
        print(out["message"], file=sys.stderr)
    elif args.action == "pull":
        out = review_steps.pull_corrections(args.store, full=args.full)
    else:
        out = review_steps.review_status(args.store)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_labelstudio_config(args: argparse.Namespace) -> int:
    from annotations.review.config import labeling_config
    from pipnet_core.schemes import get_scheme

    print(labeling_config(get_scheme(args.scheme)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from flows.predict_steps import predict_images

    out = predict_images(args.checkpoint, args.images, args.output, boxes_file=args.boxes, overlay_dir=args.overlay)
    print(f"wrote landmarks of {out['faces']} faces to {args.output} ({out['failed']} images failed)")
    for line in out["skipped"][:5]:
        print(f"  skipped {line}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from flows.ingest_steps import export_labels

    n = export_labels(args.store, args.output, args.format, split=args.split)
    print(f"exported {n} faces to {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from annotations.store import Store

    store = Store.open(args.store)
    rounds = [k for k in store.rounds() if store.read_round_json(k, "metrics.json", default=None)]
    if not rounds:
        print(f"{store.url}: no evaluated round yet; run `pipstc round {args.store} 0`", file=sys.stderr)
        return 1
    k = rounds[-1] if args.round is None else args.round
    try:
        text = store.read_round_file(k, "report.md").decode()
    except FileNotFoundError:
        from flows.report import write_report

        text = write_report(store.url, k)
    print(text)
    print(f"\n(report files: {store.round_path(k)})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(args.store, rounds=args.rounds, schedule=args.schedule, fresh=args.fresh, quick=args.quick)


def cmd_simulate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from annotations.store import Store
    from flows.simulate import estimate_cost, plan_simulation, simulation

    plan = plan_simulation(args.store, schedules=tuple(args.schedules.split(",")),
                           budgets=tuple(float(b) for b in args.budgets.split(",")), rounds=args.rounds,
                           hidden_share=args.hide, small=args.small, quick=args.quick, seed=args.seed)  # fmt: skip
    store = Store.open(args.store)
    faces = len(store.current_labels(splits=("train",), for_training=False))
    cost = estimate_cost(plan, faces, store.scheme.num_landmarks)
    print(f"simulate: {len(plan.arms)} arms x {plan.rounds + 1} rounds on {faces} labeled faces: about "
          f"{cost['training_images'] / 1e6:.2f} M training images at {cost['images_per_s']:.0f} img/s measured here "
          f"= {cost['hours']:.1f} h of training (plus labeling and evaluation)")  # fmt: skip
    out = args.out or f"{str(args.store).rstrip('/')}-simulation"
    result = simulation(args.store, out, asdict(plan))
    print(Path(result["report"]).read_text())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_store

    serve_store(args.store, cron=args.cron, sync_every=args.sync_every, corrections=args.round_after or None)
    return 0


def _add_store_commands(sub: Any) -> None:
    s = sub.add_parser("init", help="create a new store for a landmark scheme")
    s.add_argument("store", help="folder or filesystem URL of the new store")
    s.add_argument("--scheme", default="300w", help="300w, wflw, cofw, aflw or a scheme .json/.yaml file")
    s.add_argument("--holdout-fraction", type=float, default=0.1, help="share of labeled faces kept for evaluation")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("migrate", help="bring a store written by an older pipstc to this schema (keeps a backup)")
    s.add_argument("store")
    s.set_defaults(fn=cmd_migrate)

    s = sub.add_parser("import", help="import human-labeled faces (pts, wflw, coco, csv, labelstudio)")
    s.add_argument("store")
    s.add_argument("source", help="folder (pts) or file (wflw/coco/csv/labelstudio export)")
    s.add_argument("--format", required=True, choices=["pts", "wflw", "coco", "csv", "labelstudio"])
    s.add_argument("--split", choices=["train", "holdout"], help="force a split (default: by a stable hash)")
    s.add_argument("--dataset", help="dataset name recorded with each sample")
    s.add_argument("--json", action="store_true", help="print the import report as JSON")
    s.set_defaults(fn=cmd_import)

    s = sub.add_parser("pool", help="manage the unlabeled pool")
    pool_sub = s.add_subparsers(dest="action", required=True)
    a = pool_sub.add_parser("add", help="add every face found in an image folder (recursive)")
    a.add_argument("store")
    a.add_argument("folder")
    a.add_argument("--detector", default="yuface", choices=["yuface", "haar"], help="embedded face detector")
    a.add_argument("--boxes", help="CSV/JSON of face boxes to use instead of the detector")
    a.add_argument("--dataset")
    a.add_argument("--json", action="store_true", help="print the import report as JSON")
    a.set_defaults(fn=cmd_pool_add)

    s = sub.add_parser("rejects", help="list the inputs the store could not use: file, row/line, reason")
    s.add_argument("store")
    s.add_argument("--round", type=int, help="only rejects of this round (imports are round 0)")
    s.add_argument("--stage", help="only this stage: import, pool, pseudo, review")
    s.add_argument("--source", help="only rejects of this file, or of files under this folder")
    s.add_argument("--csv", action="store_true", help="CSV with stage, round, source, location, reason, ...")
    s.set_defaults(fn=cmd_rejects)


def _add_round_commands(sub: Any) -> None:
    for name, fn, helptext in (
        ("round", cmd_round, "run (or resume) one STC round"),
        ("run", cmd_run, "run round 0 and the STC rounds of a schedule"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("store")
        if name == "round":
            s.add_argument("round", type=int)
        else:
            s.add_argument("--rounds", type=int, help="self-training rounds after round 0 (default: the schedule's "
                           "own: 5 for paper, confidence and plain, 3 for stld, 4 with stld_schedule 'full')")
            s.add_argument("--start", type=int, default=0, help="first round to run (earlier ones are kept)")
        s.add_argument("--schedule", choices=SCHEDULES)
        s.add_argument("--epochs", type=int)
        s.add_argument("--review-budget", type=float, help="share of the pool sent to review per round")
        s.add_argument("--dask-address", help="label the pool on an existing Dask scheduler")
        s.add_argument("--train-processes", type=int, metavar="N",
                       help="train each round with N torch DDP processes on this machine (gloo on CPU, nccl on GPU)")
        s.add_argument("--config", help="JSON file of STC config overrides")
        s.add_argument("--small", action="store_true", help="the demo's small model (minutes, not hours)")
        s.add_argument("--force-config", action="store_true",
                       help="rerun of a started round: use the values given here, not its saved config")  # fmt: skip
        s.set_defaults(fn=fn)



def _add_review_commands(sub: Any) -> None:
    s = sub.add_parser("review", help="faces for people: push to / pull from Label Studio, status")
    s.add_argument("action", choices=["push", "pull", "status"])
    s.add_argument("store")
    s.add_argument("--round", type=int, default=None, help="push: the round whose pseudo-labels to send")
    s.add_argument(
        "--budget", type=float, help="push: the round's budget, a share of the pool (default: the round's config)"
    )
    s.add_argument(
        "--full", action="store_true", help="pull: compare every task with the store (finds deleted annotations/tasks)"
    )
    s.set_defaults(fn=cmd_review)

    s = sub.add_parser("labelstudio", help="Label Studio helpers")
    ls_sub = s.add_subparsers(dest="action", required=True)
    c = ls_sub.add_parser("config", help="print the labeling config XML of a scheme")
    c.add_argument("--scheme", default="300w")
    c.set_defaults(fn=cmd_labelstudio_config)



def _add_simulate_command(sub: Any) -> None:
    s = sub.add_parser("simulate", help="the rounds on your own labels, part hidden as a pool: which schedule pays off")
    s.add_argument("store")
    s.add_argument("--out", help="work folder for the simulated stores and the report (default: STORE-simulation)")
    s.add_argument("--schedules", default="paper,confidence,stld", help="comma-separated schedules to compare")
    s.add_argument("--budgets", default="0,0.05", help="comma-separated review budgets (share of the pool per round)")
    s.add_argument("--rounds", type=int, default=3, help="self-training rounds after round 0")
    s.add_argument("--hide", type=float, default=0.8, help="share of the labeled train faces hidden as the pool")
    s.add_argument("--small", action="store_true", help="the demo's small model (minutes, not hours)")
    s.add_argument("--quick", action="store_true", help="tiny model, one round: a smoke test")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_simulate)


def _add_model_commands(sub: Any) -> None:
    s = sub.add_parser("predict", help="landmarks for images with a trained checkpoint")
    s.add_argument("checkpoint", help="a round's model.pt")
    s.add_argument("images", help="image file or folder")
    s.add_argument("--output", required=True, help=".csv, .json or .parquet")
    s.add_argument("--boxes", help="CSV/JSON of face boxes (default: the embedded detector)")
    s.add_argument("--overlay", help="folder for images with the landmarks drawn")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("export", help="export the current labels (pts folder, coco or csv)")
    s.add_argument("store")
    s.add_argument("output")
    s.add_argument("--format", required=True, choices=["pts", "coco", "csv"])
    s.add_argument("--split", choices=["train", "holdout", "pool"])
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("report", help="print a round's report (default: the latest)")
    s.add_argument("store")
    s.add_argument("--round", type=int)
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("demo", help="synthetic faces, round 0 + STC rounds, review step, report")
    s.add_argument("--store", default="demo-store", help="where the demo store and images go")
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--schedule", default="confidence", choices=SCHEDULES)
    s.add_argument("--fresh", action="store_true", help="delete an existing demo store first")
    s.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, about a minute)")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("serve", help="one-box scheduling: STC rounds on a cron and review sync, via flow.serve")
    s.add_argument("store")
    s.add_argument("--cron", default="0 2 * * *", help="when to run a round (UTC)")
    s.add_argument("--sync-every", type=int, default=300, help="seconds between review syncs")
    s.add_argument(
        "--round-after", type=int, default=20, metavar="N",
        help="also start a round once N corrections arrived within a day (0: the cron only)",
    )  # fmt: skip
    s.set_defaults(fn=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pipstc",
        description="Semi-supervised facial landmark labeling: PIPNet + self-training with curriculum, "
        "a Parquet label store, review in Label Studio, orchestrated by Prefect.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (anywhere on the line)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_store_commands(sub)
    _add_round_commands(sub)
    _add_review_commands(sub)
    _add_model_commands(sub)
    _add_simulate_command(sub)
    return p


def _report_error(exc: BaseException, debug: bool) -> int:
    """Print ``error: <where>: <what> — <fix>`` (the traceback first with --debug); return the exit status."""
    from flows.errors import explain

    if debug:
        traceback.print_exception(exc)
    lines, code = explain(exc)
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted after the command too (`pipstc import ... --debug`), where a user types it
    debug = "--debug" in argv or os.environ.get("PIPSTC_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one line and an exit status
        return _report_error(e, debug)


if __name__ == "__main__":
    raise SystemExit(main())
