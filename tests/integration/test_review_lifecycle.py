"""A review's life against a real Label Studio: deleted annotations and tasks, status flips, several
annotations on one task, occluded and deleted points, older lm_XX projects, the doubts line
(annotations/review/pull.py, collect.py, status.py, agreement.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from annotations.review.client import LabelStudioClient
from annotations.review.config import OCCLUDED, VISIBILITY_NAME, labeling_config
from annotations.review.convert import parse_annotation
from annotations.review.project import ImageAccess, default_title
from annotations.review.pull import pull_reviews
from annotations.review.push import push_reviews
from annotations.review.status import review_states, review_status
from annotations.store import Store
from annotations.store.training import training_set
from flows.ingest_steps import export_labels
from pipnet_core.schemes import legacy_landmark_names
from tests.integration.review_helpers import SCHEME, N, project_tasks, reviewer_result, setup_store
from tools.labelstudio_server import LabelStudioServer

pytestmark = pytest.mark.labelstudio

NO_FACE = {"from_name": "face_status", "to_name": "image", "type": "choices", "value": {"choices": ["no face"]}}


def _pushed(tmp_path: Path, server: LabelStudioServer, client: LabelStudioClient, n: int, title: str
            ) -> tuple[Store, list[str], dict[str, dict[str, Any]]]:  # fmt: skip
    store, ids, access = setup_store(tmp_path, server, n=n)
    report = push_reviews(store, client, ids[:n], round=1, access=access, title=title)
    assert report.pushed == n
    return store, ids[:n], {t["data"]["sample_id"]: t for t in project_tasks(client, report.project_id)}


def _size(store: Store, sid: str) -> tuple[int, int]:
    s = store.samples().set_index("sample_id").loc[sid]
    return int(s["width"]), int(s["height"])


def _moved(store: Store, task: dict[str, Any], sid: str, i: int, dx: float) -> list[dict[str, Any]]:
    """The task's prediction with landmark ``i`` moved ``dx`` px to the right."""
    W, H = _size(store, sid)
    pred = task["predictions"][0]["result"]
    x, y = parse_annotation(pred, SCHEME, W, H).landmarks[i]
    return reviewer_result(pred, {i: (float(x) + dx, float(y))}, W, H, origin=True)


def _state(store: Store) -> dict[str, str]:
    return dict(zip(review_states(store)["sample_id"], review_states(store)["status"], strict=True))


