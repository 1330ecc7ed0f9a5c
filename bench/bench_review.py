"""Benchmark: push 1,000 faces with 68-point predictions to Label Studio and pull 1,000 annotations.

Starts its own Label Studio (tools.labelstudio_server, the same start as the test fixture; a cached
migrated template under .work/ls-template makes it ~5 s), builds a store with 1,000 pool faces
pseudo-labelled in round 1, then times:

* push of the 1,000 faces (chunks of 200);
* a second push of the same faces (all already in review: store only, no import);
* after a simulated reviewer (setup, not timed: one Data Manager action turns every prediction into
  an annotation, and 100 annotations are then edited through the API to move landmarks), a pull of
  the 1,000 annotations, and a second pull with nothing new.

For each timed step it reports the wall time and how it splits between waiting on the server (time
inside the HTTP transport: sending the request, the server's work, receiving the body) and our own
code (everything else: building and validating tasks, JSON encoding/decoding, conversions, store
writes). Run: ``.venv/bin/python bench/bench_review.py [--faces 1000]``.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotations.review.client import LabelStudioClient, connect  # noqa: E402
from annotations.review.project import ImageAccess  # noqa: E402
from annotations.review.pull import pull_reviews  # noqa: E402
from annotations.review.push import push_reviews  # noqa: E402
from annotations.store import Store  # noqa: E402
from pipnet_core.schemes import get_scheme  # noqa: E402
from tools.labelstudio_server import start_label_studio  # noqa: E402


class TimedTransport(httpx.BaseTransport):
    """An httpx transport that adds the time spent in each request (body included) to ``seconds``."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.seconds = 0.0
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        t0 = time.perf_counter()
        try:
            response = self._inner.handle_request(request)
            body = response.read()  # the body is part of the wait, not of our code
            return httpx.Response(response.status_code, headers=response.headers, content=body, request=request)
        finally:
            self.seconds += time.perf_counter() - t0
            self.requests += 1

    def close(self) -> None:
        self._inner.close()


def make_store(folder: Path, images: Path, n: int, seed: int = 0) -> Store:
    """A store with ``n`` pool faces (small PNGs) and 68-point pseudo-labels of round 1."""
    scheme = get_scheme("300w")
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True, exist_ok=True)
    store = Store.create(folder, scheme)
    w, h = 160, 128
    rows = []
    for i in range(n):
        img = np.full((h, w, 3), (i * 37) % 255, dtype=np.uint8)
        path = images / f"face_{i:05d}.png"
        cv2.imwrite(str(path), img)
        rows.append(
            {"sample_id": f"bench{i:06d}", "image_uri": str(path), "width": w, "height": h,
             "box": [8.0, 8.0, w - 8.0, h - 8.0], "split": "pool", "dataset": "bench"}
        )  # fmt: skip
    samples = pd.DataFrame(rows)
    store.add_samples(samples)
    landmarks = (rng.uniform(0.1, 0.9, size=(n, 68, 2)) * [w, h]).astype(np.float32)
    store.add_labels(
        pd.DataFrame(
            {"sample_id": samples["sample_id"], "source": "pseudo", "round": 1, "model_version": "bench-r1",
             "face_confidence": rng.uniform(0.2, 0.9, n).astype(np.float32), "level": "std"}
        ),
        landmarks,
        landmark_confidence=rng.uniform(0, 1, size=(n, 68)).astype(np.float32),
    )  # fmt: skip
    return store


def simulate_reviewer(client: LabelStudioClient, project_id: int, edits: int) -> None:
    """Every prediction becomes an annotation (one Data Manager action), then ``edits`` annotations get
    three landmarks moved through the API, as a reviewer's drags would."""
    ls = client.sdk()
    ls.actions.create(id="predictions_to_annotations", project=project_id, selected_items={"all": True, "excluded": []})
    tasks = list(client.iter_tasks(project_id, fields="all", include="id,annotations,result", page_size=200))
    for task in tasks[:edits]:
        ann = task["annotations"][0]
        result = copy.deepcopy(ann["result"])
        for item in result[:3]:
            item["value"]["x"] = min(99.0, item["value"]["x"] + 2.0)
            item["origin"] = "prediction-changed"
        ls.annotations.update(id=ann["id"], result=result)


def timed(name: str, fn: Any, transport: TimedTransport, client: LabelStudioClient) -> tuple[Any, dict[str, Any]]:
    t_wait, n_req, t_client = transport.seconds, transport.requests, client.http_seconds
    t0 = time.perf_counter()
    out = fn()
    total = time.perf_counter() - t0
    wait = transport.seconds - t_wait
    client_side = client.http_seconds - t_client
    return out, {
        "step": name,
        "seconds": total,
        "requests": transport.requests - n_req,
        "server_wait_s": wait,
        "json_and_http_client_s": max(0.0, client_side - wait),
        "our_code_s": total - wait,
        "our_share": (total - wait) / total if total else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=100, help="annotations the simulated reviewer edits")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pipstc-bench-review-"))
    t0 = time.perf_counter()
    server = start_label_studio(work / "ls", template_dir=ROOT / ".work" / "ls-template")
    print(f"Label Studio up in {time.perf_counter() - t0:.1f} s at {server.url}")
    rows = []
    try:
        store = make_store(work / "store", server.document_root / "faces", args.faces)
        transport = TimedTransport()
        client = connect(server.url, server.token, transport=transport)
        access = ImageAccess(server.document_root)
        ids = list(store.samples()["sample_id"])

        report, row = timed("push", lambda: push_reviews(store, client, ids, 1, access=access), transport, client)
        assert report.pushed == args.faces, report
        rows.append(row)
        report, row = timed("push again", lambda: push_reviews(store, client, ids, 1, access=access), transport, client)
        assert report.pushed == 0 and report.already_in_review == args.faces, report
        rows.append(row)

        t0 = time.perf_counter()
        simulate_reviewer(client, report.project_id, args.edits)
        setup = time.perf_counter() - t0

        pulled, row = timed("pull", lambda: pull_reviews(store, client), transport, client)
        assert pulled.completed == args.faces, pulled
        rows.append(row)
        again, row = timed("pull again", lambda: pull_reviews(store, client), transport, client)
        assert again.completed == 0, again
        rows.append(row)
        moved = store.labels(source="corrected").moved
        client.close()
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"{args.faces} faces, 68 landmarks each; reviewer setup (not timed) {setup:.1f} s;"
          f" {int(moved.any(axis=1).sum())} corrections with moved landmarks")  # fmt: skip
    header = (
        f"{'step':<12}{'seconds':>9}{'requests':>10}{'server wait':>13}{'JSON+httpx':>12}{'our code':>10}{'ours %':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['step']:<12}{r['seconds']:>9.2f}{r['requests']:>10d}{r['server_wait_s']:>13.2f}"
            f"{r['json_and_http_client_s']:>12.2f}{r['our_code_s']:>10.2f}{100 * r['our_share']:>7.0f}%"
        )
    print("server wait: inside the HTTP transport (request sent, server work, body received);")
    print("our code: the rest (task building and validation, JSON encode/decode, conversion, store I/O).")


if __name__ == "__main__":
    main()
