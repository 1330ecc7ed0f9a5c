"""A round whose training runs on two CPU processes (torch DDP, gloo) end to end, on a real Prefect API."""

from __future__ import annotations

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

    training = store.read_round_json(0, "training.json")
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
