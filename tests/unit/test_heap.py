"""Freed tensor memory stays in the process while training, and goes back to glibc's defaults after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipnet_core.heap import reused_memory

ROOT = Path(__file__).resolve().parents[2]

# Minor page faults of allocating and touching a 40 MiB tensor four times (above glibc's largest
# mmap threshold, 32 MiB, as a 256 px training step's 64 MiB activations are), before, inside and after.
SCRIPT = """
import resource, torch
from pipnet_core.heap import reused_memory

def faults(times=4):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        block = torch.ones(10 * 2**20)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
with reused_memory() as on:
    # The heap grows until freed blocks merge into one that fits the next (memalign asks a little more than
    # it freed): measured 2 to 7 allocations of a 96 MiB block; from then on it is reused.
    faults(8)
    inside = faults()
after = faults()
print(on, before, inside, after)
"""


def _python(script: str, env: dict[str, str]) -> str:
    """Stdout of ``script`` in a new Python started with ``env`` and without the malloc variables an
    earlier test's Dask cluster left in os.environ (for its workers)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _run(env: dict[str, str]) -> tuple[bool, int, int, int]:
    out = _python(SCRIPT, env).split()
    return out[0] == "True", int(out[1]), int(out[2]), int(out[3])


def test_large_blocks_are_reused_inside_and_returned_after() -> None:
    on, before, inside, after = _run({})  # the project runs on glibc Linux (CI included): in effect
    pages = 4 * 40 * 2**20 // 4096
    assert on
    assert before > pages // 2  # glibc maps and faults each block afresh
    assert inside < before // 10  # kept in the heap: no fault after the first
    # The defaults are back: the blocks are mapped afresh again (some land on huge pages, fewer faults each:
    # measured a half or all of the pages).
    assert after > pages // 4


def test_a_user_malloc_setting_is_left_alone() -> None:
    on, before, inside, _ = _run({"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert not on
    assert inside > before // 2


def test_off_when_asked() -> None:
    with reused_memory(False) as on:
        assert not on


def test_a_variable_set_after_start_is_not_a_user_setting() -> None:
    # Regression: Dask's LocalCluster puts MALLOC_TRIM_THRESHOLD_ in os.environ for the workers it spawns;
    # glibc read its settings when this process started, so the setting here is still pipstc's to make.
    script = (
        "import os\nfrom pipnet_core.heap import reused_memory, supported\n"
        "os.environ['MALLOC_TRIM_THRESHOLD_'] = '65536'\n"
        "with reused_memory() as on:\n    print(supported(), on)\n"
    )
    assert _python(script, {}).split() == ["True", "True"]
