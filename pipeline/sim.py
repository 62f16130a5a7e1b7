"""A simulated conveyor line: real part images composited onto a textured belt at random pose.

Used by the tests and to make the bundled demo sequence. Each frame comes with its truth: the
expected verdict and the ground-truth defect boxes in camera pixels.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.data import DataError, TestSample, mvtec_test_set, read_image, read_mask, training_images

BELT_BGR = (60, 110, 40)  # a green PVC belt
# Belts a random line draws from: green PVC, blue, black rubber, dark grey, light grey. A mono line
# draws only those whose brightness differs from the parts' (black, light grey): a mono camera tells
# part from belt by brightness and texture alone.
BELT_COLOURS = ((60, 110, 40), (140, 80, 30), (30, 30, 30), (70, 70, 70), (205, 205, 205))
MONO_BELTS = ((30, 30, 30), (205, 205, 205))
CAMERA_SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 960), (1280, 720))


@dataclass
class LineGeometry:
    """How a simulated line looks: camera resolution, part size and pose, belt, lighting, camera kind."""
    width: int = 640
    height: int = 480
    part_long_side: int = 300      # camera px (+-5 % part to part)
    max_angle: float = 12.0        # degrees either way
    perspective: float = 0.03      # corner jitter, as a fraction of the part's size
    belt_bgr: tuple[int, int, int] = BELT_BGR
    belt_weave: float = 6.0        # amplitude of the belt's woven stripes (grey levels)
    belt_noise: float = 4.0
    lighting_drift: float = 0.0    # brightness swings by up to this fraction over the sequence
    mono: bool = False             # a mono camera: frames are written as one-channel images
    sensor_noise: float = 0.0      # the sensor's noise (grey levels, sigma), per channel on a colour camera
    # light falling off towards the frame's corners (lens vignetting, a lamp over the middle of the
    # belt): the corners get this fraction less light than the centre, quadratically in the distance
    vignetting: float = 0.0
    light_slope: float = 0.0       # a lamp to one side: the light rises by this fraction of its mean, left to right

    @classmethod
    def random(cls, seed: int) -> "LineGeometry":
        """A line of random geometry, the same for the same seed."""
        rng = np.random.default_rng(10_000 + seed)
        w, h = CAMERA_SIZES[rng.integers(len(CAMERA_SIZES))]
        mono = bool(rng.random() < 0.5)
        belts = MONO_BELTS if mono else BELT_COLOURS
        g = cls(width=int(w), height=int(h), part_long_side=int(rng.uniform(0.5, 0.75) * min(w, h)),
                max_angle=float(rng.uniform(3, 15)), perspective=float(rng.uniform(0.0, 0.05)),
                belt_bgr=tuple(int(v) for v in belts[rng.integers(len(belts))]),
                belt_weave=float(rng.uniform(2, 10)), belt_noise=float(rng.uniform(2, 6)),
                lighting_drift=float(rng.uniform(0, 0.15)), mono=mono)
        # drawn last, so that a seed's other fields stay what they were before the sensor was modelled
        g.sensor_noise = float(rng.uniform(1.5, 3.0))
        return g


@dataclass
class SimFrame:
    frame: np.ndarray           # BGR uint8; (H, W) for a mono camera
    truth: dict                 # {"verdict", "defect_type", "boxes": [[x, y, w, h], ...], "source_image"}


def belt_image(h: int, w: int, rng: np.random.Generator, shift: int = 0, geometry: LineGeometry | None = None
               ) -> np.ndarray:
    g = geometry or LineGeometry()
    base = np.empty((h, w, 3), np.float32)
    base[:] = g.belt_bgr
    weave = g.belt_weave * np.sin((np.arange(w) + shift) * 0.9)[None, :, None]
    noise = rng.normal(0, g.belt_noise, (h, w, 1))
    return np.clip(base + weave + noise, 0, 255).astype(np.uint8)


def place_part(belt: np.ndarray, part_gray: np.ndarray, defect_mask: np.ndarray | None, rng: np.random.Generator,
               long_side: int = 300, max_angle: float = 12.0, perspective: float = 0.03
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp the part onto the belt at random position, rotation and slight perspective.
    Returns (frame BGR, defect mask in camera px, part corners TL, TR, BR, BL in camera px)."""
    h, w = part_gray.shape
    scale = long_side / max(h, w) * rng.uniform(0.95, 1.05)
    ph, pw = h * scale, w * scale
    fh, fw = belt.shape[:2]
    cx = rng.uniform(pw / 2 + 20, fw - pw / 2 - 20) if fw > pw + 40 else fw / 2
    cy = rng.uniform(ph / 2 + 20, fh - ph / 2 - 20) if fh > ph + 40 else fh / 2
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    local = np.array([[-pw / 2, -ph / 2], [pw / 2, -ph / 2], [pw / 2, ph / 2], [-pw / 2, ph / 2]])
    local = local * (1 + rng.uniform(-perspective, perspective, (4, 2)))
    dst = (local @ rot.T + [cx, cy]).astype(np.float32)
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    H = cv2.getPerspectiveTransform(src, dst)
    part_bgr = cv2.cvtColor(part_gray, cv2.COLOR_GRAY2BGR)
    warped = cv2.warpPerspective(part_bgr, H, (fw, fh), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (fw, fh), flags=cv2.INTER_LINEAR)[..., None] / 255.0
    frame = (belt * (1 - alpha) + warped * alpha).astype(np.uint8)
    cam_mask = np.zeros((fh, fw), np.uint8)
    if defect_mask is not None:
        cam_mask = cv2.warpPerspective(defect_mask.astype(np.uint8) * 255, H, (fw, fh), flags=cv2.INTER_NEAREST)
    return frame, cam_mask > 0, dst


