"""Tile memories fitted for a line: on a line's recorded OK frames as its preprocessing sees
them, on part images as that line rectifies them, and per tile position of its grid. The model
folder is written by ``engines.export``; what is line-specific (a line config, its preprocessing,
its frames) is read here, so the engines never depend on the line."""
from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch.nn as nn

from engines.artifact import ModelMeta
from engines.data import files_hash, read_image, training_images
from engines.export import export_model as export_folder
from engines.tile_memory import (COARSE_MAX_TILES, COARSE_SCALE, POSITION_MEMORY_ROWS, LineFrameEmbeddings,
                                 TileMemory, attach_memories, fit_memory, fit_position_memory, frame_tile_embeddings)
from pipeline.config import load_config
from pipeline.processing import Preprocessor
from pipeline.sources import decode_frame
from pipeline.vision.rectify import canonical_view


def canonical_size(line_config: str | Path) -> tuple[int, int]:
    """``preprocess.canonical_size`` of a line config, as ``(width, height)``."""
    w, h = load_config(line_config).preprocess.canonical_size
    return int(w), int(h)


def line_preprocessor(line_config: str | Path, meta: ModelMeta) -> Preprocessor:
    """The line's preprocessing with a coarse pass at the memories' scale."""
    return Preprocessor.for_model(load_config(line_config).preprocess, replace(meta, coarse_scale=COARSE_SCALE))


def line_frame_tiles(frames: Sequence[Path], prep: Preprocessor
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, int] | None]:
    """Each camera frame of an OK part as the line preprocesses it: ``(tiles, tile_index, len(grid))``,
    or None where no part is found. An unreadable frame is an error naming the fix."""
    for path in frames:
        frame, reason = decode_frame(Path(path))
        if frame is None:
            raise ValueError(f"{path}: {reason}; --memory-line and --memory-frames take camera frames of OK parts "
                             "on the line")
        prepared = prep(frame)
        yield (prepared.tiles, prepared.tile_index, len(prepared.grid)) if prepared.verdict is None else None


def line_frame_embeddings(model: nn.Module, frames: Sequence[Path], line_config: str | Path, meta: ModelMeta,
                          progress: bool = True) -> LineFrameEmbeddings:
    """Put each camera frame of an OK part through the line's preprocessing (part location,
    rectification, tiling at both scales) and embed the tiles the line will send
    (:func:`engines.tile_memory.frame_tile_embeddings`)."""
    prep = line_preprocessor(line_config, meta)
    return frame_tile_embeddings(model, line_frame_tiles(frames, prep), meta, str(line_config), len(frames), progress)


def memory_from_line_frames(model: nn.Module, frames: Sequence[Path], line_config: str | Path, meta: ModelMeta,
                            progress: bool = True) -> tuple[TileMemory, TileMemory, int]:
    """Fit the fine and the coarse memory on camera frames of OK parts alone, as a line sees them.
    Returns the fine memory, the coarse memory and the number of frames used."""
    emb = line_frame_embeddings(model, frames, line_config, meta, progress)
    return fit_memory(*emb.fine), fit_memory(*emb.coarse, COARSE_MAX_TILES), emb.frames


def frame_parts(frames: Sequence[Path]) -> list[str]:
    """Which part each camera frame shows: the ``source_image`` that a simulated sequence's
    ``truth.jsonl`` names beside it (frames of one part are one part to the calibration), else the
    frame's own name."""
    names: dict[str, str] = {}
    for truth in {Path(f).parent / "truth.jsonl" for f in frames}:
        if truth.is_file():
            for line in truth.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    names[str(truth.parent / row["file"])] = str(row.get("source_image") or row["file"])
    return [names.get(str(Path(f)), Path(f).name) for f in frames]


def check_memory_options(memory_data, memory_line, memory_canonical, memory_frames, memory_positions,
                         memory_position_rows) -> None:
    """The combinations of memory options that make sense, each refusal naming the fix."""
    if memory_line is not None and memory_data is None:
        raise ValueError("--memory-line needs --memory-data: a folder of camera frames of OK parts on that line")
    if memory_canonical is not None and (memory_data is None or memory_line is not None):
        raise ValueError("--memory-canonical needs --memory-data (OK part images such as train/good) and "
                         "cannot be combined with --memory-line (camera frames already have the line's geometry)")
    if memory_position_rows is not None and (not memory_positions or memory_position_rows < 1):
        raise ValueError(f"--memory-position-rows {memory_position_rows}: give a whole number of at least 1, "
                         "with --memory-positions")
    if memory_positions and (memory_canonical is None or memory_frames is None):
        raise ValueError("--memory-positions fits a memory per tile position of one line: give --memory-data OK_IMAGES "
                         "--memory-canonical LINE.yaml --memory-frames OK_FRAMES with it")
    if memory_frames is not None and memory_canonical is None:
        raise ValueError("--memory-frames adds OK line frames to the fit on part images: give --memory-data "
                         "OK_IMAGES --memory-canonical LINE.yaml with it (for frames alone: --memory-data FRAMES "
                         "--memory-line LINE.yaml)")


