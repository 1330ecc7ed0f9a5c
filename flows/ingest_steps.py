"""Getting faces in and out of a store: dataset imports, image-folder pools, exports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from annotations.store import Store

__all__ = ["export_labels", "ingest_source"]


def ingest_source(
    store_url: str,
    source: str,
    format: str,
    split: str | None = None,
    dataset: str | None = None,
    detector: str = "yuface",
    boxes_file: str | None = None,
) -> dict[str, Any]:
    """Import ``source`` into the store; returns counts (new samples, new labels, rejects).

    ``format`` is a dataset format (pts, wflw, coco, csv, labelstudio) for human-labeled faces, or
    ``pool`` for a folder of unlabeled images. Importing the same source twice adds nothing: sample
    ids are content hashes and label ids are deterministic.
    """
    store = Store.open(store_url)
    if format == "pool":
        from annotations.ingest.pool import build_pool

        result = build_pool(source, detector=detector, boxes_file=boxes_file, dataset=dataset)
        result.samples["split"] = "pool"
    else:
        from annotations.formats import read_any

        result = read_any(format, source, store.scheme, dataset=dataset)
        if split is not None:
            result.samples["split"] = split
    with store.lock():
        new_samples = store.add_samples(result.samples)
        new_labels = store.add_labels(result.labels, result.landmarks) if len(result.labels) else []
        if len(result.rejects):
            store.add_rejects(result.rejects)
    splits = store.samples().set_index("sample_id").loc[result.samples["sample_id"], "split"].value_counts()
    return {
        "source": source,
        "faces": int(len(result.samples)),
        "new_samples": int(new_samples),
        "new_labels": len(new_labels),
        "rejects": int(len(result.rejects)),
        "splits": {str(k): int(v) for k, v in splits.items()},
        "reject_reasons": result.rejects["reason"].head(5).tolist() if len(result.rejects) else [],
    }


def export_labels(store_url: str, output: str, format: str, split: str | None = None) -> int:
    """Write each sample's current label (human > corrected > pseudo) in ``format``; returns the count."""
    from annotations.formats import write_coco, write_csv, write_pts

    store = Store.open(store_url)
    splits = (split,) if split else ("train", "pool", "holdout")
    view = store.current_labels(splits=tuple(s for s in splits if s != "holdout"), for_training=False)
    frames, marks = [view.frame], [view.landmarks]
    if "holdout" in splits:
        hold = store.holdout()
        frames.append(hold.frame)
        marks.append(hold.landmarks)
    frame = pd.concat(frames, ignore_index=True)
    landmarks = np.concatenate(marks) if marks else np.zeros((0, store.scheme.num_landmarks, 2), np.float32)
    samples = store.samples().set_index("sample_id").loc[frame["sample_id"]].reset_index()
    writer = {"pts": write_pts, "coco": write_coco, "csv": write_csv}[format]
    writer(output, samples, landmarks, store.scheme)
    return len(frame)
