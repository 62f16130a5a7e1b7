"""Cutting an image into overlapping square tiles and stitching tile maps back seamlessly."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WINDOW_FLOOR = 1e-3  # keeps image borders (covered by one tile edge only) well defined


@dataclass(frozen=True)
class TileGrid:
    """Top-left corners of ``tile`` x ``tile`` tiles covering an ``height`` x ``width`` image."""

    height: int
    width: int
    tile: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "tile": self.tile, "ys": list(self.ys), "xs": list(self.xs)}

    @classmethod
    def from_dict(cls, d: dict) -> "TileGrid":
        return cls(int(d["height"]), int(d["width"]), int(d["tile"]), tuple(map(int, d["ys"])), tuple(map(int, d["xs"])))


def _positions(length: int, tile: int, stride: int) -> tuple[int, ...]:
    if length <= tile:
        return (0,)
    n = int(np.ceil((length - tile) / stride)) + 1
    return tuple(int(round(p)) for p in np.linspace(0, length - tile, n))


def tile_grid(height: int, width: int, tile: int = 128, overlap: float = 0.25) -> TileGrid:
    """Evenly spread tiles; the last tile ends exactly at the border. Images smaller than a tile
    get one tile and are padded by :func:`extract_tiles`."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(1, int(round(tile * (1.0 - overlap))))
    return TileGrid(height, width, tile, _positions(height, tile, stride), _positions(width, tile, stride))


def extract_tiles(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` image -> ``(N, C, tile, tile)`` tiles (same dtype), reflect-padded
    when the image is smaller than a tile."""
    img = image[..., None] if image.ndim == 2 else image
    h, w = img.shape[:2]
    if (h, w) != (grid.height, grid.width):
        raise ValueError(f"image is {w}x{h} but the tile grid was made for {grid.width}x{grid.height}")
    t = grid.tile
    if h < t or w < t:
        mode = "reflect" if h > 1 and w > 1 else "edge"
        img = np.pad(img, ((0, max(0, t - h)), (0, max(0, t - w)), (0, 0)), mode=mode)
    # A strided view then one gather: no per-tile Python copies.
    windows = np.lib.stride_tricks.sliding_window_view(img, (t, t), axis=(0, 1))  # (H', W', C, t, t)
    ys = np.array(grid.ys)[:, None]
    xs = np.array(grid.xs)[None, :]
    tiles = windows[ys, xs]  # (ny, nx, C, t, t)
    return np.ascontiguousarray(tiles.reshape(-1, *tiles.shape[2:]))


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(height, width)`` of an image of that size after :func:`downscale` by ``scale``."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def downscale(image: np.ndarray, scale: float) -> np.ndarray:
    """The image at ``scale`` (< 1) of its size, area-averaged: what the coarse pass of a model with
    a coarse tile memory tiles, so that one tile sees 1/scale times more of the part."""
    h, w = scaled_shape(image.shape[0], image.shape[1], scale)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def scaled_tiles(image: np.ndarray, tile: int, overlap: float, scale: float = 1.0) -> tuple[np.ndarray, "TileGrid"]:
    """All tiles of ``image`` at ``scale`` of its size (:func:`downscale` below 1), tiled as
    :func:`tile_grid` does: ``(N, C, tile, tile)``, and that grid (of the scaled image)."""
    img = image if scale == 1.0 else downscale(image, scale)
    grid = tile_grid(img.shape[0], img.shape[1], tile, overlap)
    return extract_tiles(img, grid), grid


def tiles_at_scale(image: np.ndarray, tile: int, overlap: float, scale: float = 1.0) -> np.ndarray:
    """:func:`scaled_tiles` without the grid."""
    return scaled_tiles(image, tile, overlap, scale)[0]


def blend_window(tile: int) -> np.ndarray:
    """Smooth 2D weighting window (separable Hann with a floor): overlapping tiles fade into each
    other, so stitched maps show no seams where plain averaging would."""
    ramp = np.hanning(tile + 2)[1:-1]
    return np.maximum(np.outer(ramp, ramp), WINDOW_FLOOR).astype(np.float32)


def stitch(tile_maps: np.ndarray, grid: TileGrid) -> np.ndarray:
    """``(N, 1, t, t)`` or ``(N, t, t)`` tile maps -> ``(H, W)`` map, weighted by :func:`blend_window`."""
    maps = tile_maps.reshape(len(grid), grid.tile, grid.tile).astype(np.float32)
    t = grid.tile
    ph, pw = max(grid.height, t), max(grid.width, t)
    acc = np.zeros((ph, pw), np.float32)
    weight = np.zeros((ph, pw), np.float32)
    window = blend_window(t)
    for (y, x), m in zip(grid.origins, maps):
        acc[y:y + t, x:x + t] += m * window
        weight[y:y + t, x:x + t] += window
    return (acc / np.maximum(weight, 1e-12))[: grid.height, : grid.width]