def test_deleted_annotations_are_retracted_and_a_full_sync_finds_deleted_tasks(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, tasks = _pushed(tmp_path, label_studio, client, 4, "deletions")
    ls = client.sdk()
    anns = {sid: ls.annotations.create(id=tasks[sid]["id"], result=_moved(store, tasks[sid], sid, 30, 3.0))
            for sid in ids[:3]}  # fmt: skip
    assert pull_reviews(store, client).completed == 3
    assert "corrected" in training_set(store, 2).sources

    # Deleted in the editor (or through the API): the next incremental pull sees the task change.
    ls.annotations.delete(id=anns[ids[0]].id)
    report = pull_reviews(store, client)
    assert report.retracted == 1 and report.completed == 0
    assert set(store.labels(source="corrected").frame["sample_id"]) == {ids[1], ids[2]}
    current = store.current_labels().frame.set_index("sample_id")
    assert current.at[ids[0], "source"] == "pseudo"  # the face falls back to its pseudo-label
    ts = training_set(store, 2)
    assert dict(zip(ts.sample_ids, ts.sources, strict=True))[ids[0]] == "pseudo"
    assert _state(store)[ids[0]] == "pushed"  # open again in Label Studio
    events = store.reviews(latest=False)
    assert list(events.loc[events["sample_id"] == ids[0], "status"]) == ["pushed", "completed", "retracted", "pushed"]
    assert pull_reviews(store, client).retracted == 0  # seen again: nothing new

    # A deleted task is never listed again: only a full sync finds it.
    ls.tasks.delete(id=str(tasks[ids[1]]["id"]))
    assert pull_reviews(store, client).retracted == 0
    full = pull_reviews(store, client, full=True)
    assert full.full and full.tasks_gone == 1 and full.retracted == 1
    assert set(store.labels(source="corrected").frame["sample_id"]) == {ids[2]}
    assert _state(store)[ids[1]] == "retracted"
    assert pull_reviews(store, client, full=True).tasks_gone == 0  # recorded once
    st = review_status(store)
    assert (st["retracted"], st["completed"], st["pushed"]) == (1, 1, 2) and st["last_full_pull"]

    # Through the Data Manager's "delete annotations" action as well.
    ls.actions.create(id="delete_tasks_annotations", project=full.project_id,
                      selected_items={"all": False, "included": [tasks[ids[2]]["id"]]})  # fmt: skip
    assert pull_reviews(store, client).retracted == 1
    assert len(store.labels(source="corrected")) == 0 and len(store.labels(source="corrected", retracted=True)) == 6


def test_a_completed_rejected_completed_flip_ends_completed(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, tasks = _pushed(tmp_path, label_studio, client, 1, "flips")
    sid = ids[0]
    ls = client.sdk()
    corrected = _moved(store, tasks[sid], sid, 8, 2.5)
    ann = ls.annotations.create(id=tasks[sid]["id"], result=corrected)
    assert pull_reviews(store, client).completed == 1 and _state(store)[sid] == "completed"
    ls.annotations.update(id=ann.id, result=[NO_FACE])
    assert pull_reviews(store, client).rejected == 1 and _state(store)[sid] == "rejected"
    ls.annotations.update(id=ann.id, result=corrected)
    again = pull_reviews(store, client)
    assert _state(store)[sid] == "completed"  # the latest state, although the same as the first
    assert again.completed == 1  # a new version of the annotation (same landmarks, newer time)
    events = store.reviews(latest=False)
    assert list(events["status"]) == ["pushed", "completed", "rejected", "completed"]
    assert pull_reviews(store, client).completed == 0 and len(store.reviews(latest=False)) == 4


def test_several_annotations_newest_wins_and_their_disagreement_is_recorded(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, tasks = _pushed(tmp_path, label_studio, client, 2, "overlap")
    sid, solo = ids
    ls = client.sdk()
    first = ls.annotations.create(id=tasks[sid]["id"], result=_moved(store, tasks[sid], sid, 30, 4.0))
    second = ls.annotations.create(id=tasks[sid]["id"], result=_moved(store, tasks[sid], sid, 30, -2.0))
    ls.annotations.create(id=tasks[solo]["id"], result=[], was_cancelled=True)
    report = pull_reviews(store, client)
    assert report.completed == 2 and report.multi_annotated == 1
    states = review_states(store).set_index("sample_id")
    assert states.at[sid, "status"] == "completed" and states.at[sid, "annotation_id"] == second.id
    assert states.at[solo, "status"] == "skipped"
    current = store.current_labels().frame.set_index("sample_id")
    assert current.at[sid, "ls_annotation_id"] == second.id  # the label trained on is the winner's
    # The two differ by 6 px at one landmark of 68: NME = 6 / 68 / (outer eye corner distance).
    pseudo = store.pseudo_labels(1)
    shown = pseudo.landmarks[int(np.flatnonzero(pseudo.frame["sample_id"].to_numpy() == sid)[0])].astype(float)
    iod = float(np.linalg.norm(shown[36] - shown[45]))
    assert report.disagreement_nme == pytest.approx(6.0 / 68 / iod, rel=1e-4)
    # A skip by another reviewer later does not undo a decision; deleting the winner hands it back.
    ls.annotations.create(id=tasks[sid]["id"], result=[], was_cancelled=True)
    pull_reviews(store, client)
    assert review_states(store).set_index("sample_id").at[sid, "annotation_id"] == second.id
    ls.annotations.delete(id=second.id)
    pull_reviews(store, client)
    states = review_states(store).set_index("sample_id")
    assert states.at[sid, "status"] == "completed" and states.at[sid, "annotation_id"] == first.id
    assert store.current_labels().frame.set_index("sample_id").at[sid, "ls_annotation_id"] == first.id


def test_occluded_and_deleted_points_are_stored_and_exported_as_coco_visibility(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, tasks = _pushed(tmp_path, label_studio, client, 1, "visibility")
    sid = ids[0]
    result = _moved(store, tasks[sid], sid, 30, 1.5)
    result = [it for it in result if it["value"]["keypointlabels"][0] != "chin"]  # deleted: cannot be placed
    nose = next(it for it in result if it["value"]["keypointlabels"][0] == "nose tip")
    result.append({"id": nose["id"], "from_name": VISIBILITY_NAME, "to_name": "image", "type": "choices",
                   "value": {**{k: nose["value"][k] for k in ("x", "y", "width")}, "choices": [OCCLUDED]}})  # fmt: skip
    client.sdk().annotations.create(id=tasks[sid]["id"], result=result)
    assert pull_reviews(store, client).completed == 1
    corrected = store.labels(source="corrected")
    vis = corrected.visibility[0]
    assert vis[8] == 0 and np.isnan(corrected.landmarks[0, 8]).all()
    assert vis[30] == 1 and np.isfinite(corrected.landmarks[0, 30]).all()
    assert (np.delete(vis, [8, 30]) == 2).all()
    out = tmp_path / "coco.json"
    export_labels(str(store.url), str(out), "coco", split="pool")
    doc = json.loads(out.read_text())
    ann = next(a for a in doc["annotations"] if a["num_keypoints"] == N - 1)
    assert ann["keypoints"][2::3][8] == 0 and ann["keypoints"][2::3][30] == 1 and doc["categories"][0][
        "keypoints"][30] == "nose tip"  # fmt: skip


def test_tasks_show_the_doubts_and_an_older_lm_project_keeps_working(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, access = setup_store(tmp_path, label_studio, n=2)
    legacy = labeling_config(SCHEME, names=legacy_landmark_names(N))  # a project made by an older pipstc
    project = client.create_project(default_title(store), legacy)
    report = push_reviews(store, client, ids[:2], round=1, access=access)
    assert report.project_id == project["id"] and report.pushed == 2 and report.failed == 0
    tasks = {t["data"]["sample_id"]: t for t in project_tasks(client, project["id"])}
    pseudo = store.pseudo_labels(1)
    row = int(np.flatnonzero(pseudo.frame["sample_id"].to_numpy() == ids[0])[0])
    conf = pseudo.landmark_confidence[row]
    worst = [SCHEME.landmark_names[i] for i in np.argsort(conf)[:5]]
    doubts = tasks[ids[0]]["data"]["doubts"]
    assert doubts.startswith("Least sure") and [doubts.index(name) for name in worst] == sorted(
        doubts.index(name) for name in worst)  # fmt: skip
    pred = tasks[ids[0]]["predictions"][0]["result"]
    assert {it["value"]["keypointlabels"][0] for it in pred} == set(legacy_landmark_names(N))
    W, H = _size(store, ids[0])
    moved = copy.deepcopy(pred)
    for it in moved:
        it.pop("score", None)
        if it["value"]["keypointlabels"][0] == "lm_45":
            it["value"]["x"] = 100.0 * 20.5 / W
    client.sdk().annotations.create(id=tasks[ids[0]]["id"], result=moved)
    assert pull_reviews(store, client).completed == 1
    assert store.labels(source="corrected").landmarks[0, 45, 0] == pytest.approx(20.5, abs=1e-4)


def test_a_skipped_face_pushed_again_keeps_its_new_task_open_through_a_full_sync(
    tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudioClient
) -> None:
    store, ids, tasks = _pushed(tmp_path, label_studio, client, 1, "skipped again")
    sid = ids[0]
    client.sdk().annotations.create(id=tasks[sid]["id"], result=[], was_cancelled=True)
    assert pull_reviews(store, client).skipped == 1 and _state(store)[sid] == "skipped"
    pseudo = store.pseudo_labels(1)
    store.add_labels(pd.DataFrame({"sample_id": [sid], "source": "pseudo", "round": 2, "model_version": "m-r2",
                                   "level": "std"}), pseudo.landmarks[:1] + 1.0)  # fmt: skip
    again = push_reviews(store, client, [sid], round=2, access=ImageAccess(label_studio.document_root),
                         title="skipped again")  # fmt: skip
    assert again.pushed == 1 and _state(store)[sid] == "pushed"  # a new task of round 2
    events = len(store.reviews(latest=False))
    full = pull_reviews(store, client, full=True)  # lists the old, skipped task too
    assert full.tasks_gone == 0 and _state(store)[sid] == "pushed"  # the old task does not decide any more
    assert len(store.reviews(latest=False)) == events  # not even for a moment
    states = review_states(store).set_index("sample_id")
    assert states.at[sid, "task_id"] == again.task_ids[0] and states.at[sid, "round"] == 2
