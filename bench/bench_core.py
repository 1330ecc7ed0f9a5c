"""PIPNet-ResNet18 speed on this machine, as fractions of the fp32 matmul rate measured in the same run.

Measures, at 256x256 with N = 68 landmarks:

* the machine's practical fp32 ceiling: ``torch.mm`` of 4096^3 (GFLOP/s);
* the model's multiply-adds per image, counted with ``torch.utils.flop_counter`` (2.420 GMAC
  expected, docs/speed.md section 2);
* forward throughput at batch 1, 8 and 32: torch eager fp32 (NCHW), channels_last, bf16 autocast,
  and ONNX Runtime (the pool-labeling path), each as images/s, GFLOP/s and % of the matmul rate;
  batch-1 latency;
* pool labeling end to end (``Predictor``: read JPEGs, crop, ONNX Runtime, decode, confidence)
  against the bare ONNX Runtime forward on the same batches;
* a training step (forward, PIPNet loss, backward, Adam) at batch 16, images/s (3x forward FLOPs).

Every timing is the median of rounds, each at least ``min_time`` seconds; the CPU share each got
(process CPU time / wall time / threads) is printed beside it, because another process on the same
cores halves the numbers (docs/speed.md section 5). Run with nothing else on the machine.

    python bench/bench_core.py            # full, about 4-5 minutes on 2 cores
    python bench/bench_core.py --quick    # smoke test, well under a minute
"""

from __future__ import annotations

import argparse
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

from pipnet_core.export import onnx_bytes  # noqa: E402
from pipnet_core.loss import pip_loss, targets_to_torch  # noqa: E402
from pipnet_core.meanface import build_neighbour_table  # noqa: E402
from pipnet_core.model import PIPNet, create_model, normalise_batch  # noqa: E402
from pipnet_core.predict import Predictor  # noqa: E402
from pipnet_core.schemes import get_scheme  # noqa: E402
from pipnet_core.targets import build_targets  # noqa: E402

SIZE = 256


def timed(fn: Callable[[], object], min_time: float, rounds: int, threads: int) -> tuple[float, float]:
    """Median seconds per call over ``rounds`` rounds of at least ``min_time`` s; and the mean CPU share."""
    fn()  # warm-up: allocations, kernel selection, ORT arena
    per_call, shares = [], []
    for _ in range(rounds):
        calls, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        while True:
            fn()
            calls += 1
            wall = time.perf_counter() - wall0
            if wall >= min_time:
                break
        per_call.append(wall / calls)
        shares.append((time.process_time() - cpu0) / wall / threads)
    return statistics.median(per_call), statistics.mean(shares)


def matmul_gflops(n: int, min_time: float, rounds: int, threads: int) -> tuple[float, float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        sec, share = timed(lambda: torch.mm(a, b), min_time, rounds, threads)
    return 2 * n**3 / sec / 1e9, share


def count_macs(model: PIPNet) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, SIZE, SIZE))
    return counter.get_total_flops() / 2


