"""GPU check of pipstc's training and pool-labeling paths (run by bench/gpu_check.sh; a few minutes).

1. Agreement: five fp32 training steps (PIPNet-ResNet18, 256 px, batch 16, the loop's own pieces:
   table normalisation, PIPNet loss, fused Adam) on CUDA beside the same five steps on the CPU from
   the same initial weights and batches; TF32 is off for this part, so both run true fp32. Every
   step's loss must agree to 1e-3 relative.
2. Training rate on CUDA: the bare step (fp32 and bf16 autocast, channels_last) at batch 64 and 256,
   and :func:`pipnet_core.train.train` end to end (loader workers, pinned non-blocking copies) at
   batch 64, images/s.
3. Pool-labeling rate on CUDA: :class:`pipnet_core.predict.Predictor` (torch backend) end to end on
   JPEG files (read, crop, forward, decode, confidence) and the bare forward, at batch 64 and 256.

Prints a markdown table (and writes it to ``--out``). ``--smoke`` runs every part on the CPU at toy
sizes, to check the script itself on a machine without a GPU (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_train as bt  # noqa: E402

from pipnet_core.config import TrainConfig  # noqa: E402
from pipnet_core.loss import pip_loss, targets_to_torch  # noqa: E402
from pipnet_core.meanface import build_neighbour_table  # noqa: E402
from pipnet_core.model import create_model, normalise_batch  # noqa: E402
from pipnet_core.predict import Predictor  # noqa: E402
from pipnet_core.targets import build_targets  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agreement(config: TrainConfig, device: torch.device, steps: int = 5) -> list[tuple[float, float]]:
    """Per-step (CPU loss, device loss) of the same steps from the same init and batches."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(0)
    b, s = config.batch_size, config.input_size
    table = build_neighbour_table(bt.SCHEME.meanface_array, config.num_nb)
    batches = []
    for _ in range(steps):
        images = rng.integers(0, 255, size=(b, s, s, 3), dtype=np.uint8)
        landmarks = bt.SCHEME.meanface_array[None] + rng.normal(0, 0.03, size=(b, 68, 2))
        batches.append((images, targets_to_torch(build_targets(landmarks, ["std"] * b, table.nb, config.grid))))
    torch.manual_seed(0)
    init = create_model(68, config.num_nb, config.backbone, config.base_width, s, config.net_stride).state_dict()
    losses = {}
    for where in (torch.device("cpu"), device):
        model = create_model(68, config.num_nb, config.backbone, config.base_width, s, config.net_stride)
        model.load_state_dict(init)
        model = model.to(where, memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4, fused=True)
        losses[where.type] = []
        for images, targets in batches:
            x = normalise_batch(images, channels_last=True, device=where)
            loss, _ = pip_loss(model(x), targets.to(where))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[where.type].append(float(loss))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return list(zip(losses["cpu"], losses[device.type], strict=True))


