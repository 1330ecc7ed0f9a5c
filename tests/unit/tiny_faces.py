"""Tiny drawn faces for model tests: an ellipse with a coloured dot at every 300W landmark.

Not the project's synthetic generator: just enough image content for a tiny PIPNet to find the
landmarks on a handful of faces.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipnet_core.schemes import get_scheme


def draw_faces(
    folder: Path, count: int = 8, size: int = 128, seed: int = 0
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Write ``count`` PNG faces to ``folder``.

    Returns:
        image paths, (M, 4) crop boxes (the whole image), (M, N, 2) landmarks in pixels.
    """
    scheme = get_scheme("300w")
    mean = scheme.meanface_array
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, boxes, landmarks = [], [], []
    colours = rng.integers(40, 255, size=(scheme.num_landmarks, 3))
    for k in range(count):
        scale = rng.uniform(0.85, 1.05)
        shift = rng.uniform(-0.06, 0.06, size=2)
        pts = (mean - 0.5) * scale + 0.5 + shift + rng.normal(0, 0.004, size=mean.shape)
        px = pts * size
        image = np.full((size, size, 3), 30, dtype=np.uint8)
        centre = tuple(int(v) for v in px.mean(axis=0))
        axes = (int(0.42 * scale * size), int(0.5 * scale * size))
        cv2.ellipse(image, centre, axes, 0, 0, 360, (150, 120, 100), -1)
        for i, (x, y) in enumerate(px):
            cv2.circle(image, (int(x), int(y)), 2, tuple(int(c) for c in colours[i]), -1)
        path = folder / f"face{k}.png"
        cv2.imwrite(str(path), image[:, :, ::-1])
        paths.append(path)
        boxes.append([0.0, 0.0, float(size), float(size)])
        landmarks.append(px)
    return paths, np.array(boxes), np.array(landmarks)
