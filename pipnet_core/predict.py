"""Batched prediction on images and face boxes: landmarks in image pixels with their confidences.

The pool-labeling path of docs/speed.md section 3: images are read and cropped by a small thread pool
(OpenCV releases the GIL while decoding and warping) a batch or two ahead of the model, so reading
overlaps inference; on a CPU the model runs through ONNX Runtime by default (~90% of the measured FMA
peak on these CPUs against ~50% for torch eager fp32, docs/speed.md section 3), on a GPU through
torch CUDA with large batches (pinned host buffers, asynchronous copies); the decode
(official merge, docs/algorithm.md section 2.11) and the confidence signals are vectorised NumPy
(:mod:`pipnet_core.decode`, :mod:`pipnet_core.confidence`).

A face whose image cannot be read, or whose box is unusable, is listed in ``Prediction.failed`` with
the reason; its rows are NaN and every other face is still predicted.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipnet_core.confidence import ConfidenceModel, signals, unmirror
from pipnet_core.crop import crop_image, from_crop
from pipnet_core.decode import Decoded, decode
from pipnet_core.images import ImageReadError, read_image
from pipnet_core.meanface import NeighbourTable
from pipnet_core.model import IMAGENET_MEAN, IMAGENET_STD, PIPNet, PIPOutputs, normalise_batch
from pipnet_core.schemes import Scheme
from pipnet_core.train import load_checkpoint

__all__ = ["BACKENDS", "CPU_BATCH", "GPU_BATCH", "Prediction", "Predictor", "resolve_backend"]

BACKENDS = ("auto", "onnx", "torch")
GPU_BATCH = 256  # faces per model call on a GPU: ResNet-18 at 256 px needs hundreds to fill one
CPU_BATCH = 32  # on a CPU larger batches gain nothing (docs/speed.md section 3)
_PREFETCH_BATCHES = 2  # read this many batches ahead of the model: enough to hide decoding, bounded memory
_MEAN_255 = np.array(IMAGENET_MEAN, dtype=np.float32) * 255
_INV_STD_255 = 1.0 / (np.array(IMAGENET_STD, dtype=np.float32) * 255)


@dataclass
class Prediction:
    """Predictions for B faces, in input order.

    Attributes:
        landmarks: (B, N, 2) image pixels (NaN for failed faces).
        landmarks_norm: (B, N, 2) the same in normalised crop coordinates (the NME protocol's space).
        landmark_confidence: (B, N) in [0, 1].
        face_confidence: (B,) in [0, 1].
        predicted_nme: (B,) the confidence model's expected NME of each face.
        signals: Signal name -> (B, N) (see :func:`pipnet_core.confidence.signals`).
        failed: ``(index, reason)`` of each face that could not be predicted.
    """

    landmarks: np.ndarray
    landmarks_norm: np.ndarray
    landmark_confidence: np.ndarray
    face_confidence: np.ndarray
    predicted_nme: np.ndarray
    signals: dict[str, np.ndarray]
    failed: list[tuple[int, str]] = field(default_factory=list)


def _default_confidence(scheme: Scheme, meanface: np.ndarray) -> ConfidenceModel:
    if scheme.norm == "box":
        return ConfidenceModel.default(norm_distance=1.0)
    a, b = scheme.norm
    return ConfidenceModel.default(norm_distance=float(np.linalg.norm(meanface[a] - meanface[b])))


def resolve_backend(backend: str, device: str = "auto") -> tuple[str, torch.device]:
    """The backend and device a :class:`Predictor` runs on.

    ``"auto"``: torch on CUDA when a GPU is present (and ``device`` allows it), else ONNX Runtime on
    the CPU. ``"torch"`` runs on ``device`` (``"auto"``: CUDA when present). ``"onnx"`` is CPU only.

    Raises:
        ValueError: an unknown backend, or ``device="cuda"`` without a usable GPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                         "use device='auto' or 'cpu'")  # fmt: skip
    gpu = torch.cuda.is_available() and device != "cpu"
    if backend == "auto":
        backend = "torch" if gpu else "onnx"
    if backend == "onnx":
        return backend, torch.device("cpu")
    return backend, torch.device(device if device not in ("auto", "cuda") else ("cuda" if gpu else "cpu"))


