"""ResNet-18/50/101 backbones with torchvision's parameter names.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. The layout and every parameter
name follow torchvision's ``resnet18/50/101`` (``conv1, bn1, layer1..4`` of ``BasicBlock`` /
``Bottleneck`` blocks with ``conv1/bn1/conv2/bn2[/conv3/bn3]/downsample.0/.1``, then ``fc``), so a
torchvision-format ImageNet state dict file loads with ``strict=True``. torchvision itself is not used:
its wheel does not load beside the CPU torch build on these machines (docs/algorithm.md section 2.2), and
nothing is downloaded here; weights come from a file the user gives.

``base_width`` scales every stage (64 is the real network); narrower nets keep the same names and are
meant for tests and demos only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "WeightsError",
    "create_backbone",
    "load_imagenet_weights",
    "read_state_dict",
]

# Blocks per stage (He et al. 2016, table 1).
BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}


class WeightsError(ValueError):
    """A weights file does not fit the network; the message names the file and the mismatch."""


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """An ImageNet ResNet with torchvision's module names.

    Attributes:
        out_channels: Channels of the ``layer4`` output (512 x expansion at ``base_width`` 64).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, ...],
        base_width: int = 64,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        self.base_width = base_width
        self._cin = base_width
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base_width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, base_width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, base_width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, base_width * 8, layers[3], stride=2)
        self.out_channels = base_width * 8 * block.expansion
        # Kept only so that ImageNet files load strictly; PIPNet drops avgpool/fc (docs/algorithm.md section 2.2).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # torchvision's default init (He et al. 2015, fan_out, ReLU gain).
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._cin, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self._cin, planes, stride, downsample)]
        self._cin = planes * block.expansion
        layers += [block(self._cin, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the stride-32 ``layer4`` map (B, out_channels, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def create_backbone(name: str, base_width: int = 64) -> ResNet:
    """Build a randomly initialised ResNet.

    Args:
        name: ``"resnet18"``, ``"resnet50"`` or ``"resnet101"``.
        base_width: Channels of the stem; stages use 1, 2, 4, 8 times it. 64 is the real network.

    Raises:
        ValueError: an unknown name.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    kind, layers = BACKBONES[name]
    return ResNet(BasicBlock if kind == "basic" else Bottleneck, layers, base_width=base_width)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely (``weights_only=True``) as a flat state dict.

    Accepts a bare state dict, or one nested under ``"state_dict"``/``"model"``, with or without the
    ``"module."`` prefix of DataParallel.

    Raises:
        WeightsError: the file cannot be read or holds something else.
    """
    path = Path(path)
    try:
        state: object = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, pickles with code objects, non-torch files
        raise WeightsError(f"{path} cannot be read as a weights file (weights_only=True): {exc}") from exc
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def state_dict_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Keys the file lacks, keys the network lacks, and shape mismatches (``num_batches_tracked`` optional)."""
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs net {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    return missing, unexpected, shapes


def load_imagenet_weights(backbone: ResNet, path: str | Path) -> ResNet:
    """Load a torchvision-format ImageNet state dict file into ``backbone`` (strictly).

    The file is read with ``torch.load(weights_only=True)``: only tensors and plain containers, no
    code. Files from before BatchNorm's ``num_batches_tracked`` (torchvision's original ImageNet
    releases) load too: torch fills that counter in for state dicts without version metadata.

    Raises:
        FileNotFoundError: the file does not exist.
        WeightsError: the keys or shapes differ from the network; the message lists them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights file {path} does not exist; give a torchvision-format .pth file")
    state = read_state_dict(path)
    missing, unexpected, shapes = state_dict_mismatch(backbone, state)
    if missing or unexpected or shapes:
        raise WeightsError(
            f"{path} does not fit this backbone ({len(missing)} missing, {len(unexpected)} unexpected keys, "
            f"{len(shapes)} shape mismatches). Missing: {missing[:5]}; unexpected: {unexpected[:5]}; "
            f"shapes: {shapes[:5]}. Give the torchvision ImageNet file of the same ResNet depth at base_width 64."
        )
    # num_batches_tracked is absent from old torchvision files; keep the network's own counter.
    state = {**backbone.state_dict(), **state}
    backbone.load_state_dict(state, strict=True)
    return backbone
