"""Training speed: pipstc's training loop against the bare training step and the machine, in one run.

Rows, measured side by side and alternated ``--rounds`` times (the machine is shared, so only the
ratios measured together mean anything; reference: docs/speed.md section 1):

* **matmul**: ``torch.mm`` of 4096^3 fp32, GFLOP/s (the practical ceiling of these CPUs);
* **bare step**: forward, PIPNet loss, backward and Adam on tensors already in memory (normalised,
  targets built), with the loop's own settings (channels_last, fused Adam, compile when asked);
* **loop**: :func:`pipnet_core.train.train` end to end on synthetic 256 px JPEG faces on disk: the
  crop cache, augmentation (official probabilities), targets, normalisation, the step, the
  per-epoch checkpoint; timed on the epochs after the first (which reads the JPEGs);
* **paired**: the loop's own pieces (its loader, the normalisation, the step) stepped in turn with
  the bare step, one step each, so both see the same load; this ratio is the result on a shared
  machine, where load swings between rows are larger than the difference measured.

Each row prints images/s, the step's GFLOP/s (3 x the forward FLOPs counted by
``torch.utils.flop_counter``), the share of the matmul rate, and the CPU share it got (process and
loader-worker CPU time / wall time / threads). The per-round ratio loop / bare step is the result.
``--profile`` adds where a loop step's time goes (loader parts per batch; forward, backward and
optimiser inside the step; the for-loop Adam beside the fused one). ``--memory`` adds the bare step
with freed memory kept in the heap (``TrainConfig.reuse_memory``, pipnet_core/heap.py; the loop's
default, used by every other row) against glibc's defaults, in alternating blocks: images/s, CPU
work, minor page faults and kernel CPU per step, resident memory.

    python bench/bench_train.py                     # 256 px ResNet-18, batch 16, 3 rounds: ~10 min on 2 idle cores
    python bench/bench_train.py --profile           # and the breakdown
    python bench/bench_train.py --compile           # both rows with torch.compile (compile time printed)
    python bench/bench_train.py --memory --rounds 3 # and freed memory kept vs returned, alternated
    python bench/bench_train.py --quick             # smoke run: 64 px, narrow net, 1 round (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipnet_core.augment import AugmentConfig, augment  # noqa: E402
from pipnet_core.config import TrainConfig  # noqa: E402
from pipnet_core.data import FaceDataset, TargetCollate  # noqa: E402
from pipnet_core.heap import reused_memory  # noqa: E402
from pipnet_core.loader import EpochSampler, make_loader  # noqa: E402
from pipnet_core.loss import pip_loss, targets_to_torch  # noqa: E402
from pipnet_core.meanface import build_neighbour_table  # noqa: E402
from pipnet_core.model import create_model, normalise_batch  # noqa: E402
from pipnet_core.schemes import get_scheme  # noqa: E402
from pipnet_core.targets import build_targets  # noqa: E402
from pipnet_core.train import train  # noqa: E402

SCHEME = get_scheme("300w")


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the loader workers), seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from /proc (loader workers are not reaped until the end)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_faces(folder: Path, count: int, size: int) -> tuple[list[Path], np.ndarray]:
    """``count`` synthetic faces as ``size`` px JPEGs in ``folder``; paths and (count, 68, 2) landmarks, pixels."""
    from synthetic_faces import DOMAINS, iter_faces

    domain = dataclasses.replace(DOMAINS["studio"], image_size=max(size, 64))
    folder.mkdir(parents=True, exist_ok=True)
    paths, landmarks = [], []
    for k, (img, lm, _) in enumerate(iter_faces(count, domain, seed=7)):
        if img.shape[0] != size:
            lm = lm * size / img.shape[0]
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        path = folder / f"face{k:05d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
        landmarks.append(lm)
    return paths, np.asarray(landmarks, dtype=np.float64)


def face_dataset(paths: list[Path], landmarks: np.ndarray, size: int) -> FaceDataset:
    """The faces as the round's train step builds them: whole-image crop boxes, crop cache on."""
    boxes = np.tile([0.0, 0.0, float(size), float(size)], (len(paths), 1))
    return FaceDataset(paths, boxes, landmarks, input_size=size, flip=SCHEME.flip, cache_crops=True)


