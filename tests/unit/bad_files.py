"""Writers of good and bad input files for the bad-input and fuzz tests.

Good faces come from the synthetic generator at 96 px (a 300W-style folder: ``<name>.jpg`` with its
``.pts``); bad files are the ones a data team's folders really hold: truncated downloads, zero-byte
files, text saved as ``.jpg``, 1-pixel images and headers that claim a gigapixel image.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from annotations.formats.pts import write_pts_file
from synthetic_faces import DOMAINS, write_dataset

SMALL = dataclasses.replace(DOMAINS["studio"], image_size=96)

# .pts texts that cannot be read, each with what is wrong with it
MALFORMED_PTS = {
    "no_brace": "version: 1\nn_points: 68\n1 2\n}\n",
    "unclosed": "version: 1\nn_points: 68\n{\n1 2\n3 4\n",
    "bad_count": "version: 1\nn_points: sixty\n{\n1 2\n}\n",
    "three_values": "version: 1\nn_points: 1\n{\n1 2 3\n}\n",
    "not_a_number": "version: 1\nn_points: 1\n{\nx 2\n}\n",
    "wrong_n": "version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n",
    "empty": "",
    "binary": "\x00\x01\x02\xff\xfe{\n\x00 \x00\n}",
    "declared_mismatch": "version: 1\nn_points: 68\n{\n1 2\n}\n",
}


def good_faces(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` labeled synthetic faces (96 px JPEG + .pts) in ``folder``; returns the image paths."""
    return write_dataset(folder, n, SMALL, seed=seed)


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def bad_images(folder: Path) -> list[Path]:
    """Files an image folder should not hold: truncated, zero-byte, text, 1-pixel, gigapixel header."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 3])
    zero = folder / "zero.png"
    zero.write_bytes(b"")
    text = folder / "notes.jpg"
    text.write_text("this is not an image\n")
    one = folder / "one_pixel.png"
    cv2.imwrite(str(one), np.zeros((1, 1, 3), np.uint8))
    huge = png_header(folder / "huge.png", 40000, 40000)
    return [truncated, zero, text, one, huge]


def write_pts_beside(image: Path, landmarks: np.ndarray, stem: str | None = None) -> Path:
    """A .pts file for ``image`` (named after it, or ``<stem>.pts``) holding (N, 2) ``landmarks``."""
    return write_pts_file(image.with_name(f"{stem or image.stem}.pts"), landmarks)
