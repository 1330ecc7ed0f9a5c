"""Object-store stores against a real S3-compatible server (moto's server mode on 127.0.0.1), issue 11 item 18.

Users point a store at ``s3://bucket/store`` and the endpoint with the standard AWS variables
(docs/store.md): ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``. The tests set exactly those and go through ``Store.open(url)``, the path a
user's run takes.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from annotations.store import Store
from pipnet_core.schemes import get_scheme, scheme_from_dict
from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]
TINY = scheme_from_dict({"name": "tiny5", "num_landmarks": 5})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1, and the AWS variables that point pyarrow at it."""
    # this environment's moto first (a moto_server on PATH may be another Python's, of another version)
    beside = Path(sys.executable).with_name("moto_server")
    binary = str(beside) if beside.exists() else shutil.which("moto_server")
    if binary is None:
        service_missing("moto S3 server", "no moto_server executable (pip install 'moto[server]', the dev extras)")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    cmd = [binary, "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    service_missing("moto S3 server", f"it exited: {log.read_text()[-500:]}")
                time.sleep(0.1)
        else:
            service_missing("moto S3 server", f"no answer on port {port}")
        import boto3

        boto3.client("s3").create_bucket(Bucket="pipstc-test")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    return f"s3://pipstc-test/store-{uuid.uuid4().hex[:8]}"


def test_a_store_on_s3_round_trips(s3_url: str) -> None:
    from tests.unit.test_store import make_labels, make_samples

    store = Store.create(s3_url, TINY)
    assert store.add_samples(make_samples(3)) == 3
    store.add_labels(make_labels(["s0", "s1"], source="human", round_=0), np.ones((2, 5, 2), np.float32))
    again = Store.open(s3_url)
    assert len(again.samples()) == 3 and len(again.labels()) == 2 and again.check() == []


_WAITER = textwrap.dedent("""
    import sys, time
    from annotations.store import Store
    store = Store.open(sys.argv[1])
    with store.lock():
        print("LOCKED", flush=True)
        time.sleep(1.0)
    print("DONE", flush=True)
""")


def test_a_waiters_lock_object_is_not_swept_by_the_holders_temp_cleanup(s3_url: str) -> None:
    from tests.unit.test_store import make_samples

    Store.create(s3_url, TINY)
    env = {**os.environ, "PIPSTC_STORE_PAUSE_BEFORE_COMMIT": "4", "PYTHONPATH": str(ROOT)}
    waiter = subprocess.Popen([sys.executable, "-c", _WAITER, s3_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT)  # fmt: skip
    # The waiter's first line: PIPSTC_PAUSED (its lock went through a _tmp- file: the bug) or LOCKED.
    first = waiter.stdout.readline()
    store = Store.open(s3_url)
    assert store.add_samples(make_samples(2)) == 2  # the holder's first write sweeps _tmp- files store-wide
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, f"the waiter failed after {first!r}: {err[-2000:]}"
    assert first.startswith("LOCKED") and "DONE" in out


def test_the_checkpoint_cache_follows_a_new_version_of_the_same_size(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.checkpoints import checkpoint_path

    monkeypatch.setenv("PIPSTC_CACHE_DIR", str(tmp_path / "cache"))
    store = Store.create(s3_url, TINY)
    store.write_round_file(0, "model.pt", b"A" * 1000)
    first = checkpoint_path(store, 0)
    assert Path(first).read_bytes() == b"A" * 1000
    assert checkpoint_path(store, 0) == first  # unchanged: not downloaded again
    store.write_round_file(0, "model.pt", b"B" * 1000)  # retrained: same size, same second
    second = checkpoint_path(Store.open(s3_url), 0)
    assert Path(second).read_bytes() == b"B" * 1000
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and p != Path(second)]
    assert leftovers == []  # the old version went, and no half-written temporary file stayed


def test_training_on_s3_resumes_from_the_stores_checkpoint(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from flows import training
    from flows.config import STCConfig
    from flows.ingest_steps import ingest_source
    from synthetic_faces import DOMAINS, write_dataset

    write_dataset(tmp_path / "faces", 8, dataclasses.replace(DOMAINS["studio"], image_size=96), seed=2)
    Store.create(s3_url, get_scheme("300w"))
    ingest_source(s3_url, str(tmp_path / "faces"), "pts", split="train")
    monkeypatch.setenv("PIPSTC_CACHE_DIR", str(tmp_path / "machine-a"))
    cfg = STCConfig.tiny(epochs=1, channels_last=False)
    first = training.train_round(s3_url, 0, cfg, progress=False)
    assert first["checkpoint"].startswith(str(tmp_path / "machine-a"))
    store = Store.open(s3_url)
    ckpt = torch.load(io.BytesIO(store.read_round_file(0, "model.pt")), weights_only=True)
    assert ckpt["epoch"] == 1  # uploaded after the epoch
    # mark the store's copy, so a resumed training can be told from one started over
    ckpt["model"]["cls_layer.bias"] = torch.full_like(ckpt["model"]["cls_layer.bias"], 5.0)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    store.write_round_file(0, "model.pt", buf.getvalue())

    monkeypatch.setenv("PIPSTC_CACHE_DIR", str(tmp_path / "machine-b"))  # another machine takes the round over
    second = training.train_round(s3_url, 0, cfg.replace(epochs=2), progress=False)
    assert second["checkpoint"] == str(tmp_path / "machine-b" / Path(first["checkpoint"]).relative_to(
        tmp_path / "machine-a"))  # fmt: skip
    final = torch.load(io.BytesIO(Store.open(s3_url).read_round_file(0, "model.pt")), weights_only=True)
    assert final["epoch"] == 2
    assert float(final["model"]["cls_layer.bias"].mean()) > 4.0  # continued from the store's epoch-1 copy
