"""A round whose training runs on two CPU processes (torch DDP, gloo) end to end, on a real Prefect API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from annotations.store import Store
from flows import checkpoints
from flows.config import STCConfig
from flows.stc import ROUND_STEPS, stc_round

TINY = STCConfig.tiny()


@pytest.mark.slow
def test_a_round_trains_on_two_processes_with_identical_replicas(tiny_store: str) -> None:
    result = stc_round(tiny_store, 0, TINY.replace(processes=2).to_dict())
    store = Store.open(tiny_store)
    assert set(ROUND_STEPS) <= set(store.completed_steps(0))
    assert np.isfinite(result["metrics"]["nme"])

    training = store.read_round_json(0, "training.json")["stages"]["train"]
    assert training["processes"] == training["world_size"] == 2 and training["backend"] == "gloo"
    digests = training["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # every rank ended with the same weights
    assert [e["epoch"] for e in training["epochs"]] == list(range(1, TINY.train.epochs + 1))

    # The same checkpoint format as one process: it loads, says it was trained by 2 processes, and its
    # weights are the replicas' weights.
    from pipnet_core.ddp import replica_digest
    from pipnet_core.train import load_checkpoint

    model, meta = load_checkpoint(checkpoints.checkpoint_path(store, 0))
    assert meta.config.processes == 2 and meta.epoch == TINY.train.epochs
    assert replica_digest(model) == digests[0]
    raw = torch.load(checkpoints.checkpoint_path(store, 0), weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "scheme", "meanface", "nb"} <= set(raw)


@pytest.mark.slow
def test_training_nodes_meet_at_a_c10d_rendezvous_and_the_round_uses_their_checkpoint(tiny_store: str) -> None:
    # The multi-machine recipe of docs/training.md with one machine: a training-node run trains through a
    # c10d rendezvous on a local port, then the round's own train step finds the checkpoint finished.
    import socket

    from flows.stc import training_node

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = TINY.replace(processes=2).to_dict()
    out = training_node(tiny_store, 0, nnodes=1, rdzv_endpoint=f"127.0.0.1:{port}", rdzv_id="test-node", config=cfg)
    store = Store.open(tiny_store)
    assert out == checkpoints.checkpoint_path(store, 0)
    stamp = Path(out).stat().st_mtime_ns
    assert store.read_round_json(0, "training.json")["stages"]["train"]["world_size"] == 2
    assert "train" not in store.completed_steps(0)  # the node trains; the round records its own step

    stc_round(tiny_store, 0, cfg)
    assert Path(out).stat().st_mtime_ns == stamp  # not trained again
    assert set(ROUND_STEPS) <= set(store.completed_steps(0))
