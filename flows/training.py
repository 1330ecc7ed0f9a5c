"""The train step of a round: the store's training set, trained stage by stage into the round folder.

The round's curriculum policy says what to train (:meth:`CurriculumPolicy.stages`): one stage for
the paper's STC and pipstc's schedules, pretraining then fine-tuning for STLD. This module executes
the stages in order, whatever the schedule: it picks each stage's faces and their tasks
(:func:`pipnet_core.stages.stage_samples`), resolves where the stage's weights start, and trains
into the stage's checkpoint in the round folder. Every stage resumes like ``model.pt`` does: a
finished stage is not trained again, an interrupted one continues from its last epoch. A stage
whose ``TrainConfig.processes`` is above 1 trains with torch DDP through torchrun
(:mod:`flows.ddp_launch`); how each stage trained, with its per-epoch records, is kept in the round's
``training.json``.


The training set is chosen and recorded (``training_set.json``) when the step starts; a resumed step
trains on that record, not on what the store holds by then (docs/store.md section 9). For an
object-store store each stage trains in a stable local path (one per store, round and checkpoint),
starting from the store's copy of an interrupted training, and uploads its checkpoint after every
epoch, so another machine can take over a round whose worker died.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from annotations.ingest.crops import fit_crop_mapping, training_crop_boxes
from annotations.store import RoundFileMissing, Store
from annotations.store.training import TrainingSet, recorded_training_set, training_set
from flows.checkpoints import (
    cache_dir,
    cached_round_file,
    checkpoint_path,
    file_sha256,
    has_checkpoint,
    is_local,
    model_version,
)
from flows.config import STCConfig
from flows.ddp_launch import NodeSet, train_with_torchrun
from flows.errors import UserError
from pipnet_core.config import TrainConfig
from pipnet_core.stages import Stage, StageSamples, describe_stage, stage_samples

__all__ = [
    "FOLDS",
    "NodeSet",
    "fold_checkpoint",
    "fold_of",
    "round_training_set",
    "stage_config",
    "stage_start",
    "train_round",
    "working_checkpoint",
]

log = logging.getLogger(__name__)
# The pretraining lineage lives in this file of every round that pretrains (STLD).
PRETRAIN_CHECKPOINT = "pretrain.pt"
TRAINING_SET = "training_set.json"
FOLDS = 2  # cross pseudo-labeling (STCConfig.cross_fit)


def fold_of(sample_ids: Any) -> np.ndarray:
    """The cross-fitting fold (0 or 1) of each sample id: a stable hash, the same every round and machine."""
    import hashlib

    return np.array([hashlib.sha256(str(s).encode()).digest()[0] % FOLDS for s in sample_ids], dtype=np.int64)


def fold_checkpoint(fold: int) -> str:
    """Round file of fold model ``fold``: trained on people's labels plus the pseudo-labels of that fold."""
    return f"fold{fold}.pt"


def round_training_set(store: Store, k: int) -> TrainingSet:
    """Round k's training set: the one recorded when its training started, else chosen now and recorded."""
    record = store.read_round_json(k, TRAINING_SET, default=None)
    if isinstance(record, dict) and "label_ids" in record and "train" not in store.completed_steps(k):
        return recorded_training_set(store, record, where=f"round {k} {TRAINING_SET}")
    data = training_set(store, k)
    if len(data):
        store.write_round_json(k, TRAINING_SET, {**data.record(), "sources": _source_counts(data)})
    return data


def working_checkpoint(store: Store, k: int, name: str = "model.pt") -> Path:
    """Where round k's checkpoint ``name`` is trained: the round folder, or a stable local path for remote stores.

    For a remote store, the store's copy (an interrupted training's last epoch) replaces the local
    file first, so the training resumes from what the store holds, whichever machine wrote it.
    """
    if is_local(store):
        return Path(checkpoint_path(store, k, name))
    path = cache_dir(store) / f"round-{k}" / "training" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(cached_round_file(store, k, name), path)
    except RoundFileMissing:
        path.unlink(missing_ok=True)  # no epoch stored yet: start from scratch, not from a stale local file
    return path