def forward_gflop(config: TrainConfig) -> float:
    """GFLOP of one image's forward pass (2 x multiply-adds, ``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(68, base_width=config.base_width, input_size=config.input_size, net_stride=config.net_stride)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, config.input_size, config.input_size))
    return counter.get_total_flops() / 1e9


def matmul_row(n: int, seconds: float, threads: int) -> dict[str, float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    calls, wall0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - wall0 < seconds:
        torch.mm(a, b)
        calls += 1
    wall = time.perf_counter() - wall0
    return {"gflops": 2 * n**3 * calls / wall / 1e9, "share": (cpu_seconds() - cpu0) / wall / threads}


class BareStep:
    """The training step on in-memory tensors, built like the loop's (:func:`pipnet_core.train._start`)."""

    def __init__(self, config: TrainConfig, fused: bool = True) -> None:
        rng = np.random.default_rng(0)
        b, s = config.batch_size, config.input_size
        table = build_neighbour_table(SCHEME.meanface_array, config.num_nb)
        landmarks = SCHEME.meanface_array[None] + rng.normal(0, 0.02, size=(b, 68, 2))
        self.targets = targets_to_torch(build_targets(landmarks, ["std"] * b, table.nb, config.grid))
        images = rng.integers(0, 255, size=(b, s, s, 3), dtype=np.uint8)
        self.images = normalise_batch(images, channels_last=config.uses_channels_last)
        torch.manual_seed(config.seed)
        self.model = create_model(68, config.num_nb, config.backbone, config.base_width, s, config.net_stride).train()
        if config.uses_channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        kw = {"fused": True} if fused else {}
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=5e-4, **kw)
        self.net = torch.compile(self.model, dynamic=False) if config.compile else self.model
        self.batch = b

    def step(self, split: dict[str, float] | None = None) -> None:
        t0 = time.process_time()  # CPU seconds (all threads), for the breakdown
        loss, _ = pip_loss(self.net(self.images), self.targets)
        t1 = time.process_time()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.process_time()
        self.opt.step()
        if split is not None:
            split["forward"] += t1 - t0
            split["backward"] += t2 - t1
            split["optimiser"] += time.process_time() - t2


def bare_row(bare: BareStep, steps: int, threads: int) -> dict[str, float]:
    bare.step()  # warm-up: allocator, kernel choice (and the compile, done before the first row)
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        bare.step()
    wall = time.perf_counter() - wall0
    return {"ips": steps * bare.batch / wall, "share": (cpu_seconds() - cpu0) / wall / threads}


def loop_row(config: TrainConfig, dataset: FaceDataset, epochs: int, threads: int, work: Path) -> dict[str, float]:
    """``train()`` for 1 + ``epochs`` epochs, timed on the epochs after the first.

    images/s from the loop's own per-epoch record (loader, augmentation, targets, normalisation and
    step: everything between the epoch's start and its checkpoint); the checkpoint write is timed
    apart (it costs the same whatever the epoch's length, so its share depends on the dataset size).
    """
    marks: list[tuple[float, float, dict]] = []
    cfg = dataclasses.replace(config, epochs=1 + epochs, milestones=())

    def log(record: dict) -> None:
        marks.append((time.perf_counter(), cpu_seconds(), record))

    out = work / "loop.pt"
    out.unlink(missing_ok=True)
    train(cfg, dataset, SCHEME, out, resume=False, progress=False, log=log)
    timed = marks[1:]
    seconds = sum(m[2]["seconds"] for m in timed)
    images = sum(m[2]["images_per_s"] * m[2]["seconds"] for m in timed)
    wall = marks[-1][0] - marks[0][0]
    share = (marks[-1][1] - marks[0][1]) / wall / threads  # workers' CPU counts once they are reaped
    return {"ips": images / seconds, "share": share, "checkpoint_s": (wall - seconds) / len(timed)}


class LoopStep:
    """One step of the training loop as :func:`pipnet_core.train._train_epoch` runs it, one batch at a time.

    The same pieces in the same order: the run's loader (crop cache, augmentation, targets), the
    table normalisation, the step. Stepping it in turn with :class:`BareStep` gives paired timings
    that a shared machine's load swings hit alike.
    """

    def __init__(self, config: TrainConfig, dataset: FaceDataset) -> None:
        table = build_neighbour_table(SCHEME.meanface_array, config.num_nb)
        ds = dataset.with_augment(config.augment)
        sampler = EpochSampler(len(ds), config.seed)
        workers = config.resolved_num_workers(cuda=False)
        self.loader = make_loader(ds, sampler, config.batch_size, TargetCollate(table.nb, config.grid), workers, False)
        self.bare = BareStep(config)  # its model and optimiser, fed by the loader instead
        self.config, self.epoch, self.it = config, 0, iter(())

    def _batch(self) -> object:
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.loader.sampler.set_epoch(self.epoch)
            self.it = iter(self.loader)
            return next(self.it)

    def worker_cpu(self) -> float:
        """CPU seconds the loader's live workers have used (0 without workers)."""
        return sum(proc_cpu(w.pid) for w in getattr(self.it, "_workers", []) if w.pid)

    def step(self) -> None:
        batch = self._batch()
        images = normalise_batch(batch.images, channels_last=self.config.channels_last)
        b = self.bare
        loss, _ = pip_loss(b.net(images), batch.targets, self.config.cls_weight, self.config.reg_weight)
        b.opt.zero_grad(set_to_none=True)
        loss.backward()
        b.opt.step()


