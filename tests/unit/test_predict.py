"""Batched prediction: backends agree, pixels map back through the crop, failures are isolated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_faces import draw_faces

from pipnet_core.confidence import ConfidenceModel
from pipnet_core.crop import crop_image, from_crop
from pipnet_core.data import FaceDataset
from pipnet_core.images import read_image
from pipnet_core.predict import Predictor
from pipnet_core.schemes import get_scheme
from pipnet_core.train import TrainConfig, set_checkpoint_confidence, train

SCHEME = get_scheme("300w")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], np.ndarray]:
    folder = tmp_path_factory.mktemp("predict")
    paths, boxes, lm = draw_faces(folder, count=6, size=128)
    cfg = TrainConfig(epochs=2, batch_size=6, lr=1e-3, input_size=64, base_width=8, augment=None, num_workers=0)
    ckpt = train(cfg, FaceDataset(paths, boxes, lm, input_size=64), SCHEME, folder / "model.pt", progress=False)
    # Crop boxes that are not the whole image, so the pixel mapping is exercised.
    crop_boxes = np.array([[8.0, 4.0, 120.0, 124.0]] * len(paths)) + np.arange(len(paths))[:, None]
    return ckpt, paths, crop_boxes


def test_backends_agree_and_pixels_follow_the_crop(setup: tuple) -> None:
    ckpt, paths, boxes = setup
    onnx_pred = Predictor.from_checkpoint(ckpt, backend="onnx", num_threads=1).predict(paths, boxes, batch_size=4)
    torch_pred = Predictor.from_checkpoint(ckpt, backend="torch").predict(paths, boxes, batch_size=32)
    assert onnx_pred.failed == [] and onnx_pred.landmarks.shape == (6, 68, 2)
    np.testing.assert_allclose(onnx_pred.landmarks, torch_pred.landmarks, atol=1e-3)
    np.testing.assert_allclose(onnx_pred.face_confidence, torch_pred.face_confidence, atol=1e-4)
    np.testing.assert_allclose(onnx_pred.landmarks, from_crop(onnx_pred.landmarks_norm, boxes))
    assert set(onnx_pred.signals) == {"score_peak", "vote_spread", "coarse_agreement"}
    for arr in (onnx_pred.landmark_confidence, onnx_pred.face_confidence):
        assert np.isfinite(arr).all() and (arr >= 0).all() and (arr <= 1).all()
    assert (onnx_pred.predicted_nme > 0).all()


def test_arrays_and_paths_give_the_same_result(setup: tuple) -> None:
    ckpt, paths, boxes = setup
    predictor = Predictor.from_checkpoint(ckpt, backend="onnx")
    from_paths = predictor.predict(paths, boxes)
    from_arrays = predictor.predict([read_image(p).rgb for p in paths], boxes, batch_size=5)
    np.testing.assert_allclose(from_paths.landmarks, from_arrays.landmarks, atol=1e-4)
    crops = np.stack([crop_image(read_image(p).rgb, b, 64) for p, b in zip(paths, boxes, strict=True)])
    norm, _ = predictor.predict_crops(crops)
    np.testing.assert_allclose(from_paths.landmarks_norm, norm, atol=1e-6)


def test_unreadable_image_fails_alone(setup: tuple, tmp_path: Path) -> None:
    ckpt, paths, boxes = setup
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\x00" * 10)
    images = [paths[0], broken, paths[2], tmp_path / "gone.png"]
    bad_boxes = boxes[:4].copy()
    predictor = Predictor.from_checkpoint(ckpt, backend="onnx")
    pred = predictor.predict(images, bad_boxes, batch_size=2)
    assert [i for i, _ in pred.failed] == [1, 3]
    assert "broken.jpg" in pred.failed[0][1] and "gone.png" in pred.failed[1][1]
    assert np.isnan(pred.landmarks[[1, 3]]).all() and np.isnan(pred.face_confidence[[1, 3]]).all()
    good = predictor.predict([paths[0], paths[2]], boxes[[0, 2]])
    np.testing.assert_allclose(pred.landmarks[[0, 2]], good.landmarks, atol=1e-4)
    # A degenerate box is a per-face failure too.
    degenerate = boxes[:2].copy()
    degenerate[1] = [50, 50, 50, 60]
    assert [i for i, _ in predictor.predict(paths[:2], degenerate).failed] == [1]


def test_flip_tta_and_attached_confidence(setup: tuple, tmp_path: Path) -> None:
    ckpt, paths, boxes = setup
    plain = Predictor.from_checkpoint(ckpt, backend="torch").predict(paths, boxes)
    tta = Predictor.from_checkpoint(ckpt, backend="torch").predict(paths, boxes, flip_tta=True)
    assert "flip_disagreement" in tta.signals and np.isfinite(tta.signals["flip_disagreement"]).all()
    assert not np.allclose(plain.landmarks, tta.landmarks)

    custom = ConfidenceModel.default(norm_distance=0.25)
    custom.face_threshold = 0.03
    copy = tmp_path / "with_confidence.pt"
    copy.write_bytes(Path(ckpt).read_bytes())
    set_checkpoint_confidence(copy, custom.to_dict())
    predictor = Predictor.from_checkpoint(copy, backend="torch")
    assert predictor.confidence.face_threshold == 0.03
    pred = predictor.predict(paths, boxes)
    np.testing.assert_allclose(pred.face_confidence, custom.face_confidence(pred.signals))