class Predictor:
    """A trained PIPNet ready to label faces.

    Args:
        model: The PIPNet.
        table: Its neighbour table.
        scheme: Its landmark scheme.
        confidence: Confidence model; None gives :meth:`ConfidenceModel.default` for the scheme.
        backend: ``"onnx"`` (ONNX Runtime, exported in memory), ``"torch"``, or ``"auto"`` (torch on
            a GPU when present, else ONNX Runtime; :func:`resolve_backend`).
        num_threads: Threads of the ONNX Runtime session; for ``"torch"``, if given, it sets
            ``torch.set_num_threads`` (process-wide). None leaves the runtime's default.
        num_workers: Threads reading and cropping images; None: 2 on a CPU (the model needs the
            cores), up to 16 on a GPU (reading is then the slower side).
        meanface: (N, 2) mean face for the default confidence model; None: the scheme's.
        device: Where the torch backend runs: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.
        onnx_model: For ``"onnx"``: the exported model (a ``.onnx`` path or its bytes) to load instead of
            exporting ``model`` here; it must be the export of ``model``.

    Attributes:
        batch_size: Faces per model call that suit the device (:data:`GPU_BATCH` or :data:`CPU_BATCH`).
    """

    def __init__(
        self,
        model: PIPNet,
        table: NeighbourTable,
        scheme: Scheme,
        confidence: ConfidenceModel | None = None,
        backend: str = "onnx",
        num_threads: int | None = None,
        num_workers: int | None = None,
        meanface: np.ndarray | None = None,
        device: str = "auto",
        onnx_model: str | Path | bytes | None = None,
    ) -> None:
        backend, self.device = resolve_backend(backend, device)
        if table.num_landmarks != model.num_landmarks or table.num_nb != model.num_nb:
            raise ValueError("the neighbour table does not match the model's heads")
        self.model = model.eval()
        self.table = table
        self.scheme = scheme
        mf = meanface if meanface is not None else scheme.meanface_array
        self.confidence = confidence or _default_confidence(scheme, mf if mf is not None else np.zeros((1, 2)))
        self.backend = backend
        self.input_size = model.input_size
        cuda = self.device.type == "cuda"
        if num_workers is None:
            num_workers = min(16, os.cpu_count() or 1) if cuda else 2
        self.num_workers = max(1, int(num_workers))
        self.batch_size = GPU_BATCH if cuda else CPU_BATCH
        self._session = None
        if backend == "onnx":
            import onnxruntime as ort

            from pipnet_core.export import onnx_bytes

            opts = ort.SessionOptions()
            if num_threads is not None:
                opts.intra_op_num_threads = int(num_threads)
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
                # the same "do not spin" request as for torch's OpenMP: spinning threads collapse
                # throughput when another process shares the cores (docs/speed.md section 5)
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            graph = onnx_bytes(model) if onnx_model is None else onnx_model
            graph = str(graph) if isinstance(graph, Path) else graph
            self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        else:
            if num_threads is not None:
                torch.set_num_threads(int(num_threads))
            self.model = self.model.to(self.device, memory_format=torch.channels_last)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        backend: str = "onnx",
        num_threads: int | None = None,
        confidence: ConfidenceModel | None = None,
        num_workers: int | None = None,
        device: str = "auto",
        onnx_model: str | Path | bytes | None = None,
    ) -> Predictor:
        """Build from a training checkpoint; its attached confidence model is used unless one is given.

        ``onnx_model``: the checkpoint's ONNX export to load (backend ``"onnx"``) instead of exporting it.
        """
        model, meta = load_checkpoint(path)
        if confidence is None and meta.confidence is not None:
            confidence = ConfidenceModel.from_dict(meta.confidence)
        return cls(
            model,
            meta.table,
            meta.scheme,
            confidence=confidence,
            backend=backend,
            num_threads=num_threads,
            num_workers=num_workers,
            meanface=meta.meanface,
            device=device,
            onnx_model=onnx_model,
        )

    # -- model ----------------------------------------------------------------------------------

    def run_model(self, crops: np.ndarray) -> PIPOutputs:
        """Raw outputs (as float32 numpy arrays) for (B, S, S, 3) uint8 RGB crops."""
        return self.run_normalised(normalise_batch(crops).numpy())

    def run_normalised(self, x: np.ndarray) -> PIPOutputs:
        """Raw outputs for normalised (B, 3, S, S) float32 input."""
        if self._session is not None:
            return PIPOutputs(*self._session.run(None, {"image": x}))
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)  # the copy overlaps the queue of kernels
        with torch.inference_mode():
            out = self.model(t.contiguous(memory_format=torch.channels_last))
        return PIPOutputs(*(o.float().cpu().numpy() for o in out))

    def predict_crops(
        self, crops: np.ndarray, flip_tta: bool = False, average_flip: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Landmarks (B, N, 2, normalised crop coordinates) and signals for ready crops (B, S, S, 3).

        With ``flip_tta`` the mirrored crops are predicted too and ``flip_disagreement`` joins the
        signals; the landmarks are the mean of both views (un-mirrored with the scheme's flip table),
        or with ``average_flip=False`` the plain prediction (STLD's pseudo-label).
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"crops must have shape (B, {self.input_size}, {self.input_size}, 3), got {crops.shape}")
        return self._predict_normalised(normalise_batch(crops).numpy(), flip_tta, average_flip)

    def _predict_normalised(
        self, x: np.ndarray, flip_tta: bool, average_flip: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        decoded = self._decode(self.run_normalised(x))
        if not flip_tta:
            return decoded.landmarks, signals(decoded)
        if self.scheme.flip is None:
            raise ValueError(f"scheme {self.scheme.name!r} has no flip table; flip_tta needs one")
        mirrored = self._decode(self.run_normalised(np.ascontiguousarray(x[..., ::-1])))
        landmarks = decoded.landmarks
        if average_flip:
            landmarks = 0.5 * (landmarks + unmirror(mirrored.landmarks, self.scheme.flip))
        return landmarks, signals(decoded, mirrored, self.scheme.flip)

    def _decode(self, out: PIPOutputs) -> Decoded:
        return decode(out.cls, out.x, out.y, out.nb_x, out.nb_y, self.table, out.cls2, out.cls3)

    # -- images ---------------------------------------------------------------------------------

    def _load(self, image: str | Path | np.ndarray, box: np.ndarray) -> np.ndarray | str:
        """One normalised (3, S, S) float32 crop, or the reason it cannot be made.

        Normalising here, in the reader threads, keeps that work off the model's thread.
        """
        try:
            pixels = read_image(image).rgb if isinstance(image, str | Path) else np.asarray(image)
            crop = crop_image(pixels, box, self.input_size)
        except (ImageReadError, ValueError) as exc:
            return str(exc)
        return np.ascontiguousarray(((crop.astype(np.float32) - _MEAN_255) * _INV_STD_255).transpose(2, 0, 1))

    def _batches(
        self, images: Sequence[str | Path | np.ndarray], boxes: np.ndarray, batch_size: int
    ) -> Iterator[tuple[list[int], list[np.ndarray | str]]]:
        """Batches of loaded crops, read by the thread pool ahead of the consumer."""
        starts = range(0, len(images), batch_size)
        with ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="pipstc-read") as pool:
            queue: deque[tuple[list[int], list[Future]]] = deque()
            for start in starts:
                idx = list(range(start, min(start + batch_size, len(images))))
                queue.append((idx, [pool.submit(self._load, images[i], boxes[i]) for i in idx]))
                if len(queue) > _PREFETCH_BATCHES:
                    done_idx, futures = queue.popleft()
                    yield done_idx, [f.result() for f in futures]
            while queue:
                done_idx, futures = queue.popleft()
                yield done_idx, [f.result() for f in futures]

    def predict(
        self,
        images: Sequence[str | Path | np.ndarray],
        crop_boxes: np.ndarray,
        batch_size: int | None = None,
        flip_tta: bool = False,
        average_flip: bool = True,
    ) -> Prediction:
        """Predict the landmarks of B faces.

        Args:
            images: B image paths, or (H, W, 3) uint8 RGB arrays (grayscale also accepted); an image
                may repeat for several faces.
            crop_boxes: (B, 4) crop boxes ``(x0, y0, x1, y1)`` in image pixels, in the model's crop
                convention (see :func:`pipnet_core.crop.enlarge_box`).
            batch_size: Faces per model call; None: :attr:`batch_size` (256 on a GPU, 32 on a CPU).
            flip_tta: Also predict the mirrored crops (twice the compute): averaged landmarks and the
                ``flip_disagreement`` signal.
            average_flip: With ``flip_tta``, average the two views (default); False keeps the plain
                prediction as the landmarks and uses the mirror for the confidence only.

        Returns:
            :class:`Prediction`; failed faces are NaN and listed in ``failed``.
        """
        boxes = np.asarray(crop_boxes, dtype=np.float64)
        b, n = len(images), self.model.num_landmarks
        if boxes.shape != (b, 4):
            raise ValueError(f"crop_boxes must have shape ({b}, 4) for {b} images, got {boxes.shape}")
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        norm = np.full((b, n, 2), np.nan)
        sig: dict[str, np.ndarray] = {}
        lm_conf = np.full((b, n), np.nan)
        face_conf = np.full(b, np.nan)
        pred_nme = np.full(b, np.nan)
        failed: list[tuple[int, str]] = []
        for idx, loaded in self._batches(images, boxes, batch_size):
            ok = [i for i, item in zip(idx, loaded, strict=True) if not isinstance(item, str)]
            failed += [(i, item) for i, item in zip(idx, loaded, strict=True) if isinstance(item, str)]
            if not ok:
                continue
            x = np.stack([item for item in loaded if not isinstance(item, str)])
            landmarks, batch_sig = self._predict_normalised(x, flip_tta, average_flip)
            norm[ok] = landmarks
            for name, values in batch_sig.items():
                sig.setdefault(name, np.full((b, n), np.nan))[ok] = values
            lm_conf[ok] = self.confidence.landmark_confidence(batch_sig)
            face_conf[ok] = self.confidence.face_confidence(batch_sig)
            pred_nme[ok] = self.confidence.predict_face_nme(batch_sig)
        return Prediction(
            landmarks=from_crop(norm, boxes) if b else np.zeros((0, n, 2)),
            landmarks_norm=norm,
            landmark_confidence=lm_conf,
            face_confidence=face_conf,
            predicted_nme=pred_nme,
            signals=sig,
            failed=failed,
        )