def _uploader(store: Store, k: int, name: str, path: Path) -> Any:
    """The per-epoch hook that sends a remote store's checkpoint up after each epoch (a no-op locally)."""

    def upload(_record: dict[str, Any]) -> None:
        if not is_local(store):
            store.write_round_file(k, name, path.read_bytes())

    return upload


def _restart_if_other_config(path: Path, tcfg: TrainConfig) -> None:
    """An interrupted checkpoint trained with other settings (a forced config change) is started over."""
    from pipnet_core.train import resume_conflict

    why = resume_conflict(path, tcfg) if path.is_file() else None
    if why:
        log.warning("%s; training the round from scratch with its config", why)
        path.unlink()


def stage_start(store: Store, k: int, stage: Stage, cfg: STCConfig, previous: str | None) -> str | None:
    """The checkpoint a stage of round k starts from, or None for fresh weights.

    Args:
        store: The store.
        k: The round.
        stage: The stage.
        cfg: The round's config (its warm-start choice, for ``round`` starts).
        previous: The checkpoint the previous stage of this round wrote (None if there was none).

    Raises:
        FileNotFoundError: a ``pretrain`` start without round k-1's pretraining checkpoint.
    """
    if stage.start == "fresh":
        return None
    if stage.start == "round":
        return checkpoint_path(store, k - 1) if (k > 0 and cfg.warm_starts()) else None
    if stage.start == "pretrain":
        if not has_checkpoint(store, k - 1, PRETRAIN_CHECKPOINT):
            raise FileNotFoundError(
                f"round {k} stage {stage.name!r} continues round {k - 1}'s pretraining, but "
                f"{store.round_path(k - 1)}/{PRETRAIN_CHECKPOINT} does not exist; rerun round {k - 1}"
            )
        return checkpoint_path(store, k - 1, PRETRAIN_CHECKPOINT)
    return previous


def stage_config(cfg: STCConfig, k: int, stage: Stage, init_from: str | None) -> TrainConfig:
    """Round k's training settings for ``stage``: its epochs and milestones, its start, its head sets."""
    base = cfg.round_train(k, init_from=init_from)
    epochs, milestones = stage.epochs(base.epochs, base.milestones)
    return dataclasses.replace(base, epochs=epochs, milestones=milestones, aux_heads=stage.uses_aux)


def _stage_done(path: str, tcfg: TrainConfig) -> bool:
    """A stage whose checkpoint already holds all its epochs with the same settings (a resumed round, or
    one that training nodes trained, docs/training.md); loader workers and device may differ."""
    from pipnet_core.train import checkpoint_finished

    return checkpoint_finished(path, tcfg)


def _fit_stage(tcfg: TrainConfig, dataset: Any, scheme: Any, out: str, progress: bool,
               nodes: NodeSet | None, upload: Any = None) -> dict[str, Any] | None:  # fmt: skip
    """Train ``out`` here (one process) or with torch DDP; the record for training.json (None: not rank 0's machine).

    ``upload`` is called after every epoch of a one-process training (a remote store's copy follows).
    """
    if tcfg.processes > 1 or nodes is not None:
        return train_with_torchrun(tcfg, dataset, scheme, out, progress, nodes)
    from pipnet_core.train import train

    epochs: list[dict[str, Any]] = []

    def after_epoch(rec: dict[str, Any]) -> None:
        epochs.append(rec)
        if upload is not None:
            upload(rec)

    train(tcfg, dataset, scheme, out, resume=True, progress=progress, log=after_epoch)
    return {"processes": 1, "epochs": epochs}