def fit_memories(model: nn.Module, cfg: dict, memory_data: str | Path, memory_line: str | Path | None = None,
                 memory_canonical: str | Path | None = None, memory_frames: str | Path | None = None,
                 memory_positions: bool = False, memory_position_rows: int | None = None,
                 progress: bool = True, whiten_shrink: float | None = None) -> tuple[dict, dict]:
    """Fit ``model``'s tile memories (see :func:`export_model`) and return what the sidecar records
    of them (``extra`` entries) and the line's grids for a per-position memory (or ``{}``).
    ``whiten_shrink``: the whitening's eigenvalue shrink, for studies (None:
    ``engines.tile_memory.whiten_shrink_for`` chooses)."""
    model.position_memory = None  # fitted on the memories it replaces, if the source had one
    if cfg["arch"] != "tiny_unet":
        raise ValueError(f"--memory-data: only a tiny_unet has a tile memory, this model is {cfg['arch']}")
    files = training_images(memory_data)
    meta = ModelMeta(arch=cfg["arch"], width=cfg["width"], in_channels=cfg["channels"])
    extra: dict = {}
    line_grids: dict = {}
    if memory_line is not None:
        model.memory, model.coarse_memory, used = memory_from_line_frames(model, files, memory_line, meta,
                                                                          progress=progress)
        extra.update(memory_line=str(memory_line), memory_frames=used)
    else:
        images = [read_image(f, cfg["channels"]) for f in files]
        part_images = images
        part_ids, pooled, frame_files = None, None, []
        if memory_canonical is not None:
            wh = canonical_size(memory_canonical)
            # Both views of one image are one part: calibration measures each against other parts.
            part_ids = list(range(len(images))) * 2
            images = images + [canonical_view(img, wh) for img in images]
            extra.update(memory_canonical=str(memory_canonical), memory_canonical_size=list(wh))
        if memory_frames is not None:
            frame_files = training_images(memory_frames)
            pooled = line_frame_embeddings(model, frame_files, memory_canonical, meta, progress=progress)
            extra.update(memory_line_frames=str(memory_frames), memory_line_frames_used=pooled.frames,
                         memory_line_frames_hash=files_hash(frame_files))
        fitted: dict | None = {} if memory_positions else None
        attach_memories(model, images, meta, progress=progress, part_ids=part_ids, pooled=pooled, fitted=fitted,
                        whiten_shrink=whiten_shrink)
        if memory_positions:
            prep = line_preprocessor(memory_canonical, meta)
            model.position_memory, line_grids = fit_position_memory(
                model, fitted, part_images, [f.name for f in files], frame_parts(frame_files), pooled, prep.grid,
                prep.coarse_grid, meta, rows=memory_position_rows)
            extra["memory_positions_rows"] = memory_position_rows or POSITION_MEMORY_ROWS
            extra["memory_positions_extra_rows"] = int(model.position_memory.fine_extra.shape[0]
                                                       + model.position_memory.coarse_extra.shape[0])
    extra.update(memory_data=str(memory_data), memory_data_hash=files_hash(files))
    return extra, line_grids


def export_model(source, out, opset: int = 17, thresholds: tuple[float, float] | None = None,
                 memory_data: str | Path | None = None, memory_line: str | Path | None = None, progress: bool = True,
                 memory_canonical: str | Path | None = None, coarse_map: str | Path | None = None,
                 coarse_map_weight: float | None = None, memory_frames: str | Path | None = None,
                 memory_positions: bool = False, memory_position_rows: int | None = None) -> Path:
    """:func:`engines.export.export_model` with tile memories fitted first (``memory_data``: OK
    images, or an MVTec-style folder's ``train/good``), for checkpoints trained without them or to
    refit them. With ``memory_line`` (a line config), the images are camera frames of OK parts and
    go through that line's preprocessing first, so the memory holds tiles as the line sees them.
    With ``memory_canonical`` (a line config) the images are part images like the training ones,
    and the memories are fitted on each image as it is *and* as that line will rectify it
    (``canonical_view``): the line's geometry without recorded frames, while images at their own
    size (``evaluate``) keep their match. ``memory_frames`` (with ``memory_canonical``): camera frames
    of OK parts on that line, whose tiles, as the line preprocesses them, are pooled with the
    images'. ``memory_positions`` (with ``memory_canonical`` and ``memory_frames``): also a memory
    per position of that line's tile grids (``engines.tile_memory.PositionMemory``)."""
    check_memory_options(memory_data, memory_line, memory_canonical, memory_frames, memory_positions,
                         memory_position_rows)
    memories = None
    if memory_data is not None:
        memories = partial(fit_memories, memory_data=memory_data, memory_line=memory_line,
                           memory_canonical=memory_canonical, memory_frames=memory_frames,
                           memory_positions=memory_positions, memory_position_rows=memory_position_rows,
                           progress=progress)
    kwargs = {} if coarse_map_weight is None else {"coarse_map_weight": coarse_map_weight}
    return export_folder(source, out, opset, thresholds, progress=progress, coarse_map=coarse_map,
                         memories=memories, **kwargs)
