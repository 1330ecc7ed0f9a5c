"""Getting faces in and out of a store: dataset imports, image-folder pools, exports."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotations.store import Store

__all__ = ["export_labels", "ingest_source", "summarise_import"]

SHOWN_REJECTS = 5  # rejects an import summary shows; `pipstc rejects` lists them all


def _local(path: str | None) -> str | None:
    """A local path made absolute, so rejects name the file whatever folder the listing runs from."""
    if path is None or "://" in path:
        return path
    return str(Path(path).resolve())


def ingest_source(
    store_url: str,
    source: str,
    format: str,
    split: str | None = None,
    dataset: str | None = None,
    detector: str = "yuface",
    boxes_file: str | None = None,
) -> dict[str, Any]:
    """Import ``source`` into the store; returns counts (faces read, new samples, new labels, rejects).

    ``format`` is a dataset format (pts, wflw, coco, csv, labelstudio) for human-labeled faces, or
    ``pool`` for a folder of unlabeled images. Importing the same source twice adds nothing: sample
    ids are content hashes and label ids are deterministic, and ``new_labels`` counts only the labels
    written now. Every row that could not be used is recorded as a reject (``pipstc rejects``), also
    when no row could be used at all: then nothing else is written.

    Raises:
        annotations.formats.FormatError: the source as a whole cannot be read (nothing is written).
    """
    store = Store.open(store_url)
    source, boxes_file = str(_local(source)), _local(boxes_file)
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
        result = _drop_holdout_conflicts(store, result)
        new_samples = store.add_samples(result.samples) if len(result.samples) else 0
        new_labels = store.add_labels(result.labels, result.landmarks).new if len(result.labels) else ()
        if len(result.rejects):
            store.add_rejects(result.rejects)
    splits = pd.Series(dtype=object)
    if len(result.samples):
        splits = store.samples().set_index("sample_id").loc[result.samples["sample_id"], "split"].value_counts()
    shown = result.rejects.head(SHOWN_REJECTS)
    return {
        "store": store.url,
        "source": source,
        "stage": "pool" if format == "pool" else "import",
        "faces": int(len(result.samples)),
        "new_samples": int(new_samples),
        "new_labels": len(new_labels),
        "rejects": int(len(result.rejects)),
        "splits": {str(k): int(v) for k, v in splits.items()},
        "reject_reasons": shown["reason"].tolist(),
        "first_rejects": [
            {"source": r.source, "location": r.location, "reason": r.reason} for r in shown.itertuples(index=False)
        ],
    }


def summarise_import(report: dict[str, Any]) -> list[str]:
    """The lines ``pipstc import`` / ``pipstc pool add`` print for an :func:`ingest_source` report.

    The first line is ``<source>: <n> imported, <m> rejected (<what was new>)``; then the first rejects, each
    naming its file, row and reason, and the command that lists all of them.
    """
    from flows.rejects import format_reject

    new = f"{report['new_samples']} new samples"
    if report["stage"] == "import":
        new += f", {report['new_labels']} new labels"
    if report["faces"] and not report["new_samples"] and not report["new_labels"]:
        new += ": all already in the store"
    splits = ", ".join(f"{k} {v}" for k, v in sorted(report["splits"].items()))
    new += f"; {splits}" if splits else ""
    lines = [f"{report['source']}: {report['faces']} imported, {report['rejects']} rejected ({new})"]
    lines += ["  rejected " + format_reject(r) for r in report["first_rejects"]]
    if report["rejects"]:
        more = report["rejects"] - len(report["first_rejects"])
        head = f"  ... and {more} more; all" if more > 0 else "  all"
        lines.append(f"{head} rejects: pipstc rejects {report['store']} --stage {report['stage']}")
    return lines


def _visibility(view: Any) -> np.ndarray:
    """(R, N) COCO visibility of a view's labels (2 where a label records none and the point is set)."""
    if view.visibility is not None:
        return view.visibility
    return np.where(np.isnan(view.landmarks[..., 0]), 0, 2).astype(np.int8)


def _drop_holdout_conflicts(store: Store, result: Any) -> Any:
    """The import without the faces that overlap holdout faces of the same image; those become rejects."""
    refused = store.holdout_conflicts(result.samples)
    if not len(refused):
        return result
    rejects = refused.assign(round=None, created_at=pd.Timestamp.now(tz="UTC"))
    bad = set(refused["sample_id"])
    keep_labels = ~result.labels["sample_id"].isin(bad).to_numpy()
    return dataclasses.replace(
        result,
        samples=result.samples[~result.samples["sample_id"].isin(bad)].reset_index(drop=True),
        labels=result.labels[keep_labels].reset_index(drop=True),
        landmarks=result.landmarks[keep_labels],
        rejects=pd.concat([result.rejects, rejects], ignore_index=True),
    )


def export_labels(store_url: str, output: str, format: str, split: str | None = None) -> int:
    """Write each sample's current label (human > corrected > pseudo) in ``format``; returns the count.

    CSV files carry where each label came from (``source``, ``round``, ``model_version``, ``annotator``);
    COCO writes each landmark's visibility (``v`` = 0 missing, 1 occluded, 2 visible).
    """
    from annotations.formats import write_coco, write_csv, write_pts

    store = Store.open(store_url)
    splits = (split,) if split else ("train", "pool", "holdout")
    views = [store.current_labels(splits=tuple(s for s in splits if s != "holdout"), for_training=False)]
    if "holdout" in splits:
        views.append(store.holdout())
    frame = pd.concat([v.frame for v in views], ignore_index=True)
    landmarks = np.concatenate([v.landmarks for v in views])
    samples = store.samples().set_index("sample_id").loc[frame["sample_id"]].reset_index()
    for col in ("source", "round", "model_version", "annotator"):
        samples[col] = frame[col].to_numpy()
    if format == "coco":
        write_coco(output, samples, landmarks, store.scheme, visibility=np.concatenate([_visibility(v) for v in views]))
    else:
        {"pts": write_pts, "csv": write_csv}[format](output, samples, landmarks, store.scheme)
    return len(frame)