def vignette(h: int, w: int, strength: float) -> np.ndarray:
    """(h, w) float32 light falloff: 1 at the centre, ``1 - strength`` at the corners, quadratic in
    the distance from the centre."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xs - (w - 1) / 2) ** 2 + (ys - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
    return (1.0 - strength * r2).astype(np.float32)


def mask_boxes(mask: np.ndarray, min_area: int = 4) -> list[list[int]]:
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [[int(v) for v in stats[i, :4]] for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]


def _is_portrait(path: Path) -> bool:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return img is not None and img.shape[0] >= img.shape[1]


def simulate(data: str | Path, n_ok: int, n_ng: int, n_empty: int, seed: int = 0, size: tuple[int, int] = (640, 480),
             ok_from: str = "test/good", geometry: LineGeometry | None = None) -> list[SimFrame]:
    """Frames of OK parts, defective parts (with truth), and empty belt, in shuffled order, on the
    line ``geometry`` (default: the demo line's, at ``size``)."""
    geometry = geometry or LineGeometry(width=size[0], height=size[1])
    size = (geometry.width, geometry.height)
    if ok_from not in ("test/good", "train/good"):
        raise ValueError(f"ok_from must be 'test/good' or 'train/good', got {ok_from!r}")
    rng = np.random.default_rng(seed)
    # One product per line: portrait parts only, so every part has the canonical orientation.
    samples = [s for s in mvtec_test_set(data) if _is_portrait(s.image_path)]
    bad = [s for s in samples if s.defect_type != "good"]
    if ok_from == "train/good":  # OK parts as the line sees them, for fitting (never for judging)
        good = [TestSample(p, "good", None) for p in training_images(data) if _is_portrait(p)]
    else:
        good = [s for s in samples if s.defect_type == "good"]
    if (n_ok and not good) or (n_ng and not bad):
        raise DataError(f"{data}: no portrait {'OK' if n_ok and not good else 'defective'} part images to place "
                        f"({ok_from if n_ok and not good else 'test/'}); a line shows one product in one orientation")
    w, h = size
    picks = ([("ok", good[i % len(good)]) for i in rng.permutation(max(n_ok, 1))[:n_ok]]
             + [("ng", bad[i % len(bad)]) for i in rng.permutation(max(n_ng, len(bad)))[:n_ng]]
             + [("empty", None)] * n_empty)
    order = rng.permutation(len(picks))
    frames = []
    g = geometry
    # its own generator: the parts, poses and order of a seed do not depend on the sensor
    sensor_rng = np.random.default_rng([seed, 1])
    light = None  # the light over the view: one map for the whole line
    if g.vignetting or g.light_slope:
        slope = 1 + g.light_slope * (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)
        light = (vignette(h, w, g.vignetting) * slope)[..., None]
    for i, k in enumerate(order):
        kind, sample = picks[k]
        belt = belt_image(h, w, rng, shift=int(rng.integers(0, 100)), geometry=g)
        if kind == "empty":
            frame, truth = belt, {"verdict": "NO_PART", "defect_type": None, "boxes": [], "source_image": None}
        else:
            part = read_image(sample.image_path, 1)
            gt = read_mask(sample.mask_path, part.shape) if sample.mask_path else None
            frame, cam_mask, corners = place_part(belt, part, gt, rng, g.part_long_side, g.max_angle, g.perspective)
            truth = {"verdict": "NG" if kind == "ng" else "OK", "defect_type": sample.defect_type,
                     "boxes": mask_boxes(cam_mask), "source_image": sample.image_path.name,
                     "corners": np.round(corners, 1).tolist()}
        if g.lighting_drift:  # a slow swing of the light over the sequence
            gain = 1.0 + g.lighting_drift * np.sin(2 * np.pi * i / max(1, len(order)))
            frame = np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        if light is not None:
            frame = np.clip(frame.astype(np.float32) * light, 0, 255).astype(np.uint8)
        if g.mono:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if g.sensor_noise:  # on the part as on the belt; a colour sensor's parts its channels even on grey
            noise = sensor_rng.normal(0, g.sensor_noise, frame.shape).astype(np.float32)
            frame = np.clip(np.rint(frame + noise), 0, 255).astype(np.uint8)
        frames.append(SimFrame(frame, truth))
    return frames


def write_geometry(geometry: LineGeometry, out: str | Path) -> None:
    """``line.json`` beside a sequence: the geometry it was drawn on."""
    (Path(out) / "line.json").write_text(json.dumps(asdict(geometry), indent=1))


def write_sequence(frames: list[SimFrame], out: str | Path, fps: float = 10.0, corrupt_every: int = 0,
                   ext: str = ".png") -> Path:
    """A recorded sequence (see pipeline.sequence) plus ``truth.jsonl``; every ``corrupt_every``-th
    frame file is replaced by garbage bytes to exercise ERROR records."""
    from pipeline.sequence import SequenceWriter

    out = Path(out)
    writer = SequenceWriter(out, ext)
    truth = []
    period_ns = int(1e9 / fps)
    for i, f in enumerate(frames):
        name = writer.add(f.frame, capture_ns=i * period_ns)
        t = dict(f.truth)
        if corrupt_every and i % corrupt_every == corrupt_every - 1:
            (out / name).write_bytes(b"\x89PNG\r\n corrupted on purpose")
            t = {**t, "verdict": "ERROR", "boxes": []}
        truth.append({"file": name, **t})
    writer.close()
    (out / "truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth))
    return out


def sequence_parts(seq: str | Path) -> Iterator[tuple[dict, np.ndarray | None]]:
    """The OK and NG parts of a sequence written by :func:`write_sequence`: each one's truth record
    and its frame as the camera gave it (BGR; None when the file cannot be read), in file order.
    Empty-belt and corrupt frames are left out. For studies that score parts as the line does."""
    seq = Path(seq)
    for line in (seq / "truth.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t["verdict"] in ("OK", "NG"):
            yield t, cv2.imread(str(seq / t["file"]), cv2.IMREAD_COLOR)
