"""Two CPU processes under torchrun train a tiny PIPNet with DDP and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipnet_core.data import FaceDataset
from pipnet_core.schemes import get_scheme
from pipnet_core.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _write_samples(folder: Path, count: int = 8, size: int = 64) -> Path:
    scheme = get_scheme("300w")
    rng = np.random.default_rng(0)
    paths, landmarks = [], []
    for k in range(count):
        path = folder / f"img{k}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))
        paths.append(path)
        landmarks.append((scheme.meanface_array + rng.normal(0, 0.02, size=(68, 2))) * size)
    boxes = np.tile([0.0, 0.0, size, size], (count, 1))
    return FaceDataset(paths, boxes, np.array(landmarks), input_size=size).to_npz(folder / "samples.npz")


@pytest.mark.slow
def test_two_process_ddp_keeps_replicas_identical(tmp_path: Path) -> None:
    samples = _write_samples(tmp_path)
    config = TrainConfig(
        epochs=2,
        batch_size=2,
        lr=1e-3,
        milestones=(1,),
        input_size=64,
        base_width=8,
        num_workers=0,
        channels_last=False,
        processes=2,
    )
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    out = tmp_path / "ddp.pt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pipnet_core.ddp",
        "--samples",
        str(samples),
        "--scheme",
        "300w",
        "--config",
        str(tmp_path / "config.json"),
        "--out",
        str(out),
        "--no-progress",
        "--rank-weights",
        str(tmp_path / "ranks"),
        "--summary",
        str(tmp_path / "summary.json"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    logs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in logs] == [1, 2]  # rank 0 logs once per epoch
    r0 = torch.load(tmp_path / "ranks" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ranks" / "rank1.pt", weights_only=True)
    saved = torch.load(out, weights_only=True)
    assert saved["epoch"] == 2
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"replicas differ at {k}"
        assert torch.equal(r0[k], saved["model"][k]), f"checkpoint differs from rank 0 at {k}"
    # Training did happen (the heads moved off their N(0, 0.001) init).
    assert float(r0["x_layer.bias"].abs().max()) > 1e-4
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert len(summary["replica_digests"]) == 2 and len(set(summary["replica_digests"])) == 1


@pytest.mark.slow
def test_a_config_for_another_world_size_is_refused(tmp_path: Path) -> None:
    samples = _write_samples(tmp_path, count=4)
    config = TrainConfig(epochs=1, batch_size=2, input_size=64, base_width=8, num_workers=0, processes=3)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "pipnet_core.ddp", "--samples", str(samples), "--scheme", "300w", "--config", str(tmp_path / "config.json"),
           "--out", str(tmp_path / "x.pt"), "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "config.processes is 3 but torchrun started 2 processes" in proc.stderr + proc.stdout
    assert not (tmp_path / "x.pt").exists()