def paired_row(loop: LoopStep, bare: BareStep, steps: int, threads: int) -> dict[str, float]:
    """Loop and bare steps in turn: images/s of each over the same stretch of time, and their CPU work.

    On a shared machine the wall-clock rates swing with the load; the CPU seconds a step costs do
    not. ``idle_ratio`` is the loop / bare ratio the CPU work implies on idle cores, counting all of
    the loop's extra work as serial (it adds its full CPU time to the step's wall time): conservative.
    """
    loop.step()
    bare.step()
    wall = {"loop": 0.0, "bare": 0.0}
    cpu = {"loop": 0.0, "bare": 0.0}
    w0 = loop.worker_cpu()
    for _ in range(steps):
        for key, fn in (("loop", loop.step), ("bare", bare.step)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[key] += time.perf_counter() - t0
            cpu[key] += time.process_time() - c0
    cpu["loop"] += loop.worker_cpu() - w0
    b = bare.batch * steps
    extra = max(cpu["loop"] - cpu["bare"], 0.0)
    return {"loop": b / wall["loop"], "bare": b / wall["bare"], "loop_cpu": b / cpu["loop"],
            "bare_cpu": b / cpu["bare"], "share": (cpu["loop"] + cpu["bare"]) / sum(wall.values()) / threads,
            "idle_ratio": (cpu["bare"] / threads) / (cpu["bare"] / threads + extra)}  # fmt: skip


def timed_ms(fn: Callable[[], object], n: int) -> float:
    """CPU milliseconds per call (all threads): unlike wall time, not inflated by other processes' load."""
    fn()
    c0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - c0) / n * 1e3


def profile(config: TrainConfig, dataset: FaceDataset, bare: BareStep, steps: int) -> list[str]:
    """Where a loop step's time goes: the loader's parts per batch, then the step's parts."""
    b = config.batch_size
    ds = dataset.with_augment(AugmentConfig())
    ds.precache()
    items = [ds[(1, i % len(ds))] for i in range(b)]
    table = build_neighbour_table(SCHEME.meanface_array, config.num_nb)
    collate = TargetCollate(table.nb, config.grid, ds.tasks)
    batch = collate(items)
    crop = ds.load_crop(0)
    lm = ds.normalised_landmarks()[0]
    counter = iter(range(10**9))
    mean, inv = torch.tensor([0.485, 0.456, 0.406]) * 255.0, 1.0 / (torch.tensor([0.229, 0.224, 0.225]) * 255.0)
    parts = {
        "augment (official probabilities)": timed_ms(
            lambda: [
                augment(crop, lm, np.random.default_rng([0, 0, next(counter)]), SCHEME.flip, AugmentConfig())
                for _ in range(b)
            ],
            20,
        ),  # fmt: skip
        "cached crop + augment (__getitem__)": timed_ms(lambda: [ds[(2, i % len(ds))] for i in range(b)], 20),
        "collate: targets + stack": timed_ms(lambda: collate(items), 20),
        "normalise (table look-up)": timed_ms(lambda: normalise_batch(batch.images, channels_last=True), 20),
        "normalise, broadcast arithmetic (before)": timed_ms(
            lambda: ((batch.images.float() - mean) * inv).permute(0, 3, 1, 2), 20
        ),
    }
    split = dict.fromkeys(("forward", "backward", "optimiser"), 0.0)
    for _ in range(steps):
        bare.step(split)
    loop_adam = BareStep(config, fused=False)
    loop_adam.step()
    split_loop = dict.fromkeys(("forward", "backward", "optimiser"), 0.0)
    for _ in range(steps):
        loop_adam.step(split_loop)
    step_ms = 1e3 * sum(split.values()) / steps
    lines = [f"| loader part, per batch of {b} | CPU ms | % of a step's CPU |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {100 * v / step_ms:.1f}% |" for k, v in parts.items()]
    lines += ["", "| step part | CPU ms (fused Adam) | CPU ms (for-loop Adam) |", "|---|---|---|"]
    lines += [f"| {k} | {1e3 * split[k] / steps:.0f} | {1e3 * split_loop[k] / steps:.0f} |" for k in split]
    return lines


