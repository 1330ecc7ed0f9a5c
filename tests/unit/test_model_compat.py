"""The model against the official code: biased stride-64/128 blocks, floor-pooled coarse maps.

Issue 11 items 21 and 22: official stride-64/128 checkpoints load (their ``layer5``/``layer6`` are
biased convs), older pipstc checkpoints without that bias still load and resume, and grids not
divisible by 4 (224 at stride 32) train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_faces import draw_faces

from pipnet_core.data import FaceDataset
from pipnet_core.model import create_model
from pipnet_core.schemes import get_scheme
from pipnet_core.targets import build_targets
from pipnet_core.train import TrainConfig, load_checkpoint, train

SCHEME = get_scheme("300w")


@pytest.mark.parametrize("stride", [64, 128])
def test_stride_blocks_are_biased_like_the_official_ones(stride: int) -> None:
    model = create_model(68, num_nb=10, base_width=8, input_size=256, net_stride=stride)
    sd = model.state_dict()
    assert tuple(sd["layer5.bias"].shape) == (64,)
    assert float(sd["layer5.bias"].abs().max()) == 0.0  # official init: bias 0
    assert ("layer6.bias" in sd) == (stride == 128)


@pytest.mark.parametrize(("size", "grid"), [(224, 7), (192, 6), (96, 3)])
def test_coarse_maps_floor_like_the_targets(size: int, grid: int) -> None:
    model = create_model(5, num_nb=2, base_width=8, input_size=size, net_stride=32).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    targets = build_targets(np.full((1, 5, 2), 0.5), ["std"], np.zeros((5, 2), dtype=np.int64), grid)
    assert out.cls.shape[-1] == grid
    assert out.cls2.shape[-2:] == targets.cls2.shape[-2:] == (grid // 2, grid // 2)
    assert out.cls3.shape[-2:] == targets.cls3.shape[-2:] == (grid // 4, grid // 4)
    with torch.no_grad():
        f = model.forward_features(torch.zeros(1, 3, size, size))
    assert model.cls_layer(F.max_pool2d(f, 2)).shape == model(torch.zeros(1, 3, size, size)).cls2.shape


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray, np.ndarray]:
    return draw_faces(tmp_path_factory.mktemp("faces"), count=4, size=128)


def _dataset(faces: tuple, size: int, levels: list[str] | None = None) -> FaceDataset:
    paths, boxes, lm = faces
    return FaceDataset(paths, boxes, lm, input_size=size, flip=SCHEME.flip, levels=levels)


def test_one_step_trains_at_224_with_every_curriculum_level(tmp_path: Path, faces: tuple) -> None:
    cfg = TrainConfig(input_size=224, net_stride=32, base_width=8, epochs=1, milestones=(1,), batch_size=4,
                      num_workers=0, augment=None, channels_last=False)  # fmt: skip
    # the coarse maps (3x3 and 1x1 at grid 7) are supervised. channels_last off: torch 2.13 CPU segfaults in
    # the backward of NHWC convolutions at 224-256 px with base_width 8, with or without this change
    levels = ["std", "cls2", "cls3", "std"]
    logs: list[dict] = []
    train(cfg, _dataset(faces, 224, levels), SCHEME, tmp_path / "m.pt", progress=False, log=logs.append)
    assert len(logs) == 1 and np.isfinite(logs[0]["loss"])


def _strip_bias(path: Path) -> None:
    """Rewrite a stride-64 checkpoint as pipstc wrote it before layer5 had a bias (model and Adam state)."""
    ckpt = torch.load(path, weights_only=True)
    model = create_model(SCHEME.num_landmarks, num_nb=10, base_width=8, input_size=128, net_stride=64)
    names = [n for n, _ in model.named_parameters()]
    gone = names.index("layer5.bias")
    del ckpt["model"]["layer5.bias"]
    opt = ckpt["optimizer"]
    opt["state"] = {(i if i < gone else i - 1): v for i, v in opt["state"].items() if i != gone}
    opt["param_groups"][0]["params"] = list(range(len(names) - 1))
    torch.save(ckpt, path)


def test_an_older_checkpoint_without_the_bias_loads_and_resumes(tmp_path: Path, faces: tuple) -> None:
    cfg = TrainConfig(input_size=128, net_stride=64, base_width=8, epochs=1, milestones=(1,), batch_size=4,
                      num_workers=0, augment=None, channels_last=False)  # fmt: skip
    path = tmp_path / "old.pt"
    train(cfg, _dataset(faces, 128), SCHEME, path, progress=False)
    weight = torch.load(path, weights_only=True)["model"]["layer5.weight"].clone()
    _strip_bias(path)
    model, meta = load_checkpoint(path)
    assert meta.epoch == 1
    assert torch.equal(model.layer5.weight.detach(), weight) and float(model.layer5.bias.abs().max()) == 0.0
    logs: list[dict] = []
    train(TrainConfig(**{**cfg.to_dict(), "epochs": 2, "milestones": (1,), "augment": None}), _dataset(faces, 128),
          SCHEME, path, progress=False, log=logs.append)  # fmt: skip
    assert [r["epoch"] for r in logs] == [2]  # resumed after epoch 1, not started over
