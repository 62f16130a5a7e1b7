"""INT8 calibration data: normalised tiles from a folder of OK images, or of a line's recorded
frames, as the model sees them, for the ONNX Runtime quantiser (:func:`quantize_model`) and
TensorRT's calibrator (``engines.int8_calibrator``). Pure numpy: tested without a GPU.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engines.artifact import ModelMeta
from engines.data import DataError, list_images, read_image
from pipeline.vision.tiling import tiles_at_scale


def _image_tiles(img: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """An image's tiles as the detector sees them: full scale, and half scale where the model has
    a coarse pass (its activations reach other ranges: wider structures, smoother texture)."""
    tiles = [tiles_at_scale(img, meta.tile_size, 0.25)]
    if meta.coarse_scale > 0:
        tiles.append(tiles_at_scale(img, meta.tile_size, 0.25, meta.coarse_scale))
    return np.concatenate(tiles)


def _line_tiles(frame: np.ndarray, prep) -> np.ndarray:
    """A recorded frame's tiles as a line inspects them (rectified, masked, fine and coarse)."""
    p = prep(frame)
    return p.tiles if p.verdict is None else np.zeros((0,), np.uint8)


# Share of calibration images that get one synthesised defect (the training generators) before
# tiling. Ranges set on OK tiles alone clip the activations a defect raises: on the shipped model,
# the uneven-band image's INT8 map then differed from fp32 by up to 0.80 inside the band.
DEFECT_SHARE = 0.5


def _with_defect(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from engines.synth import synthesize

    out, _mask, _name = synthesize(img, rng)
    return np.clip(out, 0, 255).astype(np.uint8).reshape(img.shape)


def calibration_tiles(folder: str | Path, meta: ModelMeta, max_tiles: int = 512, seed: int = 0,
                      line: str | Path | None = None, defect_share: float = DEFECT_SHARE) -> np.ndarray:
    """Up to ``max_tiles`` normalised ``(N, C, T, T)`` float32 tiles from the OK images in ``folder``
    (or its ``train/good``), sampled evenly across images: the tiles the model sees at inference,
    at full scale and, for a model with a coarse pass, at half scale. With ``line`` (a line
    config), the folder holds recorded frames of that line, and the tiles are its rectified views'.
    ``defect_share`` of the images (chosen by ``seed``) carry a synthesised defect first, so the
    ranges cover what a defect does to the activations, not only what OK texture does."""
    folder = Path(folder)
    if (folder / "train" / "good").is_dir():
        folder = folder / "train" / "good"
    files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: no images for INT8 calibration; pass a folder of OK images")
    prep = None
    if line is not None:
        from pipeline.config import load_config
        from pipeline.processing import Preprocessor

        prep = Preprocessor.for_model(load_config(line).preprocess, meta)
    tiles = []
    rng = np.random.default_rng(seed)
    for f in files:
        defect = rng.random() < defect_share
        if prep is not None:
            frame = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            if frame is not None and defect:
                frame = _with_defect(frame, rng)
            found = _line_tiles(frame, prep) if frame is not None else np.zeros((0,), np.uint8)
            if len(found):
                tiles.append(found.reshape(-1, meta.in_channels, meta.tile_size, meta.tile_size))
        else:
            img = read_image(f, meta.in_channels)
            if defect:
                img = _with_defect(img, rng)
            tiles.append(_image_tiles(img, meta).reshape(-1, meta.in_channels, meta.tile_size, meta.tile_size))
    if not tiles:
        raise DataError(f"{folder}: no frame showed a part {line} could locate; pass recorded OK frames of that line")
    all_tiles = np.concatenate(tiles)
    if len(all_tiles) > max_tiles:
        all_tiles = all_tiles[np.sort(rng.choice(len(all_tiles), max_tiles, replace=False))]
    return meta.normalise(all_tiles)


def quantize_model(model: str | Path, calib: str | Path, out: str | Path, max_tiles: int = 256, batch: int = 16,
                   method: str = "minmax", target: str = "onnxruntime", line: str | Path | None = None,
                   input_block_float: bool = True) -> Path:
    """``engines.quantize.quantize_model`` calibrated on up to ``max_tiles`` tiles of the OK images
    in ``calib`` (with ``line``, recorded frames of that line, as it rectifies them:
    :func:`calibration_tiles`)."""
    from engines.quantize import quantizable, quantize_model as quantize_tiles

    meta = quantizable(model, method, target)
    tiles = calibration_tiles(calib, meta, max_tiles, line=line)
    return quantize_tiles(model, tiles, out, batch, method, target, input_block_float,
                          {"calibration_line": str(line)} if line else None)