def _compile_vs_eager(config: TrainConfig, compiled: BareStep, steps: int, threads: int) -> list[str]:
    """The compiled bare step against the eager one, stepped in turn (wall and CPU work)."""
    eager = BareStep(dataclasses.replace(config, compile=False))
    eager.step()
    wall, cpu = {"c": 0.0, "e": 0.0}, {"c": 0.0, "e": 0.0}
    for _ in range(steps):
        for key, b in (("c", compiled), ("e", eager)):
            t0, c0 = time.perf_counter(), time.process_time()
            b.step()
            wall[key] += time.perf_counter() - t0
            cpu[key] += time.process_time() - c0
    n = steps * compiled.batch
    return [
        "| bare step, in turn | eager img/s | compiled img/s | compiled / eager, wall | compiled / eager, CPU work |",
        "|---|---|---|---|---|",
        f"| {steps} steps each | {n / wall['e']:.2f} | {n / wall['c']:.2f} | {wall['e'] / wall['c']:.3f} "
        f"| {cpu['e'] / cpu['c']:.3f} |",
    ]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_rows(config: TrainConfig, rounds: int, steps: int) -> list[str]:
    """The bare step with freed memory kept in the heap against glibc's defaults, in alternating blocks.

    The setting is process-wide, so the two cannot alternate step by step (leaving it returns the
    memory, and the next kept step faults it in again): each block runs two untimed steps (the heap
    grows until freed blocks fit the next request, pipnet_core/heap.py), then ``steps`` timed ones.
    """
    bare = BareStep(config)
    totals = {m: dict.fromkeys(("wall", "user", "sys", "faults"), 0.0) for m in ("kept", "returned")}
    rss = {"kept": 0.0, "returned": 0.0}
    for _ in range(rounds):
        for mode in ("kept", "returned"):
            with reused_memory(mode == "kept") as on:
                assert on == (mode == "kept"), "glibc malloc settings could not be changed here"
                bare.step()
                bare.step()
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                for _ in range(steps):
                    bare.step()
                r1, t = resource.getrusage(resource.RUSAGE_SELF), totals[mode]
                t["wall"] += time.perf_counter() - t0
                t["user"] += r1.ru_utime - r0.ru_utime
                t["sys"] += r1.ru_stime - r0.ru_stime
                t["faults"] += r1.ru_minflt - r0.ru_minflt
                rss[mode] = max(rss[mode], _rss_mib())
    n = rounds * steps
    lines = [
        f"| bare step, {rounds} alternations of {steps} steps | img/s | images per CPU-second | minor faults / step "
        "| kernel CPU s / step | user CPU s / step | resident MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, t in totals.items():
        lines.append(
            f"| freed memory {mode} | {n * bare.batch / t['wall']:.2f} | {n * bare.batch / (t['user'] + t['sys']):.2f} "
            f"| {t['faults'] / n:,.0f} | {t['sys'] / n:.3f} | {t['user'] / n:.3f} | {rss[mode]:,.0f} |"
        )
    k, r = totals["kept"], totals["returned"]
    lines += ["", f"kept / returned: **{r['wall'] / k['wall']:.3f}** wall, "
              f"**{(r['user'] + r['sys']) / (k['user'] + k['sys']):.3f}** CPU work"]  # fmt: skip
    return lines


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="alternations of the rows")
    p.add_argument("--steps", type=int, default=8, help="bare steps per round")
    p.add_argument("--faces", type=int, default=64, help="faces on disk (loop epochs = faces / batch steps)")
    p.add_argument("--epochs", type=int, default=2, help="timed loop epochs per round (after one warm epoch)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: TrainConfig's auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile in both rows")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--profile", action="store_true", help="also break a step down")
    p.add_argument("--memory", action="store_true", help="also freed memory kept vs returned (bare step)")
    p.add_argument("--no-reuse-memory", action="store_true", help="glibc's malloc defaults in the main rows")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, width 8, 1 round")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    return p.parse_args()


