"""Data-parallel training across processes with torch DistributedDataParallel, launched by torchrun.

For teams whose datasets outgrow one machine: every process trains a replica on its shard of each
epoch (``DistributedSampler``); gradients are averaged across processes after every backward pass,
so the replicas stay identical. Backend ``gloo`` on CPU, ``nccl`` on GPUs. ``batch_size`` is per
process (the effective batch is ``batch_size x world_size``). Rank 0 writes the checkpoint; it is
the same file :func:`pipnet_core.train.train` writes, and resumes the same way.

Usage (one machine, two processes; ``--nnodes``/``--rdzv-endpoint`` for several machines)::

    torchrun --nproc_per_node 2 -m pipnet_core.ddp --samples samples.npz --scheme 300w \\
        --config config.json --out model.pt

``samples.npz`` comes from :meth:`pipnet_core.data.FaceDataset.to_npz`; ``config.json`` holds
:meth:`pipnet_core.train.TrainConfig.to_dict` (missing keys take the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pipnet_core.data import FaceDataset
from pipnet_core.schemes import Scheme, get_scheme, load_scheme
from pipnet_core.train import TrainConfig, _fit, _World

__all__ = ["main", "train_ddp"]


def train_ddp(
    config: TrainConfig,
    dataset: FaceDataset,
    scheme: Scheme,
    out_path: str | Path,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
    backend: str | None = None,
    rank_weights: str | Path | None = None,
) -> Path:
    """Train in a process group set up by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    Args:
        config, dataset, scheme, out_path, resume, progress, log: As :func:`pipnet_core.train.train`;
            ``progress`` and ``log`` act on rank 0 only.
        backend: ``"gloo"`` or ``"nccl"``; None picks nccl when CUDA is available, else gloo.
        rank_weights: A folder where every rank also saves the final state dict of its own replica
            as ``rank{r}.pt`` (to check that the replicas agree).

    Returns:
        ``out_path`` (written by rank 0; every rank returns after it is complete).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "train_ddp must run under torchrun (RANK/WORLD_SIZE are not set); "
            "use pipnet_core.train.train for a single process"
        )
    use_cuda = torch.cuda.is_available() and config.device in ("auto", "cuda")
    backend = backend or ("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    try:
        world = _World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)
        path, model = _fit(config, dataset, scheme, Path(out_path), resume, progress, log, world)
        if rank_weights is not None:
            folder = Path(rank_weights)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / f"rank{world.rank}.pt")
        return path
    finally:
        dist.destroy_process_group()


def _scheme(value: str) -> Scheme:
    return load_scheme(value) if Path(value).is_file() else get_scheme(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry of ``python -m pipnet_core.ddp`` (run it under torchrun)."""
    parser = argparse.ArgumentParser(prog="python -m pipnet_core.ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", required=True, help=".npz written by FaceDataset.to_npz")
    parser.add_argument("--scheme", required=True, help="built-in scheme name or a scheme file")
    parser.add_argument("--config", help="JSON file of TrainConfig fields (defaults for the rest)")
    parser.add_argument("--out", required=True, help="checkpoint path (rank 0 writes it)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--cache-crops", action="store_true", help="keep crops in memory")
    parser.add_argument("--rank-weights", help="folder where every rank also saves its final weights (tests)")
    args = parser.parse_args(argv)

    config = TrainConfig.from_dict(json.loads(Path(args.config).read_text())) if args.config else TrainConfig()
    scheme = _scheme(args.scheme)
    dataset = FaceDataset.from_npz(
        args.samples, input_size=config.input_size, flip=scheme.flip, cache_crops=args.cache_crops, seed=config.seed
    )
    rank = int(os.environ.get("RANK", 0))

    def log(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)

    train_ddp(
        config,
        dataset,
        scheme,
        args.out,
        resume=not args.no_resume,
        progress=not args.no_progress,
        log=log if rank == 0 else None,
        rank_weights=args.rank_weights,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
