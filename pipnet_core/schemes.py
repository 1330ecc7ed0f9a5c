"""Landmark schemes: the layout of the N landmarks a store, a model and a review project share.

A scheme is plain data (numpy at most, never torch) so that ``annotations/`` can import it without
pulling the model in. Built-in layouts follow the official PIPNet repository (jhb86253817/PIPNet,
snapshot b9eab58), summarised in ``docs/algorithm.md``:

* flip tables (section 2.9): ``flip[i]`` is the landmark that lands at slot ``i`` after mirroring;
* NME normalisation (section 2.12): the outer eye corners for 300W (36, 45), WFLW (60, 72) and COFW
  (8, 9); the face box for AFLW;
* official mean faces (section 2.5), shipped in ``pipnet_core/data`` as normalised crop coordinates;
* anatomical landmark names ("chin", "nose tip", "left eye outer corner"), which reviewers see in
  Label Studio. Left and right are as each dataset defines them (docs/review.md section 12):
  300W and WFLW follow the iBUG markup and name sides from the person (the person's right eye,
  indices 36-41 of 300W, appears on the image's left in a frontal face); COFW (LFPW's 29 points) and
  AFLW name them from the viewer (COFW's "left eye outer corner" is the outer corner of the eye on
  the image's left). In every built-in layout the lower index of a mirrored pair lies on the
  image's left. ``names[flip[i]]`` is ``names[i]`` with left and right swapped.

Stores, checkpoints and review projects made before the names existed recorded ``lm_00``... for the
built-ins; :func:`scheme_from_dict` reads such a description as the built-in with its names, and
:func:`legacy_landmark_names` gives the old labels so Label Studio projects that use them keep working.

Custom schemes are read from a small JSON or YAML file, see :func:`load_scheme`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BUILTIN_SCHEMES",
    "REGION_ORDER",
    "Scheme",
    "SchemeError",
    "get_scheme",
    "legacy_landmark_names",
    "load_scheme",
    "scheme_from_dict",
]

_DATA = Path(__file__).parent / "data"

# Regions used for per-region metrics and Label Studio colours, in a fixed order.
REGION_ORDER = ("jaw", "brows", "nose", "eyes", "mouth", "other")


class SchemeError(ValueError):
    """A scheme definition is invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class Scheme:
    """A landmark layout.

    Attributes:
        name: Short identifier, e.g. ``"300w"``.
        num_landmarks: N.
        landmark_names: N names, unique.
        flip: Mirror permutation of length N (an involution), or None for asymmetric layouts (then
            training does no flip augmentation).
        norm: Two landmark indices whose distance normalises NME, or ``"box"`` for face-box
            normalisation (NME divided by 1 in the normalised crop, the AFLW-Full protocol).
        regions: Region name -> landmark indices. Every landmark belongs to exactly one region.
        meanface: Optional (N, 2) mean shape in normalised crop coordinates (official for built-ins).
    """

    name: str
    num_landmarks: int
    landmark_names: tuple[str, ...]
    flip: tuple[int, ...] | None
    norm: tuple[int, int] | str
    regions: dict[str, tuple[int, ...]] = field(hash=False, compare=True)
    meanface: tuple[float, ...] | None = field(default=None, hash=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def meanface_array(self) -> np.ndarray | None:
        """The mean face as a (N, 2) float64 array, or None."""
        if self.meanface is None:
            return None
        return np.asarray(self.meanface, dtype=np.float64).reshape(self.num_landmarks, 2)

    def region_of(self) -> list[str]:
        """Region name of every landmark, length N."""
        out = ["other"] * self.num_landmarks
        for region, idx in self.regions.items():
            for i in idx:
                out[i] = region
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description that :func:`scheme_from_dict` reads back."""
        return {
            "name": self.name,
            "num_landmarks": self.num_landmarks,
            "landmark_names": list(self.landmark_names),
            "flip": None if self.flip is None else list(self.flip),
            "norm": self.norm if isinstance(self.norm, str) else list(self.norm),
            "regions": {k: list(v) for k, v in self.regions.items()},
            "meanface": None if self.meanface is None else list(self.meanface),
        }


def _validate(s: Scheme) -> None:
    n = s.num_landmarks
    where = f"scheme {s.name!r}"
    if not isinstance(n, int) or n < 2:
        raise SchemeError(f"{where}: num_landmarks must be an integer >= 2, got {n!r}")
    if len(s.landmark_names) != n:
        raise SchemeError(
            f"{where}: landmark_names has {len(s.landmark_names)} names but num_landmarks is {n};"
            " give one name per landmark"
        )
    if len(set(s.landmark_names)) != n:
        dup = sorted({x for x in s.landmark_names if s.landmark_names.count(x) > 1})
        raise SchemeError(f"{where}: landmark_names must be unique, repeated: {dup}")
    if s.flip is not None:
        if len(s.flip) != n or sorted(s.flip) != list(range(n)):
            raise SchemeError(
                f"{where}: flip must be a permutation of 0..{n - 1} (length {n}); got length {len(s.flip)}"
            )
        bad = [i for i in range(n) if s.flip[s.flip[i]] != i]
        if bad:
            i = bad[0]
            raise SchemeError(
                f"{where}: flip is not an involution: flip[{i}] = {s.flip[i]}"
                f" but flip[{s.flip[i]}] = {s.flip[s.flip[i]]};"
                " mirroring twice must return every landmark to its slot (or set flip to null to disable flipping)"
            )
    if isinstance(s.norm, str):
        if s.norm != "box":
            raise SchemeError(f"{where}: norm must be two landmark indices or 'box', got {s.norm!r}")
    else:
        if len(s.norm) != 2 or any((not isinstance(i, int)) or i < 0 or i >= n for i in s.norm):
            raise SchemeError(
                f"{where}: norm indices {list(s.norm)} out of range 0..{n - 1}; give two landmark indices"
            )
        if s.norm[0] == s.norm[1]:
            raise SchemeError(f"{where}: norm indices must differ, got {list(s.norm)}")
    seen: dict[int, str] = {}
    for region, idx in s.regions.items():
        for i in idx:
            if not 0 <= i < n:
                raise SchemeError(f"{where}: region {region!r} lists landmark {i}, outside 0..{n - 1}")
            if i in seen:
                raise SchemeError(f"{where}: landmark {i} is in both regions {seen[i]!r} and {region!r}")
            seen[i] = region
    if s.meanface is not None and len(s.meanface) != 2 * n:
        raise SchemeError(
            f"{where}: meanface has {len(s.meanface)} values, expected {2 * n} (x0 y0 ... x{n - 1} y{n - 1})"
        )


def _read_meanface(name: str) -> tuple[float, ...]:
    return tuple(float(v) for v in (_DATA / f"meanface_{name}.txt").read_text().split())


def _ranges(**spans: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(range(a, b)) for k, (a, b) in spans.items()}


def _names(prefix: str, n: int) -> tuple[str, ...]:
    width = len(str(n - 1))
    return tuple(f"{prefix}{i:0{width}d}" for i in range(n))


def legacy_landmark_names(num_landmarks: int) -> tuple[str, ...]:
    """The names every built-in used before anatomical names: ``lm_00`` ... (two digits for 68 landmarks)."""
    return _names("lm_", num_landmarks)


def _jaw(per_side: int) -> tuple[str, ...]:
    """A jaw line from the image's left end over the chin to the right end: right jaw 1..k, chin, left jaw k..1."""
    right = tuple(f"right jaw {k}" for k in range(1, per_side + 1))
    left = tuple(f"left jaw {k}" for k in range(per_side, 0, -1))
    return (*right, "chin", *left)


# The mouth of the iBUG markup (300W 48-67, WFLW 76-95): outer lip from the right corner over the upper
# lip to the left corner and back along the lower lip, then the inner lip the same way.
_MOUTH_IBUG = (
    "right mouth corner", "upper lip right outer", "upper lip right peak", "upper lip top", "upper lip left peak",
    "upper lip left outer", "left mouth corner", "lower lip left outer", "lower lip left", "lower lip bottom",
    "lower lip right", "lower lip right outer",
    "right inner mouth corner", "upper lip inner right", "upper lip inner middle", "upper lip inner left",
    "left inner mouth corner", "lower lip inner left", "lower lip inner middle", "lower lip inner right",
)  # fmt: skip
_NOSE_BASE = ("right nostril outer", "right nostril", "nose base", "left nostril", "left nostril outer")

_NAMES_300W = (
    *_jaw(8),
    "right brow outer end", "right brow 2", "right brow middle", "right brow 4", "right brow inner end",
    "left brow inner end", "left brow 4", "left brow middle", "left brow 2", "left brow outer end",
    "nose bridge top", "nose bridge 2", "nose bridge 3", "nose tip", *_NOSE_BASE,
    "right eye outer corner", "right eye upper lid outer", "right eye upper lid inner", "right eye inner corner",
    "right eye lower lid inner", "right eye lower lid outer",
    "left eye inner corner", "left eye upper lid inner", "left eye upper lid outer", "left eye outer corner",
    "left eye lower lid outer", "left eye lower lid inner",
    *_MOUTH_IBUG,
)  # fmt: skip

_NAMES_WFLW = (
    *_jaw(16),
    "right brow outer corner", "right brow upper 1", "right brow upper 2", "right brow upper 3",
    "right brow inner corner", "right brow lower 4", "right brow lower 3", "right brow lower 2", "right brow lower 1",
    "left brow inner corner", "left brow upper 3", "left brow upper 2", "left brow upper 1", "left brow outer corner",
    "left brow lower 1", "left brow lower 2", "left brow lower 3", "left brow lower 4",
    "nose bridge top", "nose bridge 2", "nose bridge 3", "nose tip", *_NOSE_BASE,
    "right eye outer corner", "right eye upper lid outer", "right eye upper lid middle", "right eye upper lid inner",
    "right eye inner corner", "right eye lower lid inner", "right eye lower lid middle", "right eye lower lid outer",
    "left eye inner corner", "left eye upper lid inner", "left eye upper lid middle", "left eye upper lid outer",
    "left eye outer corner", "left eye lower lid outer", "left eye lower lid middle", "left eye lower lid inner",
    *_MOUTH_IBUG,
    "right pupil", "left pupil",
)  # fmt: skip

# LFPW's 29 points as COFW orders them (Burgos-Artizzu et al., ICCV 2013), left/right from the viewer.
_NAMES_COFW = (
    "left brow outer end", "right brow outer end", "left brow inner end", "right brow inner end",
    "left brow top", "left brow bottom", "right brow top", "right brow bottom",
    "left eye outer corner", "right eye outer corner", "left eye inner corner", "right eye inner corner",
    "left eye top", "left eye bottom", "right eye top", "right eye bottom", "left pupil", "right pupil",
    "left nostril", "right nostril", "nose tip", "nose base",
    "left mouth corner", "right mouth corner", "upper lip top", "upper lip bottom", "lower lip top",
    "lower lip bottom", "chin",
)  # fmt: skip

# AFLW's own point names (Koestinger et al., 2011) without the two ears of AFLW-21, left/right from the viewer.
_NAMES_AFLW = (
    "left brow left corner", "left brow center", "left brow right corner",
    "right brow left corner", "right brow center", "right brow right corner",
    "left eye left corner", "left eye center", "left eye right corner",
    "right eye left corner", "right eye center", "right eye right corner",
    "nose left", "nose center", "nose right", "mouth left corner", "mouth center", "mouth right corner",
    "chin center",
)  # fmt: skip


def _build_300w() -> Scheme:
    flip = (16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
            27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
            54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65)  # fmt: skip
    return Scheme(
        name="300w",
        num_landmarks=68,
        landmark_names=_NAMES_300W,
        flip=flip,
        norm=(36, 45),
        regions=_ranges(jaw=(0, 17), brows=(17, 27), nose=(27, 36), eyes=(36, 48), mouth=(48, 68)),
        meanface=_read_meanface("300w"),
    )


def _build_wflw() -> Scheme:
    flip = tuple(range(32, -1, -1)) + (
        46, 45, 44, 43, 42, 50, 49, 48, 47, 37, 36, 35, 34, 33, 41, 40, 39, 38, 51, 52, 53, 54, 59, 58, 57, 56, 55,
        72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65, 82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84,
        83, 92, 91, 90, 89, 88, 95, 94, 93, 97, 96)  # fmt: skip
    regions = _ranges(jaw=(0, 33), brows=(33, 51), nose=(51, 60), eyes=(60, 76), mouth=(76, 96))
    regions["eyes"] = regions["eyes"] + (96, 97)  # pupils
    return Scheme(
        name="wflw",
        num_landmarks=98,
        landmark_names=_NAMES_WFLW,
        flip=flip,
        norm=(60, 72),
        regions=regions,
        meanface=_read_meanface("wflw"),
    )


def _build_cofw() -> Scheme:
    flip = (1, 0, 3, 2, 6, 7, 4, 5, 9, 8, 11, 10, 14, 15, 12, 13, 17, 16, 19, 18, 20, 21, 23, 22, 24, 25, 26, 27, 28)
    return Scheme(
        name="cofw",
        num_landmarks=29,
        landmark_names=_NAMES_COFW,
        flip=flip,
        norm=(8, 9),
        regions=_ranges(brows=(0, 8), eyes=(8, 18), nose=(18, 22), mouth=(22, 28), jaw=(28, 29)),
        meanface=_read_meanface("cofw"),
    )


def _build_aflw() -> Scheme:
    flip = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 14, 13, 12, 17, 16, 15, 18)
    return Scheme(
        name="aflw",
        num_landmarks=19,
        landmark_names=_NAMES_AFLW,
        flip=flip,
        norm="box",
        regions=_ranges(brows=(0, 6), eyes=(6, 12), nose=(12, 15), mouth=(15, 18), jaw=(18, 19)),
        meanface=_read_meanface("aflw"),
    )