def main() -> None:
    args = _args()
    threads = torch.get_num_threads()
    if args.quick:
        args.rounds, args.steps, args.faces, args.epochs = 1, 2, 16, 1
        config = TrainConfig(input_size=64, base_width=8, net_stride=16, batch_size=8)
    else:
        config = TrainConfig()
    config = dataclasses.replace(
        config,
        num_workers=args.workers,
        compile=args.compile,
        channels_last=not args.nchw,
        lr=1e-4,
        reuse_memory=not args.no_reuse_memory,
    )
    gflop = forward_gflop(config)
    mm_n = 1024 if args.quick else 4096
    memory = memory_rows(config, args.rounds, args.steps) if args.memory else []
    with tempfile.TemporaryDirectory() as tmp, reused_memory(config.reuse_memory):
        paths, landmarks = write_faces(Path(tmp) / "faces", args.faces, config.input_size)
        dataset = face_dataset(paths, landmarks, config.input_size)
        bare = BareStep(config)
        t0 = time.perf_counter()
        bare.step()
        first = time.perf_counter() - t0
        looped = LoopStep(config, dataset)
        rows = []
        for r in range(args.rounds):
            mm = matmul_row(mm_n, 0.5 if args.quick else 3.0, threads)
            step = bare_row(bare, args.steps, threads)
            loop = loop_row(config, dataset, args.epochs, threads, Path(tmp))
            pair = paired_row(looped, bare, args.steps, threads)
            rows.append((mm, step, loop, pair))
            print(f"round {r + 1}: matmul {mm['gflops']:.0f} GFLOP/s, bare {step['ips']:.2f} img/s, "
                  f"train() {loop['ips']:.2f} img/s ({loop['ips'] / step['ips']:.3f}), paired loop/bare "
                  f"{pair['loop'] / pair['bare']:.3f} wall, {pair['loop_cpu'] / pair['bare_cpu']:.3f} CPU work, "
                  f"{pair['idle_ratio']:.3f} idle estimate", flush=True)  # fmt: skip
        lines = _table(config, args, rows, gflop, threads, first) if rows else [f"# Profile, {config.input_size} px"]
        if config.compile:
            lines += ["", *_compile_vs_eager(config, bare, args.steps, threads)]
        if args.profile:
            lines += ["", *profile(config, dataset, bare, max(2, args.steps // 2))]
        if memory:
            lines += ["", *memory]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")


def _table(
    config: TrainConfig, args: argparse.Namespace, rows: list, gflop: float, threads: int, first: float
) -> list[str]:
    workers = config.resolved_num_workers(cuda=False)
    compiled = ", torch.compile" if config.compile else ""
    kept = ", freed memory kept" if config.reuse_memory else ", glibc malloc defaults"
    mode = f"{'channels_last' if config.channels_last else 'NCHW'}, fused Adam{compiled}{kept}"
    lines = [
        f"# Training loop vs bare step, {config.input_size} px, width {config.base_width}, batch {config.batch_size}"
        f"{' (QUICK smoke run: not a measurement)' if args.quick else ''}",
        "",
        f"- torch {torch.__version__}, {threads} threads, {mode}, loader workers {workers}; "
        f"forward {gflop:.3f} GFLOP/image; first step (incl. any compile) {first:.1f} s",
        "",
        "| round | matmul GFLOP/s (share) | bare step img/s | GFLOP/s (% of matmul) | share "
        "| train() img/s | GFLOP/s (% of matmul) | share | checkpoint s/epoch | train() / bare "
        "| paired: loop / bare img/s (share) | paired loop / bare, wall | per CPU-second | **idle estimate** |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, (mm, step, loop, pair) in enumerate(rows, 1):
        sf, lf, mf = 3 * gflop * step["ips"], 3 * gflop * loop["ips"], mm["gflops"]
        lines.append(
            f"| {r} | {mf:.0f} ({mm['share']:.2f}) | {step['ips']:.2f} | {sf:.0f} ({100 * sf / mf:.0f}%) "
            f"| {step['share']:.2f} | {loop['ips']:.2f} | {lf:.0f} ({100 * lf / mf:.0f}%) | {loop['share']:.2f} "
            f"| {loop['checkpoint_s']:.2f} | {loop['ips'] / step['ips']:.3f} "
            f"| {pair['loop']:.2f} / {pair['bare']:.2f} ({pair['share']:.2f}) | {pair['loop'] / pair['bare']:.3f} "
            f"| {pair['loop_cpu'] / pair['bare_cpu']:.3f} | **{pair['idle_ratio']:.3f}** |"
        )
    ratios = [loop["ips"] / step["ips"] for _, step, loop, _ in rows]
    paired = [pair["loop"] / pair["bare"] for *_, pair in rows]
    idle = [pair["idle_ratio"] for *_, pair in rows]
    lines += [
        "",
        f"medians: train() / bare step (rows side by side) {statistics.median(ratios):.3f}; paired loop / bare step "
        f"(steps in turn) {statistics.median(paired):.3f} wall; idle-core estimate from CPU work "
        f"**{statistics.median(idle):.3f}** (target >= 0.95)",
    ]
    return lines


if __name__ == "__main__":
    main()
