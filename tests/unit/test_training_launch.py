"""The command line and environment with which a round's train step starts torch DDP (torchrun)."""

from __future__ import annotations

import os
import subprocess
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


_RANK_SCRIPT = """
import atexit, sys
atexit.register(lambda: print("SHUTDOWN RAN", flush=True))
from pipnet_core.ddp import run_and_exit
print("said before", end="")  # still in stdout's buffer when the rank ends
run_and_exit(sys.argv[1:])
"""


def _rank(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-c", _RANK_SCRIPT, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_rank_ends_without_interpreter_shutdown_and_keeps_its_exit_code(tmp_path: Path) -> None:
    # pipnet_core.ddp.run_and_exit: a gloo thread freeing tensors during shutdown aborts the rank.
    bad_line = _rank(tmp_path, "--no-such-flag")
    assert bad_line.returncode == 2 and "arguments are required" in bad_line.stderr
    assert bad_line.stdout == "said before"  # flushed, and the atexit handler never ran

    missing = _rank(tmp_path, "--samples", "absent.npz", "--scheme", "300w", "--out", "m.pt")
    assert missing.returncode == 1 and missing.stdout == "said before"
    assert "Traceback" in missing.stderr and "absent.npz" in missing.stderr
