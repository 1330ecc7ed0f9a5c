"""Helpers of the Label Studio integration tests: a store of synthetic faces, tasks, a reviewer's result."""

from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from annotations.review.client import LabelStudioClient
from annotations.review.project import ImageAccess
from annotations.store import Store
from annotations.store.ids import sample_id
from pipnet_core.schemes import get_scheme
from tools.labelstudio_server import LabelStudioServer

SCHEME = get_scheme("300w")
N = SCHEME.num_landmarks
MODEL = "pipnet-r18-round1"


def make_store(tmp_path: Path, images_dir: Path, n: int = 50, seed: int = 0) -> tuple[Store, list[str]]:
    """A store with ``n`` pool faces (PNG files in ``images_dir``) pseudo-labelled in round 1, plus one
    holdout face and one human-labeled train face."""
    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    store = Store.create(tmp_path / "store", SCHEME)
    rows = []
    total = n + 2
    for i in range(total):
        w, h = 96 + 3 * i, 80 + 2 * i
        img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        path = images_dir / f"face_{i:03d}.png"
        cv2.imwrite(str(path), img)
        box = [4.0, 4.0, w - 4.0, h - 4.0]
        split = "pool" if i < n else ("holdout" if i == n else "train")
        rows.append(
            {"sample_id": sample_id(path.read_bytes(), box), "image_uri": str(path), "width": w, "height": h,
             "box": box, "split": split, "dataset": "synthetic"}
        )  # fmt: skip
    samples = pd.DataFrame(rows)
    store.add_samples(samples)
    sizes = samples[["width", "height"]].to_numpy(dtype=np.float64)
    landmarks = (rng.uniform(0.1, 0.9, size=(total, N, 2)) * sizes[:, None, :]).astype(np.float32)
    pool = samples["split"] == "pool"
    store.add_labels(
        pd.DataFrame(
            {"sample_id": samples["sample_id"][pool], "source": "pseudo", "round": 1, "model_version": MODEL,
             "face_confidence": rng.uniform(0.2, 0.9, n).astype(np.float32), "level": "std"}
        ),
        landmarks[pool.to_numpy()],
        landmark_confidence=rng.uniform(0, 1, size=(n, N)).astype(np.float32),
    )  # fmt: skip
    human = samples["split"] == "train"
    store.add_labels(
        pd.DataFrame({"sample_id": samples["sample_id"][human], "source": "human", "round": 0}),
        landmarks[human.to_numpy()],
    )
    return store, list(samples["sample_id"])


def project_tasks(client: LabelStudioClient, project_id: int) -> list[dict[str, Any]]:
    """Every task of a project with its predictions (and their results)."""
    return list(client.iter_tasks(project_id, fields="all", include="id,data,predictions,result,model_version,score"))


def setup_store(tmp_path: Path, server: LabelStudioServer, n: int = 50) -> tuple[Store, list[str], ImageAccess]:
    """:func:`make_store` with its images in a fresh folder under the server's document root."""
    folder = server.document_root / f"faces-{secrets.token_hex(4)}"
    store, ids = make_store(tmp_path, folder, n=n)
    return store, ids, ImageAccess(server.document_root)


def reviewer_result(pred_result: list[dict[str, Any]], moves: dict[int, tuple[float, float]], W: int, H: int,
                     origin: bool) -> list[dict[str, Any]]:  # fmt: skip
    """What a reviewer saves: the prediction with some landmarks dragged to new pixel positions."""
    out = []
    for it in copy.deepcopy(pred_result):
        it.pop("score", None)
        i = SCHEME.landmark_names.index(it["value"]["keypointlabels"][0])
        if origin:
            it["origin"] = "prediction"
        if i in moves:
            it["value"]["x"] = 100.0 * moves[i][0] / W
            it["value"]["y"] = 100.0 * moves[i][1] / H
            if origin:
                it["origin"] = "prediction-changed"
        out.append(it)
    return out