def forward_fns(model: PIPNet, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    import onnxruntime as ort

    cl = create_model(68, input_size=SIZE).eval()
    cl.load_state_dict(model.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_bytes(model), opts, providers=["CPUExecutionProvider"])

    def eager(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    def channels_last(x: np.ndarray) -> object:
        with torch.inference_mode():
            return cl(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

    def bf16(x: np.ndarray) -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(torch.from_numpy(x))

    def onnxruntime(x: np.ndarray) -> object:
        return session.run(None, {"image": x})

    return {
        "torch eager fp32 (NCHW)": eager,
        "torch channels_last fp32": channels_last,
        "torch bf16 autocast": bf16,
        "ONNX Runtime fp32": onnxruntime,
    }


def train_step_rate(channels_last: bool, min_time: float, rounds: int, threads: int) -> tuple[float, float]:
    scheme = get_scheme("300w")
    table = build_neighbour_table(scheme.meanface_array)
    model = create_model(68, input_size=SIZE).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 255, size=(16, SIZE, SIZE, 3), dtype=np.uint8))
    landmarks = scheme.meanface_array[None] + rng.normal(0, 0.02, size=(16, 68, 2))
    targets = targets_to_torch(build_targets(landmarks, ["std"] * 16, table.nb, 8))

    def step() -> None:
        loss, _ = pip_loss(model(normalise_batch(images, channels_last=channels_last)), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec, share = timed(step, min_time, rounds, threads)
    return 16 / sec, share


def pool_labeling(model: PIPNet, count: int, threads: int, min_time: float, rounds: int) -> tuple[float, float, float]:
    """End-to-end Predictor img/s, bare ORT img/s on the same batch size, and the Predictor's CPU share."""
    scheme = get_scheme("300w")
    table = build_neighbour_table(scheme.meanface_array)
    predictor = Predictor(model, table, scheme, backend="onnx", num_threads=threads, num_workers=2)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(count):
            path = Path(tmp) / f"img{k}.jpg"
            cv2.imwrite(str(path), rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8))
            paths.append(path)
        boxes = np.tile([200.0, 100.0, 460.0, 380.0], (count, 1))
        sec, share = timed(lambda: predictor.predict(paths, boxes, batch_size=32), min_time, rounds, threads)
        x = np.random.default_rng(2).standard_normal((32, 3, SIZE, SIZE)).astype(np.float32)
        bare, _ = timed(lambda: predictor.run_normalised(x), min_time, rounds, threads)
    return count / sec, 32 / bare, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: small matmul, fewer batches and rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ORT threads")
    parser.add_argument("--out", type=Path, help="also write the markdown to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    min_time, rounds = (0.3, 1) if args.quick else (3.0, 3)
    batches = (1, 8) if args.quick else (1, 8, 32)
    t_start = time.perf_counter()

    mm_n = 1024 if args.quick else 4096
    mm, mm_share = matmul_gflops(mm_n, min_time, rounds, args.threads)
    torch.manual_seed(0)
    model = create_model(68, input_size=SIZE).eval()
    macs = count_macs(model)
    gflop_per_img = 2 * macs / 1e9

    note = " (QUICK smoke run: not a measurement)" if args.quick else ""
    lines = [
        f"# PIPNet-ResNet18 256x256, N=68 — {args.threads} threads{note}",
        "",
        f"- torch {torch.__version__}; model MACs/image (flop_counter): **{macs / 1e9:.3f} G** "
        f"({gflop_per_img:.3f} GFLOP)",
        f"- fp32 matmul rate, torch.mm {mm_n}^3: **{mm:.1f} GFLOP/s** (CPU share {mm_share:.2f})",
        "",
        "| mode | batch | img/s | ms/img | GFLOP/s | % of matmul rate | CPU share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, fn in forward_fns(model, args.threads).items():
        for bs in batches:
            x = np.random.default_rng(bs).standard_normal((bs, 3, SIZE, SIZE)).astype(np.float32)
            sec, share = timed(lambda fn=fn, x=x: fn(x), min_time, rounds, args.threads)
            ips = bs / sec
            lines.append(
                f"| {name} | {bs} | {ips:.1f} | {1000 / ips:.1f} | {ips * gflop_per_img:.0f} | "
                f"{100 * ips * gflop_per_img / mm:.0f}% | {share:.2f} |"
            )
            print(lines[-1], flush=True)

    count = 32 if args.quick else 128
    e2e, bare, share = pool_labeling(model, count, args.threads, min_time, rounds)
    lines += [
        "",
        "| pool labeling (Predictor, ONNX Runtime, batch 32) | img/s | vs bare ORT forward | CPU share |",
        "|---|---|---|---|",
        f"| {count} JPEGs 640x480: read, crop, forward, decode, confidence | {e2e:.1f} | "
        f"{100 * e2e / bare:.0f}% of {bare:.1f} img/s | {share:.2f} |",
    ]
    print(lines[-1], flush=True)

    lines += [
        "",
        "| training step (fwd + loss + bwd + Adam), batch 16 | img/s | GFLOP/s (3x fwd) | % of matmul rate "
        "| CPU share |",
        "|---|---|---|---|---|",
    ]
    for cl in (False, True):
        ips, share = train_step_rate(cl, min_time if not args.quick else 0.1, rounds, args.threads)
        flops = 3 * ips * gflop_per_img
        lines.append(
            f"| eager fp32 {'channels_last' if cl else 'NCHW'} | {ips:.1f} | {flops:.0f} | "
            f"{100 * flops / mm:.0f}% | {share:.2f} |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"Total benchmark time {time.perf_counter() - t_start:.0f} s."]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
