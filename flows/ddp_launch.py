"""torch DDP for a round's training: torchrun on this machine, or this machine's share of several.

The round's train step (:mod:`flows.training`) calls :func:`train_with_torchrun` for a stage whose
``TrainConfig.processes`` is above 1, or for a machine taking part in a multi-machine training:
torchrun (``torch.distributed.run``) starts the processes of :mod:`pipnet_core.ddp`, gloo on CPUs
and nccl on GPUs, which write the same checkpoint to the same place and resume the same way as one
process. Every rank's replica is hashed at the end and the digests, which must agree, are returned
with the per-epoch records (the round's ``training.json``). docs/training.md has the settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NodeSet", "TrainingLaunchError", "torchrun_command", "torchrun_env", "train_with_torchrun"]

_ROOT = Path(__file__).resolve().parents[1]  # where pipnet_core lives, for the torchrun children


class TrainingLaunchError(RuntimeError):
    """The torchrun processes of a round's training failed; the message carries their last output."""


@dataclass(frozen=True)
class NodeSet:
    """Where this machine meets the others of a multi-machine training (torchrun's c10d rendezvous).

    Attributes:
        nnodes: Machines taking part; ``TrainConfig.processes`` must be ``nnodes x`` the processes
            each starts.
        rdzv_endpoint: ``host:port`` of one of them (it runs the c10d store), the same for all.
        rdzv_id: A run id shared by all machines and new for each training (e.g. the round's flow run id).
    """

    nnodes: int
    rdzv_endpoint: str
    rdzv_id: str


def torchrun_command(
    processes: int,
    samples: str,
    scheme: str,
    config: str,
    out: str,
    summary: str,
    progress: bool = False,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
) -> list[str]:
    """The command line that trains ``out`` with torch DDP: ``processes`` per machine on ``nnodes`` machines.

    One machine uses torchrun's standalone rendezvous (a free local port); several machines meet
    at ``rdzv_endpoint`` (``host:port`` of any one of them) through c10d under the shared
    ``rdzv_id`` (docs/training.md).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        if not rdzv_endpoint or not rdzv_id:
            raise ValueError("training on several machines needs rdzv_endpoint (host:port) and rdzv_id")
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
                "--rdzv-id", rdzv_id]  # fmt: skip
    cmd += ["--nproc-per-node", str(processes), "-m", "pipnet_core.ddp", "--samples", samples, "--scheme", scheme,
            "--config", config, "--out", out, "--cache-crops", "--summary", summary]  # fmt: skip
    return cmd if progress else [*cmd, "--no-progress"]


def torchrun_env(processes: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment: this checkout importable, and the cores shared out between them.

    Each process gets ``cpus // processes`` OpenMP threads (at least one) unless OMP_NUM_THREADS
    is set: more threads than cores in all stalls every process's thread team (docs/speed.md section 5).
    """
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def train_with_torchrun(
    tcfg: Any, dataset: Any, scheme: Any, out: str, progress: bool, nodes: NodeSet | None = None
) -> dict[str, Any] | None:
    """Train ``out`` with DDP from this machine: the epoch records and summary (None where rank 0 ran elsewhere).

    Raises:
        TrainingLaunchError: the processes failed; the checkpoint of the last completed epoch stays.
    """
    nnodes = 1 if nodes is None else nodes.nnodes
    if tcfg.processes % nnodes:
        raise ValueError(f"processes {tcfg.processes} must be a multiple of the {nnodes} machines (per machine)")
    work = Path(tempfile.mkdtemp(prefix="pipstc-ddp-"))
    try:
        files = {name: str(work / name) for name in ("samples.npz", "scheme.json", "config.json", "summary.json")}
        dataset.to_npz(files["samples.npz"])
        Path(files["scheme.json"]).write_text(json.dumps(scheme.to_dict()))
        Path(files["config.json"]).write_text(json.dumps(tcfg.to_dict()))
        per_node = tcfg.processes // nnodes
        cmd = torchrun_command(per_node, files["samples.npz"], files["scheme.json"], files["config.json"], out,
                               files["summary.json"], progress=progress, nnodes=nnodes,
                               rdzv_endpoint=nodes.rdzv_endpoint if nodes else None,
                               rdzv_id=nodes.rdzv_id if nodes else None)  # fmt: skip
        proc = subprocess.run(cmd, env=torchrun_env(per_node), capture_output=True, text=True)
        if progress and proc.stderr:
            sys.stderr.write(proc.stderr[-20_000:])
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-4000:]
            raise TrainingLaunchError(
                f"DDP training with {tcfg.processes} processes exited with {proc.returncode}; the checkpoint of "
                f"the last completed epoch stays at {out} and a rerun resumes from it. Command: {' '.join(cmd)}\n"
                f"{tail}"
            )
        if not Path(files["summary.json"]).is_file():
            return None  # rank 0 (which writes the summary, the checkpoint and the logs) ran on another machine
        epochs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        summary = json.loads(Path(files["summary.json"]).read_text())
        return {"processes": tcfg.processes, **summary, "epochs": epochs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
