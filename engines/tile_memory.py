"""Tile memory: how unlike every OK training tile a tile is, in the Tiny-UNet's own bottleneck space.

The segmentation head learns what synthetic defects look like; real defects that no generator
imitates well (faint cracks, large uneven regions) barely move it. The bottleneck embedding of
the same network still changes on them. The memory stores the embeddings of the training tiles
(square-rooted, z-normalised and whitened, thinned by greedy k-centre selection when there are too
many) and scores a tile by the distance to its nearest neighbour, calibrated so that the training
tiles' own leave-one-image-out distances sit mostly below 0.5.

The square root tames the few channels whose pooled activations are large and spread out; the
whitening (PCA of the OK embeddings, eigenvalues shrunk towards their mean) lets a change along a
direction in which OK tiles hardly vary count as much as one along which they vary a lot, i.e. a
nearest-neighbour Mahalanobis distance. On the magnetic-tile test split the two together lifted
image AUROC (both scales) from 0.875 to 0.930 and from 0.885 to 0.928 for the two trained weights
tried (docs/studies/tile_memory_variants.py).

A second, coarse memory holds the same embedding of tiles cut from the image at half its size, so
a tile sees four times the area: long faint cracks and large uneven regions that fill a whole
fine tile look ordinary at fine scale but not at coarse scale. The image's tile score is the mean
of the strongest fine and the strongest coarse tile score; before whitening this lifted image
AUROC from 0.865 to 0.877 and from 0.861 to 0.886 (evaluate, same two weights).

Everything is in the graph (Relu, Sqrt, MatMul, ReduceMin, Sigmoid), so ONNX Runtime, torch and
TensorRT serve it with no extra code, and no pretrained weights are used.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engines.artifact import MEMORY_NAMES, ModelMeta  # noqa: F401  (MEMORY_NAMES re-exported)
from pipeline.vision.tiling import tiles_at_scale

MEMORY_OVERLAP = 0.25     # the tiling overlap of inference, so the memory sees the same tile positions
MEMORY_MAX_TILES = 4096   # bank rows kept: on magnetic tile, 4096 of 8955 ranked images as well as all
COARSE_SCALE = 0.5         # image scale of the coarse pass
COARSE_MAX_TILES = 2048    # 2512 coarse training tiles on magnetic tile; 2048 ranked as well as all
# A memory refitted on line frames needs many of them: on the simulated line (README), 100 frames
# ranked parts worse at 5 % false alarms than the memories fitted on the training images (NG recall
# 0.70 against 0.73), 200 about as well (0.72), 465 better (0.85). Fewer frames than this get a
# warning from export_model.
LINE_MEMORY_MIN_FRAMES = 200
CALIBRATION_QUANTILE = 0.99
WHITEN_SHRINK = 0.1        # eigenvalues -> 0.9 x eigenvalue + 0.1 x their mean (0.01..0.2 scored alike)
# Share of each tile's novelty added to the stitched defect map, outside the graph (ModelMeta's
# fine_map_share). Small, so that the map still outlines the defect; enough that pixels of a novel
# tile rank above look-alike pixels of a familiar one. On the magnetic-tile test split a full-scale
# share of 0.02 alone lifted pixel AUROC from 0.60 to 0.74 (0.1: 0.745; docs/studies/
# map_fusion_variants.py). Used by models with one memory; until the seventeenth session models with
# two added 0.01 of each scale's spread (fine_map_share and coarse_map_share).
FINE_MAP_SHARE = 0.01
# With a coarse memory, a newly exported model adds instead this share of the lower of the two
# spread maps (ModelMeta.both_scales_map_share): a pixel gains it only where the part is novel at
# both scales. The fine tiles place it (the coarse spread alone lifts the whole of a defective
# image), the coarse tiles confirm it (a lone odd fine tile on good surface stays low). Against
# 0.01 of each spread: on the shipped weights pixel AUROC / AUPRO 0.921 / 0.808 -> 0.926 / 0.824; on
# three other weight and memory sets +0.004..0.007 / +0.017..0.024; on both halves of the split each
# time; 0.02..0.04 scored alike (docs/studies/both_scales_share.py).
BOTH_SCALES_MAP_SHARE = 0.03
# ... and its image score takes this share from the strongest place novel at both scales (the peak
# of that lower spread; ModelMeta.both_scales_score_weight), the rest from the tile scores. A small
# defect lifts a full-scale tile and the half-scale tile over it; a good part's odd tiles at the two
# scales rarely lie in one place. On the shipped folder: development split image AUROC 0.976 ->
# 0.980, NG recall at <= 5 % false alarms 0.862 -> 0.878; on the simulated line 0.875 -> 0.912 over
# the eight sequences it was chosen on and 0.846 -> 0.888 over four made after the choice; on three
# other folders image AUROC +0.003..0.007 (README, "Both scales must agree").
BOTH_SCALES_SCORE_WEIGHT = 0.5
# Spread as the minimum over the tiles covering a pixel, not their weighted mean: on the shipped
# weights pixel AUROC 0.817 -> 0.830, AUPRO 0.757 -> 0.780, the same on both halves of the split and
# on other weight sets (docs/studies/novelty_min_pool.py).
NOVELTY_SPREAD = "min"
# ... and the fine part of its image score is the mean of the two strongest full-scale tile scores
# (ModelMeta.fine_top_k): a defect shows in every overlapping tile that holds it, a good part's odd
# tile is often alone. On the shipped folder NG recall at <= 5 % false alarms on the simulated line
# 0.84 -> 0.88 over six sequences, higher for each of the five memory sets tried; the development
# split within 0.001 (README, "How the parts were chosen"). One memory keeps the strongest tile.
FINE_TOP_K = 2
# In-graph share (TileMemory.blend): models exported before fine_map_share existed blended 0.01 of the fine
# novelty into each tile's map; export now sets it to 0 and the share above is added outside.
GRAPH_MAP_SHARE = 0.0


def novelty_rule(has_memory: bool, has_coarse: bool) -> dict:
    """A newly exported model's novelty fields of ModelMeta (``NOVELTY_RULE_FIELDS``): what of the
    tile novelty its map adds, how it is spread, and what of the two scales' agreement and of the
    full-scale tile scores its image score reads."""
    if has_coarse:
        return dict(fine_map_share=0.0, coarse_map_share=0.0, both_scales_map_share=BOTH_SCALES_MAP_SHARE,
                    both_scales_score_weight=BOTH_SCALES_SCORE_WEIGHT, novelty_spread=NOVELTY_SPREAD,
                    fine_top_k=FINE_TOP_K)
    return dict(fine_map_share=FINE_MAP_SHARE if has_memory else 0.0, coarse_map_share=0.0, both_scales_map_share=0.0,
                both_scales_score_weight=0.0, novelty_spread=NOVELTY_SPREAD if has_memory else "mean", fine_top_k=1)


NOVELTY_RULE_FIELDS = tuple(novelty_rule(True, True))


class TileMemory(nn.Module):
    """``forward(embedding (N, D)) -> novelty (N,)`` in (0, 1); :meth:`blend` mixes it into the map."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("whiten", torch.eye(dim))
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("bank_sq", torch.zeros(size))
        self.register_buffer("center", torch.tensor(1.0))  # distance that maps to 0.5
        self.register_buffer("scale", torch.tensor(1.0))   # distance per unit of logit
        self.register_buffer("map_share", torch.tensor(GRAPH_MAP_SHARE))

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        """Pooled embedding ``(N, D)`` -> the space the bank lives in (see :func:`fit_memory`)."""
        return ((torch.sqrt(torch.relu(embedding)) - self.mean) / self.std) @ self.whiten

    def distance(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.dtype != self.bank.dtype:  # fp16 network, fp32 memory (see TorchBackend); no node in export
            embedding = embedding.to(self.bank.dtype)
        z = self.project(embedding)
        d2 = (z * z).sum(dim=1, keepdim=True) - 2.0 * (z @ self.bank.t()) + self.bank_sq[None]
        return torch.sqrt(torch.clamp(torch.amin(d2, dim=1), min=0.0))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((self.distance(embedding) - self.center) / self.scale)

    def blend(self, prob_map: torch.Tensor, novelty: torch.Tensor) -> torch.Tensor:
        """``(1 - share) * map + share * tile novelty``: still in [0, 1]."""
        return (1.0 - self.map_share) * prob_map + self.map_share * novelty[:, None, None, None]


def k_center(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` rows chosen greedily so that every row is close to a chosen one."""
    if k >= len(points):
        return np.arange(len(points))
    chosen = [0]
    dmin = ((points - points[0]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(dmin.argmax())
        chosen.append(i)
        dmin = np.minimum(dmin, ((points - points[i]) ** 2).sum(1))
    return np.array(chosen)


def nearest_distance(query: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance of each query row to its nearest bank row (``exclude``: pairs to skip)."""
    d2 = (query ** 2).sum(1)[:, None] - 2.0 * query @ bank.T + bank_sq[None]
    if exclude is not None:
        d2[exclude] = np.inf
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def fit_projection(embeddings: np.ndarray, sqrt: bool = True, whiten: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, std, whitening matrix, projected embeddings float32)`` of :meth:`TileMemory.project`
    fitted on ``(M, D)`` OK embeddings. ``sqrt``/``whiten`` off (identity matrix) exist for studies."""
    emb = embeddings.astype(np.float64)
    if sqrt:
        emb = np.sqrt(np.maximum(emb, 0.0))
    mean, std = emb.mean(0), emb.std(0) + 1e-6
    z = (emb - mean) / std
    matrix = np.eye(z.shape[1])
    if whiten:
        eigval, eigvec = np.linalg.eigh(np.cov(z, rowvar=False))
        eigval = np.maximum((1.0 - WHITEN_SHRINK) * eigval + WHITEN_SHRINK * max(float(eigval.mean()), 1e-6), 1e-6)
        matrix = eigvec / np.sqrt(eigval)
    return mean, std, matrix, (z @ matrix).astype(np.float32)


def calibrate(z: np.ndarray, image_ids: np.ndarray) -> tuple[float, float]:
    """``(center, scale)``: each projected tile's distance to the nearest tile of another image,
    i.e. what a new OK part scores, at the calibration quantile and its spread above the median."""
    z_sq = (z ** 2).sum(1)
    loo = np.concatenate([nearest_distance(z[i:i + 512], z, z_sq, image_ids[i:i + 512, None] == image_ids[None])
                          for i in range(0, len(z), 512)])
    q50, qhi = np.quantile(loo, [0.5, CALIBRATION_QUANTILE])
    return float(qhi), float(max(qhi - q50, 1e-3))


def fit_memory(embeddings: np.ndarray, image_ids: np.ndarray, max_tiles: int = MEMORY_MAX_TILES) -> TileMemory:
    """Build the memory from ``(M, D)`` training-tile embeddings and the image each tile came from."""
    if len(embeddings) < 2 or len(np.unique(image_ids)) < 2:
        raise ValueError("the tile memory needs tiles from at least two OK images")
    mean, std, whiten, z = fit_projection(embeddings)
    center, scale = calibrate(z, image_ids)  # against the full set, before thinning
    keep = k_center(z, max_tiles)
    memory = TileMemory(z.shape[1], len(keep))
    # Rounded to fp16 precision once, so the fp16 copy in model.pt and the fp32 ONNX graph agree.
    bank = torch.from_numpy(z[keep]).half().float()
    memory.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    memory.std.copy_(torch.from_numpy(std.astype(np.float32)))
    memory.whiten.copy_(torch.from_numpy(whiten.astype(np.float32)))
    memory.bank.copy_(bank)
    memory.bank_sq.copy_((bank * bank).sum(1))
    memory.center.fill_(center)
    memory.scale.fill_(scale)
    return memory


@torch.inference_mode()
def collect_embeddings(model: nn.Module, tiles_per_image: Iterable[tuple[np.ndarray, int]], meta: ModelMeta,
                       batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Embed uint8 tiles ``(N, C, T, T)`` given per image as ``(tiles, image id)``, normalised as
    ``meta`` says, with the model in eval mode. No tiles at all gives empty arrays."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embs, ids = [], []
    for tiles, image_id in tiles_per_image:
        x = meta.normalise(tiles)
        for i in range(0, len(x), batch):
            embs.append(model.embed(torch.from_numpy(x[i:i + batch]).to(device)).float().cpu().numpy())
        ids += [image_id] * len(x)
    model.train(was_training)
    if not embs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(embs), np.array(ids)


def image_embeddings(model: nn.Module, images: Sequence[np.ndarray], meta: ModelMeta, progress: bool = True,
                     scale: float = 1.0, part_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tile each uint8 OK image (at ``scale`` of its size) as inference does and embed every tile:
    ``(M, D)`` embeddings and the part id of each (``part_ids``, default one per image)."""
    desc = "tile memory" if scale == 1.0 else f"tile memory (x{scale:g})"
    ids = list(range(len(images))) if part_ids is None else list(part_ids)
    if len(ids) != len(images):
        raise ValueError(f"part_ids has {len(ids)} entries for {len(images)} images")

    def tiles_per_image() -> Iterator[tuple[np.ndarray, int]]:
        for i, img in enumerate(tqdm(images, desc=desc, unit="image", disable=not progress)):
            yield tiles_at_scale(img, meta.tile_size, MEMORY_OVERLAP, scale), ids[i]

    return collect_embeddings(model, tiles_per_image(), meta)


def memory_from_images(model: nn.Module, images: Sequence[np.ndarray], meta: ModelMeta,
                       max_tiles: int = MEMORY_MAX_TILES, progress: bool = True, scale: float = 1.0,
                       part_ids: Sequence[int] | None = None) -> TileMemory:
    """Fit a memory on the tiles of uint8 OK images (:func:`image_embeddings`). ``part_ids`` says
    which images show the same part, such as a training image and its view as a line rectifies it:
    the calibration then measures each tile against other parts only, as a new OK part would be."""
    return fit_memory(*image_embeddings(model, images, meta, progress, scale, part_ids), max_tiles)


def attach_memories(model: nn.Module, images: Sequence[np.ndarray], meta: ModelMeta, progress: bool = True,
                    part_ids: Sequence[int] | None = None, pooled: LineFrameEmbeddings | None = None) -> nn.Module:
    """Fit the fine and the coarse tile memory on uint8 OK images (``part_ids``: see
    :func:`memory_from_images`) and attach both to ``model``. ``pooled``: tiles of OK line frames
    (:func:`line_frame_embeddings`) fitted together with the images' tiles, each frame its own part."""
    device = next(model.parameters()).device
    ids = list(range(len(images))) if part_ids is None else list(part_ids)
    first_frame_id = max(ids, default=-1) + 1
    for name, max_tiles, scale in (("memory", MEMORY_MAX_TILES, 1.0), ("coarse_memory", COARSE_MAX_TILES, COARSE_SCALE)):
        embeddings, image_ids = image_embeddings(model, images, meta, progress, scale, ids)
        if pooled is not None:
            frame_embeddings, frame_ids = pooled.fine if scale == 1.0 else pooled.coarse
            embeddings = np.concatenate([embeddings, frame_embeddings])
            image_ids = np.concatenate([image_ids, frame_ids + first_frame_id])
        setattr(model, name, fit_memory(embeddings, image_ids, max_tiles).to(device))
    return model


@dataclass(frozen=True)
class LineFrameEmbeddings:
    """Tile embeddings of OK camera frames as a line preprocesses them: ``fine`` and ``coarse`` are
    ``(embeddings, frame index)`` pairs; ``frames`` counts the frames where a part was found."""
    fine: tuple[np.ndarray, np.ndarray]
    coarse: tuple[np.ndarray, np.ndarray]
    frames: int


def line_frame_embeddings(model: nn.Module, frames: Sequence[Path], line_config: str | Path, meta: ModelMeta,
                          progress: bool = True) -> LineFrameEmbeddings:
    """Put each camera frame of an OK part through the line's preprocessing (part location,
    rectification, tiling at both scales) and embed the tiles the line will send. Frames where no
    part is found are skipped; none at all, or no coarse tile, is an error naming the fix."""
    from pipeline.config import load_config
    from pipeline.processing import Preprocessor
    from pipeline.sources import _decode

    prep = Preprocessor.for_model(load_config(line_config).preprocess, replace(meta, coarse_scale=COARSE_SCALE))

    def tiles_per_frame() -> Iterator[tuple[np.ndarray, int]]:
        for frame_id, path in enumerate(tqdm(frames, desc="tile memory (line)", unit="frame", disable=not progress)):
            frame, reason = _decode(Path(path))
            if frame is None:
                raise ValueError(f"{path}: {reason}; --memory-line and --memory-frames take camera frames of OK parts "
                                 "on the line")
            prepared = prep(frame)
            if prepared.verdict is None:
                # The coarse tiles follow the fine ones; an id of -1 - frame marks them apart.
                coarse = prepared.tile_index >= len(prepared.grid)
                yield prepared.tiles[~coarse], frame_id
                if coarse.any():
                    yield prepared.tiles[coarse], -1 - frame_id

    embeddings, ids = collect_embeddings(model, tiles_per_frame(), meta)
    if not len(ids):
        raise ValueError(f"{line_config}: the line found no part in any of the {len(frames)} frames; "
                         "check that they show OK parts on this line's belt")
    fine = ids >= 0
    if fine.all():
        raise ValueError(f"{line_config}: no frame gave a coarse tile with enough part "
                         "(preprocess.min_tile_part_fraction); the part is too small for a coarse pass")
    return LineFrameEmbeddings((embeddings[fine], ids[fine]), (embeddings[~fine], -1 - ids[~fine]),
                               len(np.unique(ids[fine])))


def memory_from_line_frames(model: nn.Module, frames: Sequence[Path], line_config: str | Path, meta: ModelMeta,
                            progress: bool = True) -> tuple[TileMemory, TileMemory, int]:
    """Fit the fine and the coarse memory on camera frames of OK parts alone, as a line sees them
    (:func:`line_frame_embeddings`). Returns the fine memory, the coarse memory and the number of
    frames used."""
    emb = line_frame_embeddings(model, frames, line_config, meta, progress)
    return fit_memory(*emb.fine), fit_memory(*emb.coarse, COARSE_MAX_TILES), emb.frames


def attach_memory_from_state(model: nn.Module, state: dict, source: str = "state") -> dict:
    """Give ``model`` an empty memory of the right shape for each memory ``state`` (a state dict)
    holds, and return the state to load. A memory from before whitening (no ``whiten`` buffer)
    cannot be served by this code: it is left out, with a note on stderr naming the fix."""
    state = dict(state)
    for name in MEMORY_NAMES:
        if f"{name}.bank" not in state:
            continue
        if f"{name}.whiten" not in state:
            for key in [k for k in state if k.startswith(f"{name}.")]:
                del state[key]
            print(f"{source}: its {name.replace('_', ' ')} was fitted by an older version (no whitening) and is not "
                  "loaded; `export_model --memory-data OK_IMAGES` fits a new one", file=sys.stderr)
            continue
        size, dim = state[f"{name}.bank"].shape
        setattr(model, name, TileMemory(int(dim), int(size)))
    attach_position_memory_from_state(model, state)
    return state


# Rows kept per position in a per-position memory (PositionMemory), by greedy k-centre. On the demo
# line (1,406 OK tiles per position: 703 frames, 703 canonical views), NG recall at <= 5 % false
# alarms over 16 simulated sequences: all 1,406 rows 0.985, 512 rows 0.983, 256 rows 0.923, 128 rows
# 0.798 (the shared memories: 0.899; 512 at random: 0.881; docs/studies/position_memory.py). 8 positions x
# 512 rows x 256 values in fp16 are 2.1 MB in each of model.onnx and model.pt (README, "A memory per
# tile position").
POSITION_MEMORY_ROWS = 512


class PositionMemory(nn.Module):
    """A tile memory per position of one line's tile grids (``ModelMeta.line_grids``).

    On a line every part reaches the model rectified to the same canonical frame, so the tile at a
    given grid position always shows the same region of the part: a corner, an edge, the middle.
    The shared memories compare a tile with OK tiles of every position and of every framing; this
    one compares it with the OK tiles of its own position only (as PaDiM keeps statistics per
    position), in the shared memories' projected space (the fine memory's projection for the
    ``n_fine`` full-scale positions, the coarse memory's for the ``n_coarse`` half-scale ones), each
    position calibrated on its own. ``forward(fine_z, coarse_z)`` takes a tile's two projections and
    gives ``(N, n_fine + n_coarse)``: its novelty against every position's bank (the caller keeps the
    column of the tile's own position: ``pipeline.vision.tiling.LinePositions``). Scoring every
    position costs 8 x 512 rows per tile on the demo line, as many as the shared memories' banks
    hold together: little beside the network."""

    def __init__(self, dim: int, n_fine: int, n_coarse: int, rows: int) -> None:
        super().__init__()
        self.n_fine, self.n_coarse, self.rows = n_fine, n_coarse, rows
        self.register_buffer("layout", torch.tensor([n_fine, n_coarse, rows]))
        self.register_buffer("fine_bank", torch.zeros(n_fine * rows, dim))
        self.register_buffer("fine_bank_sq", torch.zeros(n_fine * rows))
        self.register_buffer("coarse_bank", torch.zeros(n_coarse * rows, dim))
        self.register_buffer("coarse_bank_sq", torch.zeros(n_coarse * rows))
        self.register_buffer("center", torch.ones(n_fine + n_coarse))
        self.register_buffer("scale", torch.ones(n_fine + n_coarse))

    def _nearest(self, z: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, positions: int) -> torch.Tensor:
        d2 = (z * z).sum(dim=1, keepdim=True) - 2.0 * (z @ bank.t()) + bank_sq[None]
        return torch.amin(d2.reshape(-1, positions, self.rows), dim=2)

    def forward(self, fine_z: torch.Tensor, coarse_z: torch.Tensor) -> torch.Tensor:
        d2 = torch.cat([self._nearest(fine_z, self.fine_bank, self.fine_bank_sq, self.n_fine),
                        self._nearest(coarse_z, self.coarse_bank, self.coarse_bank_sq, self.n_coarse)], dim=1)
        return torch.sigmoid((torch.sqrt(torch.clamp(d2, min=0.0)) - self.center[None]) / self.scale[None])


def fit_position_banks(z: np.ndarray, positions: np.ndarray, parts: np.ndarray, n_positions: int,
                       rows: int = POSITION_MEMORY_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projected OK tiles ``z`` at grid ``positions`` (0..n_positions-1) of ``parts`` -> per position a
    bank of ``rows`` rows (greedy k-centre; a position with fewer tiles repeats them, which moves no
    nearest distance) rounded to fp16, and its calibration: every OK tile's distance to the nearest
    kept row of another part, whose 0.99 quantile maps to 0.5 (as :func:`calibrate`). Returns
    ``(banks (n_positions * rows, D), centers, scales)``."""
    banks, centers, scales = [], [], []
    for p in range(n_positions):
        at = positions == p
        if at.sum() < 2 or len(np.unique(parts[at])) < 2:
            raise ValueError(f"grid position {p}: OK tiles of at least two parts are needed, got {int(at.sum())}; "
                             "the line keeps too few tiles there (preprocess.min_tile_part_fraction)")
        zp = z[at].astype(np.float32)
        keep = k_center(zp, rows)
        keep = np.resize(keep, rows)  # repeats when the position has fewer tiles than rows
        bank = torch.from_numpy(zp[keep]).half().float().numpy()
        bank_sq = (bank.astype(np.float64) ** 2).sum(1)
        exclude = parts[at][:, None] == parts[at][keep][None]
        d = nearest_distance(zp.astype(np.float64), bank.astype(np.float64), bank_sq, exclude)
        d = d[np.isfinite(d)]
        q50, qhi = np.quantile(d, [0.5, CALIBRATION_QUANTILE])
        banks.append(bank)
        centers.append(float(qhi))
        scales.append(float(max(qhi - q50, 1e-3)))
    return np.concatenate(banks), np.array(centers, np.float32), np.array(scales, np.float32)


def frame_parts(frames: Sequence[Path]) -> list[str]:
    """Which part each camera frame shows: the ``source_image`` that a simulated sequence's
    ``truth.jsonl`` names beside it (frames of one part are one part to the calibration), else the
    frame's own name."""
    import json

    names: dict[str, str] = {}
    for truth in {Path(f).parent / "truth.jsonl" for f in frames}:
        if truth.is_file():
            for line in truth.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    names[str(truth.parent / row["file"])] = str(row.get("source_image") or row["file"])
    return [names.get(str(Path(f)), Path(f).name) for f in frames]


@torch.no_grad()  # not inference_mode: the memory's buffers go on into export's traced graph
def fit_position_memory(model: nn.Module, images: Sequence[np.ndarray], image_names: Sequence[str],
                        frames: Sequence[Path], line_config: str | Path, meta: ModelMeta,
                        progress: bool = True, rows: int | None = None) -> tuple[PositionMemory, dict]:
    """Fit a :class:`PositionMemory` for the line of ``line_config`` on OK part images as that line
    rectifies them (``canonical_view``: the whole canonical part, every position) and OK camera
    frames as it preprocesses them (the tiles it keeps); a frame and the image it shows are one part
    (:func:`frame_parts`). ``model`` must hold both shared memories (their projections are used).
    Returns the memory and the grids (``ModelMeta.line_grids``)."""
    from pipeline.config import load_config
    from pipeline.processing import Preprocessor
    from pipeline.sources import _decode
    from pipeline.vision.rectify import canonical_view
    from pipeline.vision.tiling import LinePositions, downscale, extract_tiles

    rows = POSITION_MEMORY_ROWS if rows is None else rows
    if getattr(model, "memory", None) is None or getattr(model, "coarse_memory", None) is None:
        raise ValueError("--memory-positions needs both shared tile memories (fine and coarse) in the model")
    prep = Preprocessor.for_model(load_config(line_config).preprocess, replace(meta, coarse_scale=COARSE_SCALE))
    n_fine = len(prep.grid)
    tiles_by_part: list[tuple[np.ndarray, np.ndarray, str]] = []  # (tiles, tile_index, part)
    for img, name in zip(images, image_names):
        view = canonical_view(img, prep.wh)
        fine = extract_tiles(view, prep.grid)
        coarse = extract_tiles(downscale(view, COARSE_SCALE), prep.coarse_grid)
        tiles_by_part.append((np.concatenate([fine, coarse]), np.arange(n_fine + len(coarse)), name))
    for path, part in zip(tqdm(frames, desc="position memory (line)", unit="frame", disable=not progress),
                          frame_parts(frames)):
        frame, reason = _decode(Path(path))
        if frame is None:
            raise ValueError(f"{path}: {reason}; --memory-frames takes camera frames of OK parts on the line")
        prepared = prep(frame)
        if prepared.verdict is None:
            tiles_by_part.append((prepared.tiles, prepared.tile_index, part))
    device = next(model.parameters()).device
    zs, positions, parts = [], [], []
    for tiles, index, part in tiles_by_part:
        emb = model.embed(torch.from_numpy(meta.normalise(tiles)).to(device)).float()
        coarse = torch.from_numpy(index >= n_fine).to(device)[:, None]
        z = torch.where(coarse, model.coarse_memory.project(emb), model.memory.project(emb))
        zs.append(z.cpu().numpy())
        positions.append(index)
        parts += [part] * len(index)
    z, positions, parts = np.concatenate(zs), np.concatenate(positions), np.array(parts)
    n_coarse = len(prep.coarse_grid)
    fine_bank, fine_c, fine_s = fit_position_banks(z[positions < n_fine], positions[positions < n_fine],
                                                   parts[positions < n_fine], n_fine, rows)
    coarse_bank, coarse_c, coarse_s = fit_position_banks(z[positions >= n_fine], positions[positions >= n_fine] - n_fine,
                                                         parts[positions >= n_fine], n_coarse, rows)
    memory = PositionMemory(z.shape[1], n_fine, n_coarse, rows)
    memory.fine_bank.copy_(torch.from_numpy(fine_bank))
    memory.fine_bank_sq.copy_(memory.fine_bank.pow(2).sum(1))
    memory.coarse_bank.copy_(torch.from_numpy(coarse_bank))
    memory.coarse_bank_sq.copy_(memory.coarse_bank.pow(2).sum(1))
    memory.center.copy_(torch.from_numpy(np.concatenate([fine_c, coarse_c])))
    memory.scale.copy_(torch.from_numpy(np.concatenate([fine_s, coarse_s])))
    return memory.to(device), LinePositions(prep.grid, prep.coarse_grid).to_dict()


def attach_position_memory_from_state(model: nn.Module, state: dict) -> None:
    """Give ``model`` an empty :class:`PositionMemory` of the shape ``state`` holds, if it holds one."""
    if "position_memory.layout" in state:
        n_fine, n_coarse, rows = (int(v) for v in state["position_memory.layout"])
        model.position_memory = PositionMemory(int(state["position_memory.fine_bank"].shape[1]), n_fine, n_coarse, rows)