def _train_stage(
    store: Store, k: int, data: TrainingSet, chosen: StageSamples, tcfg: TrainConfig, cfg: STCConfig, name: str,
    progress: bool, nodes: NodeSet | None = None,
) -> tuple[str, dict[str, Any] | None]:  # fmt: skip
    """Train one stage on the faces ``chosen`` into ``name`` in round k's folder; its local path and record."""
    from pipnet_core.data import FaceDataset

    rows = chosen.index
    dataset = FaceDataset(
        image_paths=[data.image_uris[i] for i in rows],
        cache_crops=True,
        crop_boxes=training_crop_boxes(data.landmarks[rows], cfg.crop_scale),
        landmarks=data.landmarks[rows],
        levels=chosen.levels,
        input_size=tcfg.input_size,
        flip=store.scheme.flip,
        augment=tcfg.augment,
        tasks=chosen.tasks,
    )
    out = working_checkpoint(store, k, name)
    record: dict[str, Any] | None = {"processes": tcfg.processes, "epochs": [], "finished_before": True}
    if not _stage_done(str(out), tcfg):
        if nodes is not None:  # one rendezvous per stage: torchrun's c10d store lives as long as one run
            nodes = dataclasses.replace(nodes, rdzv_id=f"{nodes.rdzv_id}-{name.removesuffix('.pt')}")
        _restart_if_other_config(out, tcfg)
        upload = _uploader(store, k, name, out)
        record = _fit_stage(tcfg, dataset, store.scheme, str(out), progress, nodes, upload)
        if record is not None:  # rank 0's machine: the final state, also when no epoch was left to run
            upload({})
    return str(out), record


def _training_log(store: Store, k: int, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """round k's training.json: per stage, how it trained (processes, replica digests) and its epochs,
    keeping the epochs an interrupted earlier attempt logged before this one resumed."""
    before = (store.read_round_json(k, "training.json", default=None) or {}).get("stages", {})
    out = {}
    for name, record in records.items():
        if record.get("finished_before") and name in before:
            out[name] = before[name]
            continue
        first = min((e["epoch"] for e in record["epochs"]), default=None)
        kept = [e for e in before.get(name, {}).get("epochs", []) if first is None or e["epoch"] < first]
        out[name] = {**record, "epochs": kept + record["epochs"]}
    return {"stages": out}


def train_round(
    store_url: str, k: int, cfg: STCConfig, progress: bool = True, nodes: NodeSet | None = None
) -> dict[str, Any]:
    """Train round k's stages into the round folder; resumes an interrupted training of the same round.

    A stage with ``processes > 1`` trains with torch DDP on this machine (:mod:`flows.ddp_launch`);
    with ``nodes`` this machine takes its share of a training across machines (docs/training.md), and
    only the machine that gets global rank 0 writes the round's files.

    Returns:
        ``{"checkpoint": the round's model.pt (local path), "model_version": "round-<k>-<hash8>",
        "faces": M, "trained": one line per stage joined by "; ",
        "stages": [{"name", "epochs", "checkpoint", "start", "init_from", "groups"}]}``.

    Raises:
        flows.errors.UserError: no labeled faces to train on.
        RuntimeError: the policy's last stage does not write ``model.pt``.
    """
    store = Store.open(store_url)
    data = round_training_set(store, k)
    if not len(data):
        raise UserError(store_url, f"round {k} has no labeled faces to train on", "import human labels first")
    stages = cfg.policy().stages(k, lineage=has_checkpoint(store, k - 1, PRETRAIN_CHECKPOINT))
    if stages[-1].checkpoint != "model.pt":
        raise RuntimeError(f"schedule {cfg.schedule!r}: the last stage of round {k} must write model.pt")
    previous: str | None = None
    done: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any]] = {}
    writer = True  # False on a training node whose machine did not hold rank 0
    for stage in stages:
        chosen = stage_samples(stage, data.sources, data.levels)
        init_from = stage_start(store, k, stage, cfg, previous)
        if not len(chosen):
            # e.g. pretraining on an empty pool: the next stage starts where this one would have
            done.append({"name": stage.name, "epochs": 0, "skipped": "no faces", "groups": []})
            previous = init_from
            continue
        tcfg = stage_config(cfg, k, stage, init_from)
        previous, record = _train_stage(store, k, data, chosen, tcfg, cfg, stage.checkpoint, progress, nodes)
        if record is None:
            writer = False
        else:
            records[stage.name] = record
        done.append({"name": stage.name, "epochs": tcfg.epochs, "checkpoint": stage.checkpoint,
                     "start": stage.start, "init_from": init_from, "groups": chosen.groups})  # fmt: skip
    if previous is None or done[-1].get("skipped"):
        raise RuntimeError(f"round {k}: the {stages[-1].name} stage of schedule {cfg.schedule!r} has no faces")
    if cfg.cross_fit and k >= 1 and writer:
        done += _train_folds(store, k, data, stages[-1], cfg, progress, records)
    trained = "; ".join(_describe(d) for d in done)
    if not writer:
        return {"checkpoint": str(previous), "trained": trained, "stages": done}
    store.write_round_json(k, "training.json", _training_log(store, k, records))
    store.write_round_json(k, "boxmap.json", fit_crop_mapping(store).to_dict())
    record = store.read_round_json(k, TRAINING_SET, default=None) or {}
    store.write_round_json(k, TRAINING_SET, {**record, "faces": len(data), "levels": data.counts(),
                                            "sources": _source_counts(data), "trained": trained,
                                            "stages": done})  # fmt: skip
    version = model_version(k, file_sha256(previous))
    return {"checkpoint": str(previous), "model_version": version, "faces": len(data), "trained": trained,
            "stages": done}  # fmt: skip


