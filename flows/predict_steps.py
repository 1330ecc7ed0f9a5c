"""``pipstc predict``: landmarks for a folder of images with a trained round's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

__all__ = ["OUTPUT_SUFFIXES", "find_faces", "predict_images"]

OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")


def find_faces(images: str | Path, detector: str, boxes_file: str | None) -> Any:
    """The faces to predict (an :class:`annotations.formats.ImportResult` of pool samples).

    ``images`` is a folder (walked recursively) or one image file.

    Raises:
        flows.errors.NothingFound: no face in any image (each image's reason is in the message's count).
    """
    from annotations.ingest.pool import build_pool
    from flows.errors import NothingFound

    src = Path(images)
    files = [src] if src.is_file() else None
    found = build_pool(str(src.parent if files else src), detector=detector, boxes_file=boxes_file, dataset="predict",
                       files=files)  # fmt: skip
    if len(found.samples) == 0:
        reasons = found.rejects["reason"].value_counts()
        why = "; ".join(f"{n}x {r}" for r, n in reasons.head(3).items()) or "no image files"
        fix = (
            "check that the box file names these images and its boxes lie inside them"
            if boxes_file
            else "give the face boxes with --boxes FILE (CSV image,x0,y0,x1,y1)"
        )
        raise NothingFound(src, f"no face to predict ({why})", fix)
    return found


def predict_images(
    checkpoint: str,
    images: str,
    output: str,
    boxes_file: str | None = None,
    overlay_dir: str | None = None,
    detector: str = "yuface",
    crop_scale: float | None = None,
) -> dict[str, Any]:
    """Find faces (detector or box file), predict landmarks, write CSV/JSON/Parquet (+ overlays).

    Raises:
        flows.errors.NothingFound: no face in any image (nothing is written).
        flows.errors.UserError: an ``output`` that is not .csv, .json or .parquet.
    """
    from annotations.ingest.boxmap import BoxMapping
    from annotations.ingest.crops import inference_crop_boxes
    from flows.config import STCConfig
    from flows.errors import UserError
    from pipnet_core.predict import Predictor

    if Path(output).suffix not in OUTPUT_SUFFIXES:
        raise UserError(output, "unknown output type", f"name the --output file {', '.join(OUTPUT_SUFFIXES)}")
    if not Path(checkpoint).is_file():
        raise UserError(checkpoint, "checkpoint not found", "give a round's <store>/rounds/round=<k>/model.pt")
    found = find_faces(images, detector, boxes_file)
    faces = found.samples.reset_index(drop=True)
    boxmap = Path(checkpoint).with_name("boxmap.json")
    mapping = BoxMapping.from_dict(json.loads(boxmap.read_text())) if boxmap.exists() else BoxMapping.identity()
    cfg_file = Path(checkpoint).with_name("config.json")
    scale = crop_scale or (STCConfig.from_dict(json.loads(cfg_file.read_text())).crop_scale if cfg_file.exists()
                           else STCConfig().crop_scale)  # fmt: skip
    predictor = Predictor.from_checkpoint(checkpoint, backend="onnx")
    crops = inference_crop_boxes(faces, mapping, scale)
    pred = predictor.predict(faces["image_uri"].tolist(), crops, batch_size=32)
    failed = {i for i, _ in pred.failed}
    rows = []
    for i, face in faces.iterrows():
        if i in failed:
            continue
        row: dict[str, Any] = {"image": face["image_uri"], "box": list(map(float, face["box"])),
                               "face_confidence": float(pred.face_confidence[i]),
                               "predicted_nme": float(pred.predicted_nme[i])}  # fmt: skip
        for j, (x, y) in enumerate(pred.landmarks[i]):
            row[f"x{j}"], row[f"y{j}"] = float(x), float(y)
        rows.append(row)
    table = pd.DataFrame(rows)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table.assign(box=table["box"].map(lambda b: " ".join(f"{v:.2f}" for v in b))).to_csv(out, index=False)
    elif out.suffix == ".json":
        out.write_text(json.dumps(rows, indent=1))
    elif out.suffix == ".parquet":
        table.to_parquet(out, index=False)
    else:
        raise ValueError(f"--output {output}: use a .csv, .json or .parquet file name")
    if overlay_dir:
        Path(overlay_dir).mkdir(parents=True, exist_ok=True)
        for i, face in faces.iterrows():
            if i in failed:
                continue
            img = cv2.imread(str(face["image_uri"]), cv2.IMREAD_COLOR)
            if img is None:
                continue
            for x, y in pred.landmarks[i]:
                cv2.circle(img, (int(round(x)), int(round(y))), 2, (0, 0, 255), -1)
            cv2.imwrite(str(Path(overlay_dir) / f"{i:05d}-{Path(face['image_uri']).stem}.jpg"), img)
    skipped = [f"{r['source']}: {r['reason']}" for r in found.rejects.to_dict("records")]
    skipped += [f"{faces['image_uri'][i]}: {reason}" for i, reason in pred.failed]
    return {
        "faces": len(rows),
        "failed": len(failed) + len(found.rejects),
        "skipped": skipped,
        "landmarks": np.asarray(pred.landmarks).shape,
    }