def step_rate(config: TrainConfig, device: torch.device, batch: int, bf16: bool, seconds: float) -> float:
    """Bare training steps per second x batch on ``device``."""
    rng = np.random.default_rng(1)
    table = build_neighbour_table(bt.SCHEME.meanface_array, config.num_nb)
    landmarks = bt.SCHEME.meanface_array[None] + rng.normal(0, 0.03, size=(batch, 68, 2))
    targets = targets_to_torch(build_targets(landmarks, ["std"] * batch, table.nb, config.grid)).to(device)
    images = rng.integers(0, 255, size=(batch, config.input_size, config.input_size, 3), dtype=np.uint8)
    x = normalise_batch(images, channels_last=True, device=device)
    model = create_model(68, config.num_nb, config.backbone, config.base_width, config.input_size, config.net_stride)
    model = model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss, _ = pip_loss(type(out)(*(o.float() for o in out)), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    _sync(device)
    return n * batch / (time.perf_counter() - t0)


def loop_rate(config: TrainConfig, faces: tuple, batch: int, work: Path) -> float:
    """:func:`pipnet_core.train.train` images/s on ``config.device`` (epochs after the first)."""
    cfg = dataclasses.replace(config, batch_size=batch)
    return bt.loop_row(cfg, bt.face_dataset(*faces, config.input_size), 2, 1, work)["ips"]


def labeling_rates(config: TrainConfig, device: str, batch: int, count: int, work: Path) -> tuple[float, float]:
    """Pool labeling end to end (Predictor, torch backend) and the bare forward, images/s."""
    import cv2

    table = build_neighbour_table(bt.SCHEME.meanface_array, config.num_nb)
    model = create_model(68, config.num_nb, config.backbone, config.base_width, config.input_size, config.net_stride)
    pred = Predictor(model, table, bt.SCHEME, backend="torch", device=device)
    folder = work / "pool"
    if not folder.exists():
        folder.mkdir()
        rng = np.random.default_rng(2)
        for k in range(count):
            cv2.imwrite(str(folder / f"p{k:05d}.jpg"), rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8))
    paths = sorted(folder.glob("*.jpg"))
    boxes = np.tile([200.0, 100.0, 460.0, 380.0], (len(paths), 1))
    pred.predict(paths[:batch], boxes[:batch], batch_size=batch)  # warm-up: cudnn autotune, allocator
    t0 = time.perf_counter()
    pred.predict(paths, boxes, batch_size=batch)
    e2e = len(paths) / (time.perf_counter() - t0)
    x = np.random.default_rng(3).standard_normal((batch, 3, config.input_size, config.input_size)).astype(np.float32)
    pred.run_normalised(x)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3.0 or n < 3:
        pred.run_normalised(x)
        n += 1
    return e2e, n * batch / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks the script, measures nothing")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    args = ap.parse_args()
    if args.smoke:
        toy = TrainConfig(input_size=64, base_width=16, net_stride=16)  # width 8: see uses_channels_last
        device, config, batches, seconds, count = torch.device("cpu"), toy, (4, 8), 0.5, 16
    elif not torch.cuda.is_available():
        print(f"no CUDA GPU visible to torch {torch.__version__}: install a CUDA torch wheel on a GPU machine "
              "(or run with --smoke to check the script on a CPU)", file=sys.stderr)  # fmt: skip
        return 2
    else:
        device, config, batches, seconds, count = torch.device("cuda"), TrainConfig(), (64, 256), 8.0, 2048
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    lines = [f"# GPU check: {name}, torch {torch.__version__}", ""]
    pairs = agreement(config, device)
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)
    ok = worst <= 1e-3
    lines += ["| step | CPU loss | device loss | relative difference |", "|---|---|---|---|"]
    lines += [
        f"| {i} | {a:.6f} | {b:.6f} | {abs(a - b) / max(abs(a), 1e-12):.2e} |" for i, (a, b) in enumerate(pairs, 1)
    ]
    lines += ["", f"agreement (<= 1e-3 relative): **{'PASS' if ok else 'FAIL'}** (worst {worst:.2e})", ""]
    print("\n".join(lines), flush=True)
    cfg = dataclasses.replace(config, device=device.type)
    lines += ["| measure | batch | images/s |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        faces = bt.write_faces(work / "faces", 4 * batches[0], config.input_size)
        for b in batches:
            for bf16 in (False, True):
                rate = step_rate(config, device, b, bf16, seconds)
                lines.append(f"| training step, {'bf16 autocast' if bf16 else 'fp32'} | {b} | {rate:.1f} |")
                print(lines[-1], flush=True)
        lines.append(f"| training loop (train(), fp32, loader workers auto) | {batches[0]} | "
                     f"{loop_rate(cfg, faces, batches[0], work):.1f} |")  # fmt: skip
        print(lines[-1], flush=True)
        for b in batches:
            e2e, bare = labeling_rates(config, device.type, b, count, work)
            lines.append(f"| pool labeling end to end (Predictor, torch) | {b} | {e2e:.1f} |")
            lines.append(f"| pool labeling bare forward | {b} | {bare:.1f} |")
            print("\n".join(lines[-2:]), flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
