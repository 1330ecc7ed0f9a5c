"""Dataset, training loop, checkpoints: resume reproduces an uninterrupted run; a tiny model overfits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_faces import draw_faces

from pipnet_core.augment import AugmentConfig
from pipnet_core.crop import to_crop
from pipnet_core.data import FaceDataset, TargetCollate
from pipnet_core.decode import decode
from pipnet_core.images import ImageReadError
from pipnet_core.meanface import build_neighbour_table
from pipnet_core.metrics import nme
from pipnet_core.model import normalise_batch
from pipnet_core.schemes import get_scheme
from pipnet_core.targets import build_targets
from pipnet_core.train import (
    CheckpointError,
    TrainConfig,
    load_checkpoint,
    read_checkpoint_meta,
    set_checkpoint_confidence,
    train,
)

SCHEME = get_scheme("300w")
TINY = {"input_size": 64, "base_width": 8, "num_workers": 0, "channels_last": True}


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray, np.ndarray]:
    return draw_faces(tmp_path_factory.mktemp("faces"), count=8, size=128)


def _dataset(faces: tuple, size: int = 64, **kw: object) -> FaceDataset:
    paths, boxes, lm = faces
    return FaceDataset(paths, boxes, lm, input_size=size, flip=SCHEME.flip, **kw)


class _Interrupt(Exception):
    pass


def test_dataset_items_and_collate(faces: tuple) -> None:
    ds = _dataset(faces, levels=["std", "cls2", "cls3", "std", "std", "std", "std", "std"])
    item = ds[1]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (64, 64, 3)
    np.testing.assert_allclose(item["landmarks"].numpy(), to_crop(faces[2][1], faces[1][1]), atol=1e-6)
    table = build_neighbour_table(SCHEME.meanface_array)
    batch = TargetCollate(table.nb, grid=4)([ds[i] for i in range(3)])
    expect = build_targets(batch.landmarks.numpy(), ["std", "cls2", "cls3"], table.nb, 4)
    assert batch.images.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(batch.targets.cell.numpy(), expect.cell)
    np.testing.assert_allclose(batch.targets.nb_x.numpy(), expect.nb_x)
    np.testing.assert_array_equal(batch.targets.mask_cls.numpy(), expect.mask_cls)
    assert batch.index.tolist() == [0, 1, 2]


def test_augmentation_depends_only_on_seed_epoch_index(faces: tuple) -> None:
    ds = _dataset(faces, augment=AugmentConfig(), seed=3)
    ds.set_epoch(2)
    a = ds[4]
    again = _dataset(faces, augment=AugmentConfig(), seed=3)
    again.set_epoch(2)
    b = again[4]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["landmarks"], b["landmarks"])
    ds.set_epoch(3)
    assert not torch.equal(ds[4]["landmarks"], a["landmarks"])


def test_unreadable_image_names_the_path(tmp_path: Path, faces: tuple) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    ds = FaceDataset([bad, tmp_path / "missing.png"], faces[1][:2], faces[2][:2], input_size=64)
    with pytest.raises(ImageReadError, match="broken.jpg"):
        ds[0]
    with pytest.raises(ImageReadError, match="missing.png"):
        ds[1]


def test_dataset_refuses_bad_levels(faces: tuple) -> None:
    with pytest.raises(ValueError, match="row 2"):
        _dataset(faces, levels=["std", "std", "hard", "std", "std", "std", "std", "std"])


def test_config_round_trip() -> None:
    cfg = TrainConfig(epochs=3, milestones=(1, 2), augment=AugmentConfig(rotate_p=0.1))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().resolved_weight_decay() == 5e-4  # official: decay only without pretraining
    assert TrainConfig(imagenet_weights="r18.pth").resolved_weight_decay() == 0.0
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"epoch": 3})


def test_resume_gives_the_same_weights(tmp_path: Path, faces: tuple) -> None:
    cfg = TrainConfig(epochs=3, batch_size=4, milestones=(2,), lr=1e-3, augment=AugmentConfig(), **TINY)
    straight = train(cfg, _dataset(faces), SCHEME, tmp_path / "a.pt", progress=False)

    def stop_after_first(record: dict) -> None:
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(cfg, _dataset(faces), SCHEME, tmp_path / "b.pt", progress=False, log=stop_after_first)
    assert read_checkpoint_meta(tmp_path / "b.pt").epoch == 1
    epochs_run: list[int] = []
    resumed = train(
        cfg, _dataset(faces), SCHEME, tmp_path / "b.pt", progress=False, log=lambda r: epochs_run.append(r["epoch"])
    )
    assert epochs_run == [2, 3]
    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["scheduler"] == b["scheduler"]
    # A finished run is not trained again; a different config is refused.
    train(cfg, _dataset(faces), SCHEME, tmp_path / "b.pt", progress=False, log=lambda r: epochs_run.append(-1))
    assert epochs_run == [2, 3]
    with pytest.raises(CheckpointError, match="lr"):
        train(dataclasses.replace(cfg, lr=5e-4), _dataset(faces), SCHEME, tmp_path / "b.pt", progress=False)


def test_checkpoint_contents_and_warm_start(tmp_path: Path, faces: tuple) -> None:
    cfg = TrainConfig(epochs=1, batch_size=16, augment=None, **TINY)  # batch larger than the dataset
    logs: list[dict] = []
    path = train(cfg, _dataset(faces), SCHEME, tmp_path / "c.pt", progress=False, log=logs.append)
    assert len(logs) == 1 and np.isfinite(logs[0]["loss"])
    raw = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "scheme", "meanface", "num_nb", "nb"} <= set(raw)
    model, meta = load_checkpoint(path)
    assert not model.training and meta.scheme == SCHEME and meta.table.max_len == 22
    np.testing.assert_allclose(meta.meanface, SCHEME.meanface_array)
    assert meta.confidence is None
    set_checkpoint_confidence(path, {"features": ["vote_spread"], "weights": [1.0]})
    assert read_checkpoint_meta(path).confidence == {"features": ["vote_spread"], "weights": [1.0]}

    warm = TrainConfig(epochs=1, batch_size=16, augment=None, init_from=str(path), lr=0.0, **TINY)
    assert warm.resolved_weight_decay() == 0.0
    out = train(warm, _dataset(faces), SCHEME, tmp_path / "d.pt", progress=False)
    w0, w1 = torch.load(path, weights_only=True)["model"], torch.load(out, weights_only=True)["model"]
    assert torch.equal(w0["cls_layer.weight"], w1["cls_layer.weight"])  # lr 0: the warm start's weights kept


def test_load_checkpoint_refuses_other_files(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="x.pt"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing.pt")


@pytest.mark.slow
def test_tiny_model_overfits_eight_faces(tmp_path: Path, faces: tuple) -> None:
    # A 16-wide ResNet-18 at 128 px (4x4 grid). lr 1e-3 instead of the official 1e-4: 60 full-batch
    # steps are far fewer than 60 epochs over thousands of faces.
    cfg = TrainConfig(
        epochs=60,
        batch_size=8,
        lr=1e-3,
        milestones=(50,),
        input_size=128,
        base_width=16,
        augment=None,
        num_workers=0,
        weight_decay=0.0,
    )
    ds = _dataset(faces, size=128, cache_crops=True)
    losses: list[float] = []
    path = train(cfg, ds, SCHEME, tmp_path / "overfit.pt", progress=False, log=lambda r: losses.append(r["loss"]))
    assert losses[-1] < losses[0] / 10

    model, meta = load_checkpoint(path)
    images = torch.stack([torch.from_numpy(ds.load_crop(i)) for i in range(len(ds))])
    with torch.no_grad():
        out = model(normalise_batch(images))
    decoded = decode(*(o.numpy() for o in out[:5]), meta.table)
    errors = nme(decoded.landmarks, ds.normalised_landmarks(), SCHEME)
    assert errors.mean() < 0.05


def test_a_narrow_net_trains_on_a_batch_of_seven(tmp_path: Path) -> None:
    """Regression: channels_last at width 8 crashed the process in backward on a batch of 7 (torch 2.13 CPU)."""
    paths, boxes, landmarks = draw_faces(tmp_path / "faces", count=7, size=64)
    cfg = TrainConfig(base_width=8, input_size=64, net_stride=16, epochs=1, batch_size=8, num_workers=0)
    assert not cfg.uses_channels_last and TrainConfig(base_width=16).uses_channels_last
    ds = FaceDataset(paths, boxes, landmarks, input_size=64, flip=get_scheme("300w").flip)
    out = train(cfg, ds, get_scheme("300w"), tmp_path / "m.pt", progress=False)
    assert out.is_file()


def test_loader_workers_change_no_weight(tmp_path: Path, faces: tuple) -> None:
    # One persistent worker (items keyed by (epoch, index), crops cached before the fork) trains the
    # same weights, bit for bit, as loading in the training process.
    cfg = TrainConfig(epochs=2, batch_size=4, milestones=(1,), lr=1e-3, augment=AugmentConfig(), **TINY)
    here = train(cfg, _dataset(faces, cache_crops=True), SCHEME, tmp_path / "w0.pt", progress=False)
    worker = dataclasses.replace(cfg, num_workers=1)
    there = train(worker, _dataset(faces, cache_crops=True), SCHEME, tmp_path / "w1.pt", progress=False)
    a, b = torch.load(here, weights_only=True)["model"], torch.load(there, weights_only=True)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_reused_memory_changes_no_weight(tmp_path: Path, faces: tuple) -> None:
    # Keeping freed blocks in the heap (pipnet_core/heap.py) changes where memory comes from, not a number.
    cfg = TrainConfig(epochs=2, batch_size=4, milestones=(1,), lr=1e-3, augment=AugmentConfig(), **TINY)
    assert cfg.reuse_memory
    kept = train(cfg, _dataset(faces), SCHEME, tmp_path / "kept.pt", progress=False)
    plain = dataclasses.replace(cfg, reuse_memory=False)
    returned = train(plain, _dataset(faces), SCHEME, tmp_path / "returned.pt", progress=False)
    a, b = torch.load(kept, weights_only=True)["model"], torch.load(returned, weights_only=True)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_bf16_autocast_trains_on_cpu(tmp_path: Path, faces: tuple) -> None:
    cfg = TrainConfig(epochs=1, batch_size=4, augment=None, precision="bf16", device="cpu", **TINY)
    logs: list[dict] = []
    path = train(cfg, _dataset(faces), SCHEME, tmp_path / "bf16.pt", progress=False, log=logs.append)
    assert np.isfinite(logs[0]["loss"])
    weights = torch.load(path, weights_only=True)["model"]
    assert weights["cls_layer.weight"].dtype == torch.float32  # autocast: the weights stay fp32


def test_a_checkpoint_from_before_new_config_fields_resumes(tmp_path: Path, faces: tuple) -> None:
    cfg = TrainConfig(epochs=2, batch_size=4, milestones=(1,), augment=None, **TINY)

    def stop(record: dict) -> None:
        raise _Interrupt

    with pytest.raises(_Interrupt):
        train(cfg, _dataset(faces), SCHEME, tmp_path / "old.pt", progress=False, log=stop)
    raw = torch.load(tmp_path / "old.pt", weights_only=True)
    for name in ("compile", "precision", "processes"):  # as a checkpoint of an earlier pipstc wrote it
        del raw["config"][name]
    torch.save(raw, tmp_path / "old.pt")
    epochs: list[int] = []
    train(cfg, _dataset(faces), SCHEME, tmp_path / "old.pt", progress=False, log=lambda r: epochs.append(r["epoch"]))
    assert epochs == [2]


def test_checkpoint_finished_only_for_a_complete_run_of_the_same_config(tmp_path: Path, faces: tuple) -> None:
    from pipnet_core.train import checkpoint_finished

    cfg = TrainConfig(epochs=1, batch_size=8, augment=None, **TINY)
    assert not checkpoint_finished(tmp_path / "f.pt", cfg)
    path = train(cfg, _dataset(faces), SCHEME, tmp_path / "f.pt", progress=False)
    assert checkpoint_finished(path, cfg)
    assert checkpoint_finished(path, dataclasses.replace(cfg, num_workers=1))  # a loader setting changes nothing
    assert not checkpoint_finished(path, dataclasses.replace(cfg, epochs=2))  # more epochs to go
    assert not checkpoint_finished(path, dataclasses.replace(cfg, lr=1e-3))  # another run


def test_crop_cache_stops_at_its_limit(faces: tuple) -> None:
    crop_bytes = 64 * 64 * 3
    ds = _dataset(faces, cache_crops=True, cache_limit=3 * crop_bytes + 10)
    ds.precache()
    assert len(ds._cache) == 3  # bounded: the other five are read from their files when asked for
    np.testing.assert_array_equal(ds.load_crop(6), _dataset(faces).load_crop(6))
    assert len(ds._cache) == 3
    assert len(_dataset(faces, cache_crops=True)._cache) == 0  # filled lazily, or by precache()
