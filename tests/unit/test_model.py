"""Backbone and PIPNet model: parameter names, checkpoint compatibility, shapes, coarse maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipnet_core.backbone import WeightsError, create_backbone, load_imagenet_weights
from pipnet_core.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PIPOutputs,
    create_model,
    load_pipnet_weights,
    normalise_batch,
)


def _bn_keys(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def torchvision_resnet18_keys() -> dict[str, tuple[int, ...]]:
    """torchvision's resnet18 state dict key set, written from the architecture (He et al. 2016)."""
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), **_bn_keys("bn1", 64)}
    cin = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            keys.update(_bn_keys(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(_bn_keys(f"{p}.bn2", planes))
            if block == 0 and stage > 1:
                keys[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                keys.update(_bn_keys(f"{p}.downsample.1", planes))
            cin = planes
    keys["fc.weight"] = (1000, 512)
    keys["fc.bias"] = (1000,)
    return keys


def _random_state(keys: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g)
    return out


def official_pipnet_r18_keys(n: int, c: int, stride: int = 32) -> dict[str, tuple[int, ...]]:
    """Key set of the official Pip_resnet18 (lib/networks.py): the trunk without fc, plus heads."""
    keys = {k: v for k, v in torchvision_resnet18_keys().items() if not k.startswith("fc.")}
    if stride == 16:
        keys["deconv1.weight"] = (512, 512, 4, 4)
        keys.update(_bn_keys("bn_deconv1", 512))
    if stride >= 64:
        keys["layer5.weight"] = (512, 512, 3, 3)
        keys["layer5.bias"] = (512,)  # nn.Conv2d with its default bias (lib/networks.py)
        keys.update(_bn_keys("bn5", 512))
    if stride == 128:
        keys["layer6.weight"] = (512, 512, 3, 3)
        keys["layer6.bias"] = (512,)
        keys.update(_bn_keys("bn6", 512))
    for name, out in (("cls_layer", n), ("x_layer", n), ("y_layer", n), ("nb_x_layer", c * n), ("nb_y_layer", c * n)):
        keys[f"{name}.weight"] = (out, 512, 1, 1)
        keys[f"{name}.bias"] = (out,)
    return keys


def test_resnet18_matches_torchvision_key_set() -> None:
    expected = torchvision_resnet18_keys()
    assert len(expected) == 122  # torchvision resnet18().state_dict() has 122 entries
    got = {k: tuple(v.shape) for k, v in create_backbone("resnet18").state_dict().items()}
    assert got == expected


def test_imagenet_file_loads_strictly(tmp_path: Path) -> None:
    state = _random_state(torchvision_resnet18_keys())
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(state, path)
    net = load_imagenet_weights(create_backbone("resnet18"), path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_imagenet_file_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    # torchvision's original ImageNet files predate BatchNorm's num_batches_tracked.
    state = {k: v for k, v in _random_state(torchvision_resnet18_keys()).items() if "num_batches" not in k}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    net = load_imagenet_weights(create_backbone("resnet18"), path)
    assert torch.equal(net.conv1.weight, state["conv1.weight"])


def test_imagenet_mismatch_names_the_file(tmp_path: Path) -> None:
    state = _random_state(torchvision_resnet18_keys())
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="r18.pth"):
        load_imagenet_weights(create_backbone("resnet50"), path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_imagenet_weights(create_backbone("resnet18"), tmp_path / "nope.pth")


@pytest.mark.parametrize("name,blocks,out", [("resnet50", (3, 4, 6, 3), 2048), ("resnet101", (3, 4, 23, 3), 2048)])
def test_bottleneck_layout(name: str, blocks: tuple[int, ...], out: int) -> None:
    net = create_backbone(name)
    sd = net.state_dict()
    assert net.out_channels == out
    for stage, count in enumerate(blocks, start=1):
        assert len(getattr(net, f"layer{stage}")) == count
        assert f"layer{stage}.0.downsample.0.weight" in sd  # stage 1 projects 64 -> 256
        assert f"layer{stage}.0.conv3.weight" in sd
    assert tuple(sd["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(sd["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)  # stride on the 3x3 (v1.5)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)


@pytest.mark.parametrize("stride", [16, 32, 64, 128])
def test_official_pipnet_checkpoint_loads_unchanged(stride: int) -> None:
    keys = official_pipnet_r18_keys(68, 10, stride)
    state = _random_state(keys, seed=stride)
    model = create_model(68, num_nb=10, net_stride=stride)
    model.load_state_dict(state, strict=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    assert model.grid == 256 // stride


def test_official_checkpoint_file_loads(tmp_path: Path) -> None:
    state = _random_state(official_pipnet_r18_keys(98, 10), seed=9)
    path = tmp_path / "epoch59.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as saved from a DataParallel net
    model = load_pipnet_weights(create_model(98, num_nb=10), path)
    assert torch.equal(model.nb_x_layer.weight, state["nb_x_layer.weight"])
    with pytest.raises(WeightsError, match="epoch59.pth"):
        load_pipnet_weights(create_model(68, num_nb=10), path)


def test_head_init_and_output_shapes() -> None:
    torch.manual_seed(0)
    model = create_model(98, num_nb=10, base_width=8, input_size=256).eval()
    for head in (model.cls_layer, model.x_layer, model.y_layer, model.nb_x_layer, model.nb_y_layer):
        assert float(head.bias.detach().abs().max()) == 0.0
        assert 0.0005 < float(head.weight.detach().std()) < 0.0015  # N(0, 0.001), docs/algorithm.md section 2.4
    with torch.no_grad():
        out = model(torch.randn(2, 3, 256, 256))
    assert isinstance(out, PIPOutputs)
    assert out.cls.shape == (2, 98, 8, 8) and out.x.shape == (2, 98, 8, 8) and out.y.shape == (2, 98, 8, 8)
    assert out.nb_x.shape == (2, 980, 8, 8) and out.nb_y.shape == (2, 980, 8, 8)
    assert out.cls2.shape == (2, 98, 4, 4) and out.cls3.shape == (2, 98, 2, 2)


def test_coarse_maps_share_the_score_head() -> None:
    torch.manual_seed(1)
    model = create_model(5, num_nb=2, base_width=8, input_size=128).eval()
    torch.nn.init.normal_(model.cls_layer.weight, std=0.1)
    x = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        out = model(x)
        f = model.forward_features(x)
        f2 = F.max_pool2d(f, kernel_size=2, stride=2)
        f3 = F.max_pool2d(f2, kernel_size=2, stride=2)
        expect2 = F.conv2d(f2, model.cls_layer.weight, model.cls_layer.bias)
        expect3 = F.conv2d(f3, model.cls_layer.weight, model.cls_layer.bias)
    torch.testing.assert_close(out.cls2, expect2)
    torch.testing.assert_close(out.cls3, expect3)
    # No parameters beyond the five heads and the trunk.
    assert not [n for n, _ in model.named_parameters() if "cls2" in n or "cls3" in n]


def test_channels_last_gives_same_outputs() -> None:
    torch.manual_seed(2)
    model = create_model(7, num_nb=3, base_width=8, input_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_normalise_batch() -> None:
    images = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    images[1, :, :, 0] = 255
    images[1, :, :, 2] = 128
    out = normalise_batch(images)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out[0, 1], torch.full((4, 5), -IMAGENET_MEAN[1] / IMAGENET_STD[1]))
    torch.testing.assert_close(out[1, 0], torch.full((4, 5), (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    torch.testing.assert_close(out[1, 2], torch.full((4, 5), (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]))
    cl = normalise_batch(torch.from_numpy(images), channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out)
    with pytest.raises(ValueError, match="uint8"):
        normalise_batch(images.astype(np.float32))


def test_invalid_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of net_stride"):
        create_model(68, input_size=250, base_width=8)
    with pytest.raises(ValueError, match="net_stride"):
        create_model(68, net_stride=8, base_width=8)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_model(68, backbone="resnet34")


def test_r50_stride_variant_works() -> None:
    # The official code breaks here (2048-channel heads after a 512-channel block, docs/algorithm.md section 2.3).
    model = create_model(4, num_nb=2, backbone="resnet50", base_width=4, input_size=128, net_stride=64).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert out.cls.shape == (1, 4, 2, 2)
