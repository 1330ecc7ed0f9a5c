"""Inter-annotator disagreement: how far two reviewers of the same face put its landmarks apart.

A task can carry several annotations (a project with overlap, or a second reviewer who opened a
finished task). Which one the store uses is decided by the rule of :mod:`annotations.review.status`
(the newest non-cancelled annotation wins). The others are kept as corrections too, and the
disagreement between each of them and the winner is measured here as an NME (pipnet_core.metrics:
mean landmark distance over the scheme's normaliser, the outer eye corners or the face box size
``sqrt(w * h)``), landmarks missing in either left out. The same number as model error makes it
the floor to read model NME against: a model cannot be judged more exactly than people agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipnet_core.metrics import landmark_errors

__all__ = ["DISAGREEMENT_COLUMNS", "annotator_disagreement"]

DISAGREEMENT_COLUMNS = (
    "sample_id", "round", "task_id", "annotation_id", "annotator", "other_annotation_id", "other_annotator", "nme",
)  # fmt: skip


def _latest_versions(corrected: Any) -> pd.DataFrame:
    """Row positions of the newest version of every annotation with a task (one row per annotation)."""
    frame = corrected.frame.assign(_row=np.arange(len(corrected.frame)))
    frame = frame[frame["ls_task_id"].notna() & frame["ls_annotation_id"].notna()]
    frame = frame.sort_values(["created_at", "_row"], kind="stable")
    return frame.groupby("ls_annotation_id", sort=False).tail(1)


def annotator_disagreement(store: Any, task_ids: Any = None) -> pd.DataFrame:
    """NME between the winning annotation of each multiply annotated task and each other one.

    Args:
        store: The label store.
        task_ids: Only these Label Studio tasks (e.g. those a pull just saw); None: all.

    Returns:
        One row per (task, other annotation): :data:`DISAGREEMENT_COLUMNS`; ``annotation_id`` is the
        winner (the newest version), ``nme`` the disagreement (NaN when it cannot be measured).
    """
    corrected = store.labels(source="corrected")  # in force: deleted annotations are retracted
    latest = _latest_versions(corrected)
    if task_ids is not None:
        latest = latest[latest["ls_task_id"].isin(list(task_ids))]
    rows: list[dict[str, Any]] = []
    multi = latest.groupby("ls_task_id").filter(lambda g: len(g) > 1)
    if multi.empty:
        return pd.DataFrame(columns=list(DISAGREEMENT_COLUMNS))
    boxes = store.samples().set_index("sample_id")["box"]
    scheme = store.scheme
    for tid, group in multi.groupby("ls_task_id", sort=True):
        winner = group.iloc[-1]  # newest by created_at = the annotation's updated_at on the server
        others = group.iloc[:-1]
        ref = corrected.landmarks[int(winner["_row"])].astype(np.float64)
        x0, y0, x1, y1 = (float(v) for v in boxes.loc[winner["sample_id"]])
        size = np.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))
        for _, other in others.iterrows():
            lm = corrected.landmarks[int(other["_row"])].astype(np.float64)
            err = landmark_errors(lm[None], ref[None], scheme, box_size=np.array([size]))[0]
            nme = float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")
            rows.append({
                "sample_id": winner["sample_id"], "round": int(winner["round"]), "task_id": int(tid),
                "annotation_id": int(winner["ls_annotation_id"]), "annotator": winner["annotator"],
                "other_annotation_id": int(other["ls_annotation_id"]), "other_annotator": other["annotator"],
                "nme": nme,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(DISAGREEMENT_COLUMNS))
