"""ONNX export: names, dynamic batch, and ONNX Runtime outputs equal torch's within 1e-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipnet_core.export import OUTPUT_NAMES, export_onnx, onnx_bytes
from pipnet_core.model import PIPNet, create_model


def _busy_model(seed: int = 0) -> PIPNet:
    """A tiny model whose outputs are O(1), so a 1e-4 tolerance means something."""
    torch.manual_seed(seed)
    model = create_model(19, num_nb=5, base_width=8, input_size=128)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    for head in (model.cls_layer, model.x_layer, model.y_layer, model.nb_x_layer, model.nb_y_layer):
        torch.nn.init.normal_(head.weight, std=0.2)
        torch.nn.init.normal_(head.bias, std=0.5)
    return model.eval()


def test_onnx_runtime_matches_torch(tmp_path: Path) -> None:
    model = _busy_model()
    path = export_onnx(model, tmp_path / "pipnet.onnx")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert [o.name for o in graph.graph.output] == ["cls", "x", "y", "nb_x", "nb_y", "cls2", "cls3"]
    assert graph.opset_import[0].version == 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 128, 128)  # batch 3 though exported with batch 1: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x)
    got = session.run(None, {"image": x.numpy()})
    assert max(float(e.abs().max()) for e in expected) > 0.5  # outputs are not trivially tiny
    for name, e, g in zip(OUTPUT_NAMES, expected, got, strict=True):
        assert g.shape == tuple(e.shape), name
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


def test_export_leaves_the_model_untouched() -> None:
    model = _busy_model(1).train().to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = onnx_bytes(model, dynamic_batch=False)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 128, 128]
    with pytest.raises(Exception):  # noqa: B017  (ORT raises its own exception type)
        session.run(None, {"image": np.zeros((2, 3, 128, 128), np.float32)})
