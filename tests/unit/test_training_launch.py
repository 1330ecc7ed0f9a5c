"""The command line and environment with which a round's train step starts torch DDP (torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from flows.ddp_launch import torchrun_command, torchrun_env


def test_torchrun_command_for_one_machine_and_for_several() -> None:
    one = torchrun_command(2, "s.npz", "scheme.json", "c.json", "m.pt", "sum.json")
    assert one[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in one and one[one.index("--nproc-per-node") + 1] == "2"
    assert one[one.index("-m", 3) + 1] == "pipnet_core.ddp" and "--no-progress" in one
    many = torchrun_command(4, "s.npz", "sc.json", "c.json", "m.pt", "sum.json", nnodes=3,
                            rdzv_endpoint="10.0.0.5:29400", rdzv_id="round-7")  # fmt: skip
    assert "--standalone" not in many
    for flag, value in (("--nnodes", "3"), ("--rdzv-backend", "c10d"), ("--rdzv-endpoint", "10.0.0.5:29400"),
                        ("--rdzv-id", "round-7"), ("--nproc-per-node", "4")):  # fmt: skip
        assert many[many.index(flag) + 1] == value
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command(2, "s", "sc", "c", "m", "sum", nnodes=2)


def test_torchrun_children_share_the_cores_and_import_this_checkout() -> None:
    env = torchrun_env(2, {"PATH": "/bin"})
    assert int(env["OMP_NUM_THREADS"]) >= 1 and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert (Path(env["PYTHONPATH"].split(os.pathsep)[0]) / "pipnet_core" / "ddp.py").is_file()
    assert torchrun_env(2, {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"
