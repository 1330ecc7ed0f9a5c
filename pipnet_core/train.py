"""Training of PIPNet: configuration, the epoch loop, resumable checkpoints.

Optimisation follows the official code (``lib/train.py``, ``lib/train_gssl.py``; docs/algorithm.md
section 2.10): Adam at 1e-4, MultiStepLR (x0.1 at epochs 30 and 50) stepped per epoch, 60 epochs,
batch 16 with ``drop_last``, loss 10 x score MSE + L1 offsets/neighbours. What pipstc adds: a
checkpoint after every epoch, written atomically and resumable to the same weights an uninterrupted
run reaches, that embeds everything needed to use the model (scheme, mean face, neighbour table,
config) and loads with ``torch.load(weights_only=True)``; warm start from an earlier checkpoint; a
progress bar; the data-parallel variant in :mod:`pipnet_core.ddp` shares this loop. A dataset whose
samples carry STLD tasks (:class:`pipnet_core.targets.SampleTasks`) trains a model with the second head
set (``TrainConfig.aux_heads``); a warm start may add or drop that set.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipnet_core.config import TrainConfig
from pipnet_core.data import FaceDataset, TargetCollate
from pipnet_core.heap import reused_memory
from pipnet_core.loader import EpochSampler, make_loader
from pipnet_core.loss import LOSS_PARTS, pip_loss
from pipnet_core.meanface import NeighbourTable, build_neighbour_table, compute_meanface, neighbour_table_from_nb
from pipnet_core.model import PIPNet, create_model, normalise_batch, upgrade_state_dict
from pipnet_core.schemes import Scheme, scheme_from_dict

__all__ = [
    "CheckpointError",
    "CheckpointMeta",
    "TrainConfig",
    "checkpoint_finished",
    "load_checkpoint",
    "read_checkpoint_meta",
    "resolve_device",
    "resume_conflict",
    "set_checkpoint_confidence",
    "train",
]

# Fields that may change between a run and its resumption without changing what is trained.
_RESUMABLE_CHANGES = {"epochs", "num_workers", "device", "reuse_memory"}  # change no batch and no number


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its model.

    Attributes:
        config: The training configuration.
        scheme: The landmark scheme.
        meanface: (N, 2) mean face that defined the neighbour topology.
        table: The neighbour table the heads were trained with.
        epoch: Epochs completed.
        confidence: A calibrated ``ConfidenceModel.to_dict()``, when one was attached.
        extra: Any other top-level entries (metrics written by flows, ...).
    """

    config: TrainConfig
    scheme: Scheme
    meanface: np.ndarray
    table: NeighbourTable
    epoch: int
    confidence: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _World:
    """Where this process sits in a (possibly distributed) run."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """``TrainConfig.device`` as a torch device: ``"auto"`` is CUDA when a GPU is present, else the CPU.

    Raises:
        ValueError: not a device name, or a CUDA device on a machine (or torch build) without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"TrainConfig.device {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"TrainConfig.device is {name!r} but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use device='auto' (CUDA when present) or 'cpu'"
        )
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file or one holding code objects
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {exc}") from exc
    needed = {"model", "config", "scheme", "meanface", "num_nb", "epoch"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a pipstc checkpoint: needs {sorted(needed)}, has {have}")
    return ckpt


def _meta(ckpt: dict[str, Any]) -> CheckpointMeta:
    meanface = np.asarray(ckpt["meanface"], dtype=np.float64)
    meanface = meanface.reshape(-1, 2)
    table = (
        neighbour_table_from_nb(np.asarray(ckpt["nb"], dtype=np.int64))
        if "nb" in ckpt
        else build_neighbour_table(meanface, int(ckpt["num_nb"]))
    )
    known = {"model", "optimizer", "scheduler", "config", "scheme", "meanface", "nb", "num_nb", "epoch", "confidence"}
    return CheckpointMeta(
        config=TrainConfig.from_dict(ckpt["config"]),
        scheme=scheme_from_dict(ckpt["scheme"], source="checkpoint"),
        meanface=meanface,
        table=table,
        epoch=int(ckpt["epoch"]),
        confidence=ckpt.get("confidence"),
        extra={k: v for k, v in ckpt.items() if k not in known},
    )


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of a checkpoint without building its model."""
    return _meta(_read(path))


def checkpoint_finished(path: str | Path, config: TrainConfig) -> bool:
    """Whether ``path`` holds a run of ``config`` that has trained all its epochs (nothing left to resume)."""
    if not Path(path).is_file():
        return False
    ckpt = _read(path)
    try:
        _check_resume(ckpt["config"], config, Path(path))
    except CheckpointError:
        return False
    return int(ckpt["epoch"]) >= config.epochs


def _build_model(config: TrainConfig, num_landmarks: int, imagenet: bool) -> PIPNet:
    return create_model(
        num_landmarks,
        num_nb=config.num_nb,
        backbone=config.backbone,
        base_width=config.base_width,
        input_size=config.input_size,
        net_stride=config.net_stride,
        imagenet_weights=config.imagenet_weights if imagenet else None,
        aux_heads=config.aux_heads,
    )


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[PIPNet, CheckpointMeta]:
    """Rebuild the model of a checkpoint (in eval mode) and return it with its metadata.

    Uses ``torch.load(weights_only=True)``: a checkpoint holds only tensors and plain containers.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a pipstc checkpoint, or its weights do not fit its config.
    """
    ckpt = _read(path)
    meta = _meta(ckpt)
    model = _build_model(meta.config, meta.scheme.num_landmarks, imagenet=False)
    try:
        model.load_state_dict(upgrade_state_dict(model, ckpt["model"])[0], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {exc}") from exc
    return model.to(device).eval(), meta


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # readers see the old or the new file, never half of one


def set_checkpoint_confidence(path: str | Path, confidence: dict[str, Any]) -> None:
    """Attach a calibrated ``ConfidenceModel.to_dict()`` to a checkpoint (rewritten atomically).

    The dict must hold plain data (numbers, strings, lists, dicts, None) so the file still loads
    with ``weights_only=True``.
    """
    ckpt = _read(path)
    ckpt["confidence"] = json.loads(json.dumps(confidence))  # plain data only, fails loudly otherwise
    _save_atomic(ckpt, Path(path))


def _scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    state = dict(state)
    state["milestones"] = dict(state["milestones"])  # Counter -> dict: plain data for weights_only
    return state


def _choose_meanface(config: TrainConfig, dataset: FaceDataset, scheme: Scheme) -> np.ndarray:
    if config.meanface == "scheme" and scheme.meanface_array is not None:
        return scheme.meanface_array
    return compute_meanface(dataset.normalised_landmarks())


def _check_resume(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = {**TrainConfig().to_dict(), **saved}  # a field added since the checkpoint was written has its default
    now = config.to_dict()
    diff = sorted(k for k in set(now) | set(saved) if k not in _RESUMABLE_CHANGES and now.get(k) != saved.get(k))
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"{path} was written with a different config ({changes}); "
            "resume with the same config, pass resume=False to start over, or write to another path"
        )


def resume_conflict(path: str | Path, config: TrainConfig) -> str | None:
    """Why training with ``config`` cannot resume the checkpoint at ``path`` (other settings), or None."""
    try:
        _check_resume(read_checkpoint_meta(path).config.to_dict(), config, Path(path))
    except CheckpointError as e:
        return str(e)
    return None


def train(
    config: TrainConfig,
    dataset: FaceDataset,
    scheme: Scheme,
    out_path: str | Path,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Train a PIPNet and write its checkpoint to ``out_path`` after every epoch.

    Args:
        config: Settings (``config.augment`` replaces the dataset's own augmentation).
        dataset: The training faces; its ``input_size`` must equal ``config.input_size``.
        scheme: The landmark scheme (stored in the checkpoint).
        out_path: Checkpoint file. If it exists and ``resume`` is true, training continues from it.
        resume: Continue from an existing checkpoint at ``out_path`` (its config must match).
        progress: Show a tqdm progress bar.
        log: Called after each epoch (and its checkpoint) with ``{"epoch", "loss", "score", "x", "y",
            "nb_x", "nb_y", "aux", "lr", "seconds", "images_per_s"}`` (``aux``: the second head set's
            weighted loss, 0 without one).

    Returns:
        ``out_path``.

    The checkpoint holds ``{"model", "optimizer", "scheduler", "epoch", "config", "scheme",
    "meanface", "nb", "num_nb"}`` (plain data and tensors only); read it with :func:`load_checkpoint`.
    """
    path, _ = _fit(
        config, dataset, scheme, Path(out_path), resume, progress, log, _World(device=resolve_device(config.device))
    )
    return path


@dataclass
class _Run:
    """The state one training run carries from epoch to epoch."""

    model: PIPNet
    net: torch.nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    meanface: np.ndarray
    table: NeighbourTable
    start: int = 0  # epochs already done (resume)


def _check_inputs(config: TrainConfig, dataset: FaceDataset, scheme: Scheme) -> None:
    if dataset.input_size != config.input_size:
        raise ValueError(f"dataset crops are {dataset.input_size} px but config.input_size is {config.input_size}")
    if dataset.num_landmarks != scheme.num_landmarks:
        raise ValueError(
            f"dataset has {dataset.num_landmarks} landmarks but scheme {scheme.name!r} has {scheme.num_landmarks}"
        )
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    if dataset.uses_aux_heads() and not config.aux_heads:
        raise ValueError("the dataset routes samples to the second head set but config.aux_heads is False; set it")


def _warm_weights(model: PIPNet, state: dict[str, torch.Tensor], path: str) -> None:
    """Load ``state`` into ``model``; the second head set may be absent on either side (STLD stages)."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("aux_") or k in own}
    state = {**{k: v for k, v in own.items() if k.startswith("aux_")}, **state}  # a fresh aux set if the file has none
    state, _ = upgrade_state_dict(model, state)  # an older checkpoint's bias-free stride blocks
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"init_from {path} does not fit this config: {exc}") from exc


def _adam(model: PIPNet, config: TrainConfig) -> torch.optim.Adam:
    """The official Adam, as one fused kernel per parameter where this torch has it.

    The for-loop Adam that torch picks on a CPU by default walks each of the ~60 parameter tensors
    with a dozen separate element-wise passes: measured at 2.7% of a 256 px training step's CPU on
    2 cores, the fused pass at 1.3% (bench/RESULTS.md, "Training speed"). Same algorithm and
    state; the last bits of the update differ from the for-loop version, so a run keeps the variant
    it started with (resuming loads the saved flag).
    """
    params, lr, decay = model.parameters(), config.lr, config.resolved_weight_decay()
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a torch or device without the fused kernel
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)


def _start(config: TrainConfig, dataset: FaceDataset, scheme: Scheme, device: torch.device) -> _Run:
    """Model (fresh, ImageNet, or warm-started from ``init_from``), optimiser and schedule."""
    init = _read(config.init_from) if config.init_from else None
    meanface = (
        np.asarray(init["meanface"], dtype=np.float64).reshape(-1, 2)
        if init is not None
        else _choose_meanface(config, dataset, scheme)
    )
    table = _meta(init).table if init is not None else build_neighbour_table(meanface, config.num_nb)
    if table.num_nb != config.num_nb:
        raise ValueError(
            f"init_from {config.init_from} uses {table.num_nb} neighbours, config.num_nb is {config.num_nb}"
        )
    model = _build_model(config, scheme.num_landmarks, imagenet=init is None)
    if init is not None:
        _warm_weights(model, init["model"], str(config.init_from))
    model.to(device)
    if config.uses_channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _adam(model, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
    return _Run(model, model, optimizer, scheduler, meanface, table)


def _resume(run: _Run, config: TrainConfig, out_path: Path) -> None:
    """Continue from the checkpoint at ``out_path`` (its config must match)."""
    saved = _read(out_path)
    _check_resume(saved["config"], config, out_path)
    state, filled = upgrade_state_dict(run.model, saved["model"])
    run.model.load_state_dict(state)
    run.optimizer.load_state_dict(_optimizer_state(run.model, saved["optimizer"], filled))
    sched_state = dict(saved["scheduler"])
    sched_state["milestones"] = Counter({int(k): int(v) for k, v in sched_state["milestones"].items()})
    run.scheduler.load_state_dict(sched_state)
    run.start = int(saved["epoch"])
    run.meanface = np.asarray(saved["meanface"], dtype=np.float64).reshape(-1, 2)
    run.table = neighbour_table_from_nb(np.asarray(saved["nb"], dtype=np.int64))


def _optimizer_state(model: PIPNet, state: dict[str, Any], filled: list[str]) -> dict[str, Any]:
    """The optimiser state of a checkpoint, re-indexed when parameters were added since (they start fresh).

    Adam keys its state by parameter position; a parameter added in the middle (an older checkpoint's
    missing ``layer5.bias``) shifts the positions after it.
    """
    if not filled:
        return state
    names = [n for n, _ in model.named_parameters()]
    old = [n for n in names if n not in filled]
    new_index = {i: names.index(n) for i, n in enumerate(old)}
    groups = [dict(g, params=list(range(len(names)))) for g in state["param_groups"]]
    if len(groups) != 1:
        raise CheckpointError("an older checkpoint with several optimiser groups cannot be resumed; start over")
    return {"state": {new_index[int(i)]: v for i, v in state["state"].items()}, "param_groups": groups}


def _checkpoint(run: _Run, epoch: int, config: TrainConfig, scheme: Scheme) -> dict[str, Any]:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": _scheduler_state(run.scheduler.state_dict()),
        "epoch": epoch,
        "config": config.to_dict(),
        "scheme": scheme.to_dict(),
        "meanface": run.meanface.reshape(-1).tolist(),
        "nb": run.table.nb.tolist(),
        "num_nb": run.table.num_nb,
    }


def _float(outputs: Any) -> Any:
    """A NamedTuple of tensors in float32 (bf16 autocast outputs, before the loss)."""
    return type(outputs)(*(o.float() for o in outputs))


def _batch_loss(
    run: _Run, images: torch.Tensor, targets: Any, config: TrainConfig, device: torch.device
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch; a model with the second head set runs it too (through the DDP wrapper).

    With ``precision="bf16"`` the forward pass runs under bf16 autocast and the loss in float32.
    """
    bf16 = config.precision == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        if run.model.aux_heads:
            out, aux = run.net(images, with_aux=True)
        else:
            out, aux = run.net(images), None
    if bf16:
        out, aux = _float(out), None if aux is None else _float(aux)
    if aux is not None:
        return pip_loss(out, targets, config.cls_weight, config.reg_weight, aux=aux)
    return pip_loss(out, targets, config.cls_weight, config.reg_weight)


def _train_epoch(
    run: _Run, loader: DataLoader, config: TrainConfig, device: torch.device, bar: Any
) -> tuple[dict[str, float], int]:
    """One pass over the loader; returns the summed loss parts (times batch size) and the images seen."""
    run.model.train()
    sums = dict.fromkeys((*LOSS_PARTS, "total"), 0.0)
    seen = 0
    pinned = device.type == "cuda"
    for batch in loader:
        # uint8 crops travel (a quarter of the float bytes) and are normalised where the step runs
        images = normalise_batch(
            batch.images, channels_last=config.uses_channels_last, device=device, non_blocking=pinned
        )
        targets = batch.targets.to(device, non_blocking=pinned)
        loss, parts = _batch_loss(run, images, targets, config, device)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        n = images.shape[0]
        for k in sums:
            sums[k] += parts[k] * n
        seen += n
        bar.update(1)
        bar.set_postfix(loss=f"{parts['total']:.4f}")
    return sums, seen


def _wrap(run: _Run, config: TrainConfig, world: _World) -> None:
    """The module the step calls: DDP across processes, then ``torch.compile`` when asked."""
    if world.size > 1:
        device = world.device
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        # One static graph: drop_last keeps every batch the same size.
        run.net = torch.compile(run.net, dynamic=False)


def _loader(run: _Run, dataset: FaceDataset, config: TrainConfig, world: _World) -> tuple[DataLoader, int]:
    """The run's loader over this rank's share of the data, and its steps per epoch."""
    train_set = dataset.with_augment(config.augment)
    train_set.seed = config.seed
    per_rank = math.ceil(len(train_set) / world.size)
    # drop_last as the official loader, unless that would leave no batch at all (tiny datasets).
    batch_size = min(config.batch_size, per_rank)
    if world.size > 1:
        sampler: Any = torch.utils.data.distributed.DistributedSampler(
            train_set, num_replicas=world.size, rank=world.rank, shuffle=True, seed=config.seed
        )
    else:
        sampler = EpochSampler(len(train_set), config.seed)
    cuda = world.device.type == "cuda"
    workers = config.resolved_num_workers(cuda=cuda, cpus=_cpus_per_rank(world))
    collate = TargetCollate(run.table.nb, config.grid, train_set.tasks)
    loader = make_loader(train_set, sampler, batch_size, collate, num_workers=workers, pin_memory=cuda)
    return loader, per_rank // batch_size


def _cpus_per_rank(world: _World) -> int:
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    return max(1, (os.cpu_count() or 1) // max(local, 1))


def _fit(
    config: TrainConfig,
    dataset: FaceDataset,
    scheme: Scheme,
    out_path: Path,
    resume: bool,
    progress: bool,
    log: Callable[[dict[str, Any]], None] | None,
    world: _World,
) -> tuple[Path, PIPNet]:
    """The training loop shared by :func:`train` and :func:`pipnet_core.ddp.train_ddp`; returns the model too."""
    _check_inputs(config, dataset, scheme)
    _seed_everything(config.seed)
    device = world.device
    run = _start(config, dataset, scheme, device)
    if resume and out_path.is_file():
        _resume(run, config, out_path)
    _wrap(run, config, world)
    loader, steps = _loader(run, dataset, config, world)
    remaining = max(config.epochs - run.start, 0) * steps
    bar = tqdm(total=remaining, disable=not progress or world.rank != 0, unit="step", dynamic_ncols=True)

    with reused_memory(config.reuse_memory):  # loader workers fork inside, and inherit it
        _epochs(run, loader, config, scheme, out_path, log, world, bar)
    bar.close()
    return out_path, run.model


def _epochs(
    run: _Run,
    loader: DataLoader,
    config: TrainConfig,
    scheme: Scheme,
    out_path: Path,
    log: Callable[[dict[str, Any]], None] | None,
    world: _World,
    bar: Any,
) -> None:
    """The epochs still to train, a checkpoint after each."""
    device = world.device
    for epoch in range(run.start, config.epochs):
        loader.sampler.set_epoch(epoch)
        bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
        t0 = time.perf_counter()
        sums, seen = _train_epoch(run, loader, config, device, bar)
        run.scheduler.step()
        if world.size > 1:
            # DDP keeps parameters equal; BatchNorm running statistics drift per rank, so take rank 0's.
            for buf in run.model.buffers():
                torch.distributed.broadcast(buf, src=0)
        seconds = time.perf_counter() - t0
        if world.rank == 0:
            _save_atomic(_checkpoint(run, epoch + 1, config, scheme), out_path)
        if world.size > 1:
            torch.distributed.barrier()
        if log is not None and world.rank == 0:
            record = {k: v / max(seen, 1) for k, v in sums.items()}
            log({"epoch": epoch + 1, "loss": record.pop("total"), **record, "lr": run.scheduler.get_last_lr()[0],
                 "seconds": seconds, "images_per_s": seen * world.size / max(seconds, 1e-9)})  # fmt: skip