def _train_folds(store: Store, k: int, data: TrainingSet, stage: Stage, cfg: STCConfig, progress: bool,
                 records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """Round k's fold models (cross pseudo-labeling, :attr:`STCConfig.cross_fit`); their entries for the record.

    Fold f trains on people's labels and the pseudo-labels of the pool faces in fold f, as the round's
    own stage does (same task per face, epochs, milestones), starting from round k-1's fold f model
    (round 0's model at round 1) when the schedule warm-starts. The pool faces of fold 1 - f are never
    in its training, so their pseudo-labels and confidence come from a model that has not seen them.
    One process: DDP (``processes``) is for the round's own model.
    """
    is_pseudo = np.asarray(data.sources, dtype=object) == "pseudo"
    folds = fold_of(data.sample_ids)
    out = []
    for f in range(FOLDS):
        sub = data.take(np.flatnonzero(~is_pseudo | (folds == f)))
        chosen = stage_samples(stage, sub.sources, sub.levels)
        init_from = None
        if cfg.warm_starts():
            prev = fold_checkpoint(f) if has_checkpoint(store, k - 1, fold_checkpoint(f)) else "model.pt"
            init_from = checkpoint_path(store, k - 1, prev)
        tcfg = dataclasses.replace(stage_config(cfg, k, stage, init_from), processes=1,
                                   seed=cfg.train.seed + k + 1000 * (f + 1))  # fmt: skip
        name = fold_checkpoint(f)
        _, record = _train_stage(store, k, sub, chosen, tcfg, cfg, name, progress)
        if record is not None:
            records[name.removesuffix(".pt")] = record
        out.append({"name": f"fold {f}", "fold": f, "epochs": tcfg.epochs, "checkpoint": name, "start": stage.start,
                    "init_from": init_from, "groups": chosen.groups})  # fmt: skip
    return out


def _describe(stage: dict[str, Any]) -> str:
    if stage.get("skipped"):
        return f"{stage['name']} skipped ({stage['skipped']})"
    return describe_stage(stage["name"], stage["epochs"], stage["groups"])


def _source_counts(data: TrainingSet) -> dict[str, int]:
    kinds, counts = np.unique(np.asarray(data.sources, dtype=str), return_counts=True)
    return {str(s): int(n) for s, n in zip(kinds, counts, strict=True)}
