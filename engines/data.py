"""Reading images and data sets, with errors that name the file and what is wrong."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """Bad input data: the message names the file and the fix."""


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Read an image as uint8 ``(H, W)`` for 1 channel or ``(H, W, 3)`` (RGB) for 3 channels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); re-copy or remove it")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"{path}: not a readable image (corrupt or unsupported format; expected {IMAGE_SUFFIXES})")
    return to_channels(raw, channels, str(path))


def to_channels(raw: np.ndarray, channels: int, where: str = "image") -> np.ndarray:
    """Convert a decoded image (gray, BGR, BGRA, 16-bit) to uint8 with the wanted channel count."""
    if raw.size == 0 or raw.ndim not in (2, 3):
        raise DataError(f"{where}: image has shape {raw.shape}; expected (H, W) or (H, W, C)")
    if raw.dtype == np.uint16:
        raw = (raw / 257).astype(np.uint8)
    elif raw.dtype != np.uint8:
        raise DataError(f"{where}: pixel type {raw.dtype} is not supported; expected 8- or 16-bit")
    if raw.ndim == 3 and raw.shape[2] not in (1, 3, 4):
        raise DataError(f"{where}: {raw.shape[2]} channels; expected 1, 3 or 4")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    if channels == 1:
        if raw.ndim == 3:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGRA2GRAY if raw.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        return raw
    if channels == 3:
        if raw.ndim == 2:
            return cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB if raw.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    raise DataError(f"{where}: channels must be 1 or 3, got {channels}")


def read_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask as bool and check it matches its image's ``(H, W)``."""
    mask = read_image(path, 1)
    if mask.shape != tuple(shape):
        raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{shape[1]}x{shape[0]}; masks must have the image's size")
    return mask > 127


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def training_images(data: str | Path) -> list[Path]:
    """OK images for training: ``DIR/train/good`` of an MVTec-style folder, else ``DIR`` itself."""
    data = Path(data)
    folder = data / "train" / "good" if (data / "train" / "good").is_dir() else data
    files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}); "
                        "point --data at a folder of OK images or an MVTec-style folder with train/good")
    return files


def files_hash(files: list[Path]) -> str:
    """sha256 over names and bytes of the training files, recorded in model metadata."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TestSample:
    image_path: Path
    defect_type: str  # "good" or the defect folder name
    mask_path: Path | None

    @property
    def side(self) -> str:
        """``val`` or ``test``: its side of the fixed split (:func:`split_of`)."""
        return split_of(self.defect_type, self.image_path.name)


# The development test images are split once, by a hash of each image's defect type and file
# name, into ``val`` (every choice: generators, weights, thresholds, memory sizes) and ``test``
# (reported once per shipped model, never used to choose). Fixed: the same image always falls on
# the same side, on any machine, whatever else the folder holds.
SPLITS = ("all", "val", "test")


def split_of(defect_type: str, name: str) -> str:
    """``val`` or ``test``: the side of the fixed split an image falls on (about half each)."""
    digest = hashlib.sha256(f"{defect_type}/{name}".encode()).digest()
    return "val" if digest[0] % 2 == 0 else "test"


def mvtec_test_set(data: str | Path, require_masks: bool = True, split: str = "all") -> list[TestSample]:
    """``test/good`` and ``test/<type>`` with ``ground_truth/<type>/<name>_mask.png``. Without
    ``require_masks``, a defective image without its mask is kept with ``mask_path`` None (a user
    with OK/NG folders only: image-level labels)."""
    data = Path(data)
    test = data / "test"
    if not test.is_dir():
        raise DataError(f"{data}: no test/ folder; expected an MVTec-AD style folder "
                        "(test/good, test/<type>, ground_truth/<type>/<name>_mask.png)")
    samples: list[TestSample] = []
    for type_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        for img in list_images(type_dir):
            if type_dir.name == "good":
                samples.append(TestSample(img, "good", None))
                continue
            mask = data / "ground_truth" / type_dir.name / f"{img.stem}_mask.png"
            if not mask.is_file():
                if require_masks:
                    raise DataError(f"{img}: no ground-truth mask at {mask}")
                mask = None
            samples.append(TestSample(img, type_dir.name, mask))
    if not samples:
        raise DataError(f"{test}: no test images found")
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}; valid: {list(SPLITS)}")
    if split != "all":
        samples = [s for s in samples if s.side == split]
        if not samples:
            raise DataError(f"{test}: no images on the {split} side of the split")
    return samples
