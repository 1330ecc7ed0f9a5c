"""Where training and pool labeling run: CUDA when a GPU is present, the CPU paths otherwise (tested on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipnet_core.config import TrainConfig
from pipnet_core.meanface import build_neighbour_table
from pipnet_core.model import create_model
from pipnet_core.predict import CPU_BATCH, Predictor, resolve_backend
from pipnet_core.schemes import get_scheme
from pipnet_core.train import resolve_device


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend a CUDA GPU is present (only the selection logic runs; nothing touches CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_training_device_auto_is_cpu_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU.*device='auto'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'tpu0' is not a device"):
        resolve_device("tpu0")


def test_training_device_auto_is_cuda_with_a_gpu(gpu: None) -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_pool_labeling_backend_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_backend("auto") == ("onnx", torch.device("cpu"))  # ONNX Runtime stays the CPU default
    assert resolve_backend("torch") == ("torch", torch.device("cpu"))
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_backend("torch", "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tensorrt")


def test_pool_labeling_backend_with_a_gpu(gpu: None) -> None:
    assert resolve_backend("auto") == ("torch", torch.device("cuda"))
    assert resolve_backend("auto", "cpu") == ("onnx", torch.device("cpu"))  # a GPU machine told to stay off it
    assert resolve_backend("torch", "cuda:0") == ("torch", torch.device("cuda", 0))
    assert resolve_backend("onnx") == ("onnx", torch.device("cpu"))


def test_loader_workers_auto() -> None:
    cfg = TrainConfig()
    assert cfg.num_workers is None
    assert cfg.resolved_num_workers(cuda=False, cpus=2) == 0  # the step needs both cores
    assert cfg.resolved_num_workers(cuda=False, cpus=16) == 1
    assert cfg.resolved_num_workers(cuda=True, cpus=16) == 8  # a GPU needs its loader fed
    assert cfg.resolved_num_workers(cuda=True, cpus=1) == 0
    assert TrainConfig(num_workers=3).resolved_num_workers(cuda=True, cpus=16) == 3


def test_config_refuses_unknown_precision_and_processes() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="processes must be >= 1"):
        TrainConfig(processes=0)


def test_cpu_predictor_uses_cpu_batches() -> None:
    scheme = get_scheme("300w")
    model = create_model(68, base_width=8, input_size=64)
    pred = Predictor(model, build_neighbour_table(scheme.meanface_array), scheme, backend="torch", device="cpu")
    assert pred.device == torch.device("cpu") and pred.batch_size == CPU_BATCH
    crops = np.random.default_rng(0).integers(0, 255, size=(3, 64, 64, 3), dtype=np.uint8)
    landmarks, _ = pred.predict_crops(crops)
    assert landmarks.shape == (3, 68, 2) and np.isfinite(landmarks).all()