_BUILDERS = {"300w": _build_300w, "wflw": _build_wflw, "cofw": _build_cofw, "aflw": _build_aflw}
BUILTIN_SCHEMES: tuple[str, ...] = tuple(_BUILDERS)
_CACHE: dict[str, Scheme] = {}


def get_scheme(name: str) -> Scheme:
    """A built-in scheme by name (case-insensitive), or a custom one from a ``.json``/``.yaml`` path.

    Raises:
        SchemeError: unknown name; the message lists the built-ins.
    """
    key = name.lower()
    if key in _BUILDERS:
        if key not in _CACHE:
            _CACHE[key] = _BUILDERS[key]()
        return _CACHE[key]
    if Path(name).suffix.lower() in (".json", ".yaml", ".yml") and Path(name).exists():
        return load_scheme(name)
    raise SchemeError(
        f"unknown scheme {name!r}: use one of {', '.join(BUILTIN_SCHEMES)} or the path of a scheme .json/.yaml file"
    )


def scheme_from_dict(d: dict[str, Any], source: str = "<dict>") -> Scheme:
    """Build a scheme from a mapping (the format of :func:`load_scheme`).

    Required keys: ``name``, ``num_landmarks``. Optional: ``landmark_names`` (default ``lm_00``...),
    ``flip`` (list or null), ``norm`` (two indices or ``"box"``, default ``"box"``), ``regions``
    (default: all ``other``), ``meanface`` (N x 2 nested list or flat 2N list).
    """
    try:
        n = d["num_landmarks"]
        name = str(d["name"])
    except KeyError as e:
        raise SchemeError(f"{source}: missing required key {e.args[0]!r} (need 'name' and 'num_landmarks')") from None
    if not isinstance(n, int):
        raise SchemeError(f"{source}: num_landmarks must be an integer, got {n!r}")
    names = tuple(str(x) for x in d.get("landmark_names") or _names("lm_", n))
    builtin = _BUILDERS.get(name.lower())
    if builtin is not None and names == legacy_landmark_names(n):
        # a built-in described before it had anatomical names (a store or checkpoint of an older pipstc)
        known = get_scheme(name)
        if known.num_landmarks == n:
            names = known.landmark_names
    flip = d.get("flip")
    norm = d.get("norm", "box")
    regions = {str(k): tuple(int(i) for i in v) for k, v in (d.get("regions") or {"other": list(range(n))}).items()}
    meanface = d.get("meanface")
    if meanface is not None:
        meanface = tuple(float(v) for v in np.asarray(meanface, dtype=np.float64).ravel())
    try:
        return Scheme(
            name=name,
            num_landmarks=n,
            landmark_names=names,
            flip=None if flip is None else tuple(int(i) for i in flip),
            norm=norm if isinstance(norm, str) else tuple(int(i) for i in norm),
            regions=regions,
            meanface=meanface,
        )
    except SchemeError as e:
        raise SchemeError(f"{source}: {e}") from None


def load_scheme(path: str | Path) -> Scheme:
    """Read a custom scheme from a JSON or YAML file (keys as in :func:`scheme_from_dict`)."""
    p = Path(path)
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # the `yaml` extra: only YAML schemes need it
        except ImportError:
            raise SchemeError(
                f"{p}: YAML schemes need PyYAML, which is not installed — pip install 'pipstc[yaml]', "
                "or write the scheme as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SchemeError(f"{p}: not valid YAML ({' '.join(str(e).split())}) — fix the file") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SchemeError(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise SchemeError(f"{p}: expected a mapping with 'name' and 'num_landmarks' at the top level")
    return scheme_from_dict(data, source=str(p))
