"""Pools: any common image file becomes samples (detector or box file); bad files become rejects."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from annotations.formats.common import landmark_boxes
from annotations.ingest.boxmap import iou_matrix
from annotations.ingest.detect import create_detector, detect_faces
from annotations.ingest.pool import build_pool, list_pool_files
from annotations.store.ids import SAMPLE_ID_LENGTH, sample_id
from annotations.store.schema import rejects_schema, samples_schema
from pipnet_core.images import ImageReadError, decode_image, read_image
from synthetic_faces import DOMAINS, iter_faces, write_dataset


def _pattern(h: int = 30, w: int = 40) -> np.ndarray:
    """An RGB image whose every pixel is distinct enough to tell rotations apart."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 6 % 256, y * 8 % 256, (x + y) * 3 % 256], axis=2).astype(np.uint8)


def _png_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif.tobytes())
    return buf.getvalue()


# -- image reading --------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation: int) -> None:
    data = _png_with_orientation(_pattern(), orientation)
    ours = decode_image(data).rgb
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(ours, expected)


def test_image_types_decode_to_rgb_uint8(tmp_path: Path) -> None:
    rgb = _pattern()
    bgr = rgb[:, :, ::-1]
    cv2.imwrite(str(tmp_path / "a.bmp"), bgr)
    cv2.imwrite(str(tmp_path / "a.tiff"), bgr)
    cv2.imwrite(str(tmp_path / "a.webp"), bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless
    for name in ("a.bmp", "a.tiff", "a.webp"):
        img = read_image(tmp_path / name)
        assert img.rgb.dtype == np.uint8 and img.rgb.shape == (30, 40, 3) and (img.width, img.height) == (40, 30)
        np.testing.assert_array_equal(img.rgb, rgb)
    gray = rgb[:, :, 0]
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").rgb, np.repeat(gray[:, :, None], 3, axis=2))
    deep = (rgb.astype(np.uint16) * 257)[:, :, ::-1]  # 16-bit: 255 * 257 = 65535
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    np.testing.assert_array_equal(read_image(tmp_path / "d.png").rgb, rgb)
    rgba = np.dstack([bgr, np.full((30, 40), 255, np.uint8)])
    rgba[:10, :, 3] = 0  # transparent top rows: composited over white
    cv2.imwrite(str(tmp_path / "t.png"), rgba)
    img = read_image(tmp_path / "t.png").rgb
    assert (img[:10] == 255).all()
    np.testing.assert_array_equal(img[10:], rgb[10:])


def test_unreadable_files_raise_image_read_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="bad.jpg: cannot decode"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_sample_ids_hash_bytes_and_box() -> None:
    a = sample_id(b"image-bytes", [10, 20, 110, 140])
    assert len(a) == SAMPLE_ID_LENGTH and int(a, 16) >= 0
    assert sample_id(b"image-bytes", np.array([10.001, 20, 110, 140], np.float32)) == a  # below 0.01 px
    assert sample_id(b"image-bytes", [10.02, 20, 110, 140]) != a
    assert sample_id(b"other-bytes", [10, 20, 110, 140]) != a
    with pytest.raises(ValueError, match="4 finite numbers"):
        sample_id(b"x", [1, 2, 3])


# -- pools ----------------------------------------------------------------------------------------


def _pool_folder(root: Path) -> list[Path]:
    """3 synthetic faces (+ .pts sidecars), a grayscale 16-bit copy, a corrupt file, a text file, a hidden file."""
    faces = write_dataset(root / "faces", 3, DOMAINS["studio"], seed=1)
    img = cv2.imread(str(faces[0]), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257
    cv2.imwrite(str(root / "faces" / "deep_gray.png"), img)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    return faces


def test_pool_from_box_files(tmp_path: Path) -> None:
    faces = _pool_folder(tmp_path)
    lm = np.stack([lm for _, lm, _ in iter_faces(3, DOMAINS["studio"], seed=1)])
    boxes = landmark_boxes(lm)
    lines = ["image,x0,y0,x1,y1,score"]
    lines += [f"faces/{faces[0].name},{','.join(map(str, boxes[0]))},0.9"]
    lines += [f"faces/{faces[1].name},{','.join(map(str, boxes[1]))},"]
    lines += [f"faces/{faces[1].name},1,2,30,40,0.2"]  # a second face in the same image
    lines += [f"{(tmp_path / 'faces' / 'deep_gray.png').resolve()},{','.join(map(str, boxes[0]))},"]  # absolute path
    lines += ["faces/gone.jpg,1,2,3,4,", f"faces/{faces[2].name},1,2,abc,4,", f"faces/{faces[2].name},10,2,3,40,"]
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    cv2.imwrite(str(tmp_path / "faces" / "unlisted.png"), np.zeros((8, 8, 3), np.uint8))
    result = build_pool(tmp_path, boxes_file=tmp_path / "boxes.csv", dataset="pool-a")
    assert len(result.samples) == 4
    assert (result.samples["box_source"] == "given").all() and (result.samples["dataset"] == "pool-a").all()
    score = dict(
        zip(result.samples["image_uri"].map(lambda u: Path(u).name), result.samples["detector_score"], strict=False)
    )
    assert score[faces[0].name] == pytest.approx(0.9) and np.isnan(score["deep_gray.png"])
    assert result.samples["split"].isna().all() and len(result.labels) == 0
    gray = result.samples[result.samples["image_uri"].str.endswith("deep_gray.png")]
    assert (gray["width"].iloc[0], gray["height"].iloc[0]) == (256, 256)
    r = {
        Path(s).name + ":" + str(loc): reason
        for s, loc, reason in zip(
            result.rejects["source"], result.rejects["location"], result.rejects["reason"], strict=True
        )
    }
    assert "missing image" in r["boxes.csv:line 6"]
    assert "field x1" in r["boxes.csv:line 7"] and "'abc'" in r["boxes.csv:line 7"]
    assert "empty" in r["boxes.csv:line 8"]
    assert "no face box" in r["unlisted.png:file"]
    assert "cannot decode" in r["corrupt.jpg:file"]
    assert "not an image file" in r["notes.txt:file"]
    assert len(result.rejects) == 6 and (result.rejects["stage"] == "pool").all()
    pa.Table.from_pandas(result.samples.assign(split="pool"), schema=samples_schema(), preserve_index=False)
    pa.Table.from_pandas(result.rejects, schema=rejects_schema(), preserve_index=False)

    # JSON box file, same boxes: the same sample ids (content hashes), every time.
    items = [
        {"image": f"faces/{faces[0].name}", "box": boxes[0].tolist(), "score": 0.9},
        {"image": f"faces/{faces[1].name}", "box": boxes[1].tolist()},
        {"image": "faces/x.jpg", "box": [1, 2]},
    ]
    (tmp_path / "boxes.json").write_text(json.dumps(items))
    again = build_pool(tmp_path, boxes_file=tmp_path / "boxes.json")
    assert set(again.samples["sample_id"]) < set(result.samples["sample_id"])
    assert len(again.samples) == 2
    assert any("expected [x0, y0, x1, y1]" in x for x in again.rejects["reason"])
    assert list(build_pool(tmp_path, boxes_file=tmp_path / "boxes.json").samples["sample_id"]) == list(
        again.samples["sample_id"]
    )


def test_pool_duplicate_image_files_give_one_sample(tmp_path: Path) -> None:
    faces = write_dataset(tmp_path, 1, DOMAINS["studio"], seed=2)
    shutil.copyfile(faces[0], tmp_path / "copy.jpg")
    (tmp_path / "b.csv").write_text(f"image,x0,y0,x1,y1\n{faces[0].name},10,10,200,200\ncopy.jpg,10,10,200,200\n")
    result = build_pool(tmp_path, boxes_file=tmp_path / "b.csv")
    assert len(result.samples) == 1
    assert "duplicate sample" in result.rejects["reason"].iloc[0]


def test_pool_with_yuface_detects_synthetic_faces(tmp_path: Path) -> None:
    faces = write_dataset(tmp_path, 2, DOMAINS["studio"], seed=3)
    truth = landmark_boxes(np.stack([lm for _, lm, _ in iter_faces(2, DOMAINS["studio"], seed=3)]))
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((200, 300, 3), 128, np.uint8))
    # A large copy: detection runs on a <= 960 px version, the box must come back in full-size pixels.
    big = cv2.resize(cv2.imread(str(faces[0])), (1500, 1500), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    result = build_pool(tmp_path, detector="yuface")
    names = [Path(u).name for u in result.samples["image_uri"]]
    assert sorted(names) == sorted(["big.jpg", faces[0].name, faces[1].name])
    assert (result.samples["box_source"] == "detector:yuface").all()
    assert result.samples["detector_score"].between(0.5, 1.0).all()
    boxes = np.stack(result.samples["box"])
    for i, face in enumerate(faces):
        assert iou_matrix(boxes[names.index(face.name)], truth[i])[0, 0] > 0.3
    assert iou_matrix(boxes[names.index("big.jpg")], truth[0] * (1500 / 256))[0, 0] > 0.3
    assert list(result.rejects["reason"]) == ["no face found by yuface (min score 0.5)"]
    assert list(build_pool(tmp_path, detector="yuface").samples["sample_id"]) == list(result.samples["sample_id"])


def test_haar_fallback_runs_and_gives_sane_boxes(tmp_path: Path) -> None:
    write_dataset(tmp_path, 2, DOMAINS["studio"], seed=4)
    result = build_pool(tmp_path, detector="haar")
    images = {Path(u).name for u in result.samples["image_uri"]} | {Path(s).name for s in result.rejects["source"]}
    assert len(images) == 2  # every image gives samples or a reject
    for box, w, h in zip(result.samples["box"], result.samples["width"], result.samples["height"], strict=True):
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    assert result.samples["detector_score"].isna().all()
    assert (result.samples["box_source"] == "detector:haar").all()


def test_yuface_finds_a_real_face() -> None:
    from matplotlib import cbook

    path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # a portrait shipped with matplotlib
    faces = detect_faces(read_image(path).rgb)
    assert len(faces) == 1 and faces[0].score is not None and faces[0].score > 0.8
    assert faces[0].points is not None and faces[0].points.shape == (5, 2)


def test_pool_listing_and_argument_errors(tmp_path: Path) -> None:
    _pool_folder(tmp_path)
    names = {p.name for p in list_pool_files(tmp_path)}
    assert "notes.txt" in names and ".DS_Store" not in names and not any(n.endswith(".pts") for n in names)
    assert {p.name for p in list_pool_files(tmp_path, recursive=False)} == {"corrupt.jpg", "notes.txt"}
    with pytest.raises(ValueError, match="detector"):
        build_pool(tmp_path, detector=None)
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("retina")


def test_pool_shards_add_up_to_the_whole_pool(tmp_path: Path) -> None:
    faces = write_dataset(tmp_path, 4, DOMAINS["studio"], seed=5)
    rows = [f"{f.name},{10 + i},10,200,220,0.{i + 5}" for i, f in enumerate(faces)] + ["gone.jpg,1,1,9,9,"]
    (tmp_path / "b.csv").write_text("image,x0,y0,x1,y1,score\n" + "\n".join(rows) + "\n")
    whole = build_pool(tmp_path, boxes_file=tmp_path / "b.csv")
    files = list_pool_files(tmp_path)
    shards = [build_pool(tmp_path, boxes_file=tmp_path / "b.csv", files=files[k::2]) for k in range(2)]
    assert sorted(whole.samples["sample_id"]) == sorted(sum((list(s.samples["sample_id"]) for s in shards), []))
    # Each shard reports the box row whose image does not exist, not the images of the other shard.
    for shard in shards:
        assert list(shard.rejects["reason"].str.startswith("missing image")) == [True]
