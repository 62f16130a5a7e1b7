"""Fashion-MNIST as a second product: one clothing class is the OK part, the other nine classes are
what a defective part would be, with image-level labels only (no masks).

The data set (Xiao, Rasul, Vollgraf 2017, MIT licence) is Debian's ``dataset-fashion-mnist``
package, installed by ``apt-get install dataset-fashion-mnist`` into :data:`DEFAULT_ROOT`; nothing is
downloaded. Its 28x28 images are enlarged to one 128x128 tile, the size the detector works on.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.data import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_SIZE = 128


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed) as a uint8 array: images ``(N, 28, 28)`` or labels ``(N,)``."""
    if not path.is_file():
        raise DataError(f"{path}: not found; install the data set with `apt-get install dataset-fashion-mnist` "
                        "or point --fashion-mnist at a folder holding the four *-ubyte.gz files")
    raw = gzip.decompress(path.read_bytes())
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: {body.size} bytes of data for a header that says {dims}; the file is truncated")
    return body.reshape(dims)


def load(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of ``part`` (``train`` or ``test``)."""
    images, labels = (read_idx(root / name) for name in FILES[part])
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} {part} images but {len(labels)} labels")
    return images, labels


@dataclass(frozen=True)
class ProductSpec:
    ok_class: str = "sneaker"
    n_train: int = 300  # OK images to train on: a few hundred, as a new product would have
    n_test_ok: int = 200
    n_test_ng: int = 198  # spread evenly over the nine other classes (22 each)
    seed: int = 0


def class_index(name: str) -> int:
    if name not in CLASSES:
        raise ValueError(f"OK class {name!r} is not a Fashion-MNIST class; valid: {', '.join(CLASSES)}")
    return CLASSES.index(name)


def enlarge(img28: np.ndarray) -> np.ndarray:
    return cv2.resize(img28, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)


def write_product(root: Path, out: Path, spec: ProductSpec) -> dict:
    """Write an MVTec-style folder: ``train/good`` (OK class, from the training images),
    ``test/good`` (OK class, from the test images) and ``test/<class>`` for each other class (NG,
    no masks). The same ``spec`` always picks the same images. Returns the counts written."""
    ok = class_index(spec.ok_class)
    rng = np.random.default_rng(spec.seed)
    train_x, train_y = load(root, "train")
    test_x, test_y = load(root, "test")
    others = [c for c in range(len(CLASSES)) if c != ok]
    per_other = spec.n_test_ng // len(others)
    picks = {("train", "good"): rng.permutation(np.flatnonzero(train_y == ok))[:spec.n_train],
             ("test", "good"): rng.permutation(np.flatnonzero(test_y == ok))[:spec.n_test_ok]}
    for c in others:
        picks[("test", CLASSES[c])] = rng.permutation(np.flatnonzero(test_y == c))[:per_other]
    counts = {}
    for (part, folder), idx in picks.items():
        images = train_x if part == "train" else test_x
        target = out / part / folder
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob("*.png"):
            stale.unlink()
        for i in idx:
            cv2.imwrite(str(target / f"{part}_{int(i):05d}.png"), enlarge(images[i]))
        counts[f"{part}/{folder}"] = int(len(idx))
    if counts["train/good"] < spec.n_train or counts["test/good"] < spec.n_test_ok:
        raise DataError(f"{root}: not enough {spec.ok_class} images for {spec}")
    return counts
