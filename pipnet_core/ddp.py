"""Data-parallel training across processes with torch DistributedDataParallel, launched by torchrun.

For teams whose datasets outgrow one machine: every process trains a replica on its shard of each
epoch (``DistributedSampler``); gradients are averaged across processes after every backward pass,
so the replicas stay identical. Backend ``gloo`` on CPU, ``nccl`` on GPUs. ``batch_size`` is per
process (the effective batch is ``batch_size x world_size``), and ``TrainConfig.processes`` records
the world size: it is part of what a checkpoint was trained with, so a run resumes only with the
same number of processes. Rank 0 writes the checkpoint; it is the same file
:func:`pipnet_core.train.train` writes, and resumes the same way. At the end every rank hashes its
replica and rank 0 checks that all hashes agree (``--summary`` writes them out).

Usage (one machine, two processes; docs/training.md for several machines)::

    torchrun --nproc-per-node 2 -m pipnet_core.ddp --samples samples.npz --scheme 300w \\
        --config config.json --out model.pt

``samples.npz`` comes from :meth:`pipnet_core.data.FaceDataset.to_npz`; ``config.json`` holds
:meth:`pipnet_core.train.TrainConfig.to_dict` (missing keys take the defaults; a missing
``processes`` becomes the world size). The round's train step (flows/training.py) runs this for
``processes > 1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from pipnet_core.data import FaceDataset
from pipnet_core.schemes import Scheme, get_scheme, load_scheme
from pipnet_core.train import TrainConfig, _fit, _World

__all__ = ["ReplicaMismatchError", "main", "replica_digest", "run_and_exit", "train_ddp"]


class ReplicaMismatchError(RuntimeError):
    """The ranks ended a run with different weights (a DDP bug or a rank that trained apart)."""


def replica_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer of ``model`` (names, shapes, dtypes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        t = value.detach().cpu().contiguous().reshape(-1)  # 0-d buffers (num_batches_tracked) too
        h.update(f"{name}:{tuple(value.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_replicas(model: torch.nn.Module, world_size: int) -> list[str]:
    """Every rank's :func:`replica_digest`, gathered; raises on every rank if they differ."""
    digests: list[Any] = [None] * world_size
    dist.all_gather_object(digests, replica_digest(model))
    if len(set(digests)) != 1:
        raise ReplicaMismatchError(f"DDP replicas differ after training: {digests}")
    return [str(d) for d in digests]


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
    summary: str | Path | None = None,
) -> Path:
    """Train in a process group set up by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    Args:
        config, dataset, scheme, out_path, resume, progress, log: As :func:`pipnet_core.train.train`;
            ``progress`` and ``log`` act on rank 0 only.
        backend: ``"gloo"`` or ``"nccl"``; None picks nccl when CUDA is available, else gloo.
        rank_weights: A folder where every rank also saves the final state dict of its own replica
            as ``rank{r}.pt`` (to check that the replicas agree).
        summary: A JSON file where rank 0 writes ``{"world_size", "backend", "device",
            "replica_digests"}`` once every rank has finished.

    Returns:
        ``out_path`` (written by rank 0; every rank returns after it is complete). A script of
        your own that calls this should end its ranks as :func:`run_and_exit` does.

    Raises:
        ValueError: ``config.processes`` is not the world size torchrun started.
        ReplicaMismatchError: the replicas ended with different weights.
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
    if int(os.environ["WORLD_SIZE"]) != config.processes:
        raise ValueError(
            f"config.processes is {config.processes} but torchrun started {os.environ['WORLD_SIZE']} processes; "
            f"set processes to {os.environ['WORLD_SIZE']} (nnodes x nproc-per-node) in the training config"
        )
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    try:
        world = _World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)
        path, model = _fit(config, dataset, scheme, Path(out_path), resume, progress, log, world)
        if rank_weights is not None:
            folder = Path(rank_weights)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / f"rank{world.rank}.pt")
        digests = _check_replicas(model, world.size)
        if summary is not None and world.rank == 0:
            info = {"world_size": world.size, "backend": backend, "device": device.type, "replica_digests": digests}
            Path(summary).write_text(json.dumps(info, indent=2))
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
    parser.add_argument("--summary", help="JSON file for rank 0's summary: world size, backend, replica digests")
    args = parser.parse_args(argv)

    fields = json.loads(Path(args.config).read_text()) if args.config else {}
    config = TrainConfig.from_dict(fields)
    if "processes" not in fields:  # a hand-written config: the world torchrun started is the run's size
        config = dataclasses.replace(config, processes=int(os.environ.get("WORLD_SIZE", 1)))
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
        summary=args.summary,
    )
    return 0


def run_and_exit(argv: Sequence[str] | None = None) -> NoReturn:
    """Run :func:`main` and end the process without finalizing the interpreter (``os._exit``).

    A gloo worker thread drops the last reference to a finished collective's tensors a moment after
    the collective returns. When that moment falls inside the interpreter's shutdown, the thread
    needs the GIL to free tensors Python made (the replica check's ``all_gather_object``), Python
    ends the thread instead, and the unwind through a ``noexcept`` destructor calls
    ``std::terminate``: "terminate called without an active exception", exit -6, although the
    checkpoint and summary were complete. Seen here in 1 of 20 runs of the two-process test on idle
    cores and 3 of 89 beside three busy processes, and in CI (core dump: ``ProcessGroupGloo::runLoop`` ->
    ``~AsyncAllgatherWork`` -> ``THPVariable_clear`` -> ``take_gil`` -> ``pthread_exit``; the same
    crash as pytorch/pytorch#179291, whose fix upstream was abandoned in 2026-04). Everything a rank
    leaves is written and closed before this returns from :func:`main`, so skipping the shutdown
    loses nothing: stdout, stderr and logging are flushed here first.

    Exit codes: 0 after a run, argparse's 2 for a bad command line, 130 on Ctrl-C, 1 after any
    other error (its traceback printed to stderr, where torchrun shows it).
    """
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse has already said why; a text is said as Python would
        if isinstance(stop.code, int) or stop.code is None:
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
            pass
    os._exit(code)


if __name__ == "__main__":
    run_and_exit()
