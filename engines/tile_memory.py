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
tried (research/tile_memory_variants.py).

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
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engines.artifact import MEMORY_NAMES, ModelMeta  # noqa: F401  (MEMORY_NAMES re-exported)
from pipeline.vision.scoring import LinePositions
from pipeline.vision.tiling import TileGrid, scaled_shape, tile_grid, tiles_at_scale

MEMORY_OVERLAP = 0.25     # the tiling overlap of inference, so the memory sees the same tile positions
MEMORY_MAX_TILES = 4096   # bank rows kept: on magnetic tile, 4096 of 8955 ranked images as well as all
COARSE_SCALE = 0.5         # image scale of the coarse pass
COARSE_MAX_TILES = 2048    # 2512 coarse training tiles on magnetic tile; 2048 ranked as well as all
# A memory refitted on line frames needs many of them: on the simulated line, 100 frames
# ranked parts worse at 5 % false alarms than the memories fitted on the training images (NG recall
# 0.70 against 0.73), 200 about as well (0.72), 465 better (0.85). Fewer frames than this get a
# warning from export_model.
LINE_MEMORY_MIN_FRAMES = 200
CALIBRATION_QUANTILE = 0.99
WHITEN_SHRINK = 0.1        # eigenvalues -> 0.9 x eigenvalue + 0.1 x their mean (0.01..0.2 scored alike)
# With few OK tiles the whitening is fitted on a few directions only and blows up every other one:
# each new part, OK ones included, then scores as novel. On Fashion-MNIST trousers (one tile per
# image, 256 dimensions) whitened memories of 20 and 40 tiles gave image AUROC 0.500 and
# 0.505-0.782 (every score 1.0 at worst), plain ones 0.967-0.979; from 60 tiles (0.23 x 256) up
# whitening was the better (0.972 against 0.958). A memory of fewer tiles than this share of the
# embedding's dimensions is not whitened (research/small_memory_whitening.py).
WHITEN_MIN_TILES_PER_DIM = 0.25
# Share of each tile's novelty added to the stitched defect map, outside the graph (ModelMeta's
# fine_map_share). Small, so that the map still outlines the defect; enough that pixels of a novel
# tile rank above look-alike pixels of a familiar one. On the magnetic-tile test split a full-scale
# share of 0.02 alone lifted pixel AUROC from 0.60 to 0.74 (0.1: 0.745; research/
# map_fusion_variants.py). Used by models with one memory; models with two exported before both_scales_map_share
# existed add 0.01 of each scale's spread (fine_map_share and coarse_map_share).
FINE_MAP_SHARE = 0.01
# With a coarse memory, a newly exported model adds instead this share of the lower of the two
# spread maps (ModelMeta.both_scales_map_share): a pixel gains it only where the part is novel at
# both scales. The fine tiles place it (the coarse spread alone lifts the whole of a defective
# image), the coarse tiles confirm it (a lone odd fine tile on good surface stays low). Against
# 0.01 of each spread: on the shipped weights pixel AUROC / AUPRO 0.921 / 0.808 -> 0.926 / 0.824; on
# three other weight and memory sets +0.004..0.007 / +0.017..0.024; on both halves of the split each
# time; 0.02..0.04 scored alike (research/both_scales_share.py).
BOTH_SCALES_MAP_SHARE = 0.03
# ... and its image score takes this share from the strongest place novel at both scales (the peak
# of that lower spread; ModelMeta.both_scales_score_weight), the rest from the tile scores. A small
# defect lifts a full-scale tile and the half-scale tile over it; a good part's odd tiles at the two
# scales rarely lie in one place. On the shipped folder: development split image AUROC 0.976 ->
# 0.980, NG recall at <= 5 % false alarms 0.862 -> 0.878; on the simulated line 0.875 -> 0.912 over
# the eight sequences it was chosen on and 0.846 -> 0.888 over four made after the choice; on three
# other folders image AUROC +0.003..0.007.
BOTH_SCALES_SCORE_WEIGHT = 0.5
# Spread as the minimum over the tiles covering a pixel, not their weighted mean: on the shipped
# weights pixel AUROC 0.817 -> 0.830, AUPRO 0.757 -> 0.780, the same on both halves of the split and
# on other weight sets (research/novelty_min_pool.py).
NOVELTY_SPREAD = "min"
# ... and the fine part of its image score is the mean of the two strongest full-scale tile scores
# (ModelMeta.fine_top_k): a defect shows in every overlapping tile that holds it, a good part's odd
# tile is often alone. On the shipped folder NG recall at <= 5 % false alarms on the simulated line
# 0.84 -> 0.88 over six sequences, higher for each of the five memory sets tried; the development
# split within 0.001. One memory keeps the strongest tile.
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

    def squared_distances(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, d2)``: the projected embedding ``(N, D)`` and its squared distance to every bank row
        ``(N, rows)``, which :meth:`novelty` and a :class:`PositionMemory` both read."""
        if embedding.dtype != self.bank.dtype:  # fp16 network, fp32 memory (see TorchBackend); no node in export
            embedding = embedding.to(self.bank.dtype)
        z = self.project(embedding)
        return z, (z * z).sum(dim=1, keepdim=True) - 2.0 * (z @ self.bank.t()) + self.bank_sq[None]

    def novelty(self, d2: torch.Tensor) -> torch.Tensor:
        """Squared distances to the bank (:meth:`squared_distances`) -> the calibrated novelty ``(N,)``."""
        distance = torch.sqrt(torch.clamp(torch.amin(d2, dim=1), min=0.0))
        return torch.sigmoid((distance - self.center) / self.scale)

    def forward(self, embedding: torch.Tensor, distances: bool = False):
        """The novelty ``(N,)``; with ``distances``, ``(novelty, z, d2)`` for a :class:`PositionMemory`
        to read too. Called as the module (not its methods), so its nodes keep the memory's scope in the
        exported graph (``MEMORY_SCOPES``: fp16 banks, fp32 in TensorRT)."""
        z, d2 = self.squared_distances(embedding)
        novelty = self.novelty(d2)
        return (novelty, z, d2) if distances else novelty

    def blend(self, prob_map: torch.Tensor, novelty: torch.Tensor) -> torch.Tensor:
        """``(1 - share) * map + share * tile novelty``: still in [0, 1]."""
        return (1.0 - self.map_share) * prob_map + self.map_share * novelty[:, None, None, None]


def k_center(points: np.ndarray, k: int, start: Sequence[int] = ()) -> np.ndarray:
    """Indices of ``k`` rows chosen greedily so that every row is close to a chosen one, continuing
    from the rows ``start`` (default: row 0). With ``k`` at least the number of rows, all of them
    (``start`` first)."""
    chosen = [int(i) for i in start] or [0]
    if k >= len(points):
        return np.concatenate([chosen, np.setdiff1d(np.arange(len(points)), chosen)]).astype(np.int64)
    dmin = ((points - points[chosen[0]]) ** 2).sum(1)
    for i in chosen[1:]:
        dmin = np.minimum(dmin, ((points - points[i]) ** 2).sum(1))
    while len(chosen) < k:
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


def fit_projection(embeddings: np.ndarray, sqrt: bool = True, whiten: bool = True, shrink: float = WHITEN_SHRINK
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, std, whitening matrix, projected embeddings float32)`` of :meth:`TileMemory.project`
    fitted on ``(M, D)`` OK embeddings. ``sqrt``/``whiten`` off (identity matrix) and another eigenvalue
    ``shrink`` exist for studies."""
    emb = embeddings.astype(np.float64)
    if sqrt:
        emb = np.sqrt(np.maximum(emb, 0.0))
    mean, std = emb.mean(0), emb.std(0) + 1e-6
    z = (emb - mean) / std
    matrix = np.eye(z.shape[1])
    if whiten:
        eigval, eigvec = np.linalg.eigh(np.cov(z, rowvar=False))
        eigval = np.maximum((1.0 - shrink) * eigval + shrink * max(float(eigval.mean()), 1e-6), 1e-6)
        matrix = eigvec / np.sqrt(eigval)
    return mean, std, matrix, (z @ matrix).astype(np.float32)


def calibrate(z: np.ndarray, image_ids: np.ndarray) -> tuple[float, float]:
    """``(center, scale)``: each projected tile's distance to the nearest tile of another image,
    i.e. what a new OK part scores, at the calibration quantile and its spread above the median."""
    z_sq = (z ** 2).sum(1)
    loo = np.concatenate([nearest_distance(z[i:i + 512], z, z_sq, image_ids[i:i + 512, None] == image_ids[None])
                          for i in range(0, len(z), 512)])
    return center_and_scale(loo)


def center_and_scale(distances: np.ndarray) -> tuple[float, float]:
    """``(center, scale)`` of a memory's novelty from OK tiles' distances to it: the calibration
    quantile (novelty 0.5 there) and its spread above the median."""
    q50, qhi = np.quantile(distances, [0.5, CALIBRATION_QUANTILE])
    return float(qhi), float(max(qhi - q50, 1e-3))


def whiten_shrink_for(n_tiles: int, dims: int) -> float:
    """The whitening's eigenvalue shrink for a memory of ``n_tiles`` embeddings of ``dims``
    dimensions: :data:`WHITEN_SHRINK`, or 1.0 (no whitening) with too few tiles
    (:data:`WHITEN_MIN_TILES_PER_DIM`)."""
    return WHITEN_SHRINK if n_tiles >= WHITEN_MIN_TILES_PER_DIM * dims else 1.0


def fit_memory(embeddings: np.ndarray, image_ids: np.ndarray, max_tiles: int = MEMORY_MAX_TILES,
               whiten_shrink: float | None = None) -> TileMemory:
    """Build the memory from ``(M, D)`` training-tile embeddings and the image each tile came from.
    ``whiten_shrink``: None for :func:`whiten_shrink_for`'s choice, or a value to use as it is."""
    if len(embeddings) < 2 or len(np.unique(image_ids)) < 2:
        raise ValueError("the tile memory needs tiles from at least two OK images")
    if whiten_shrink is None:
        whiten_shrink = whiten_shrink_for(*embeddings.shape)
    mean, std, whiten, z = fit_projection(embeddings, shrink=whiten_shrink)
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
    memory.kept_rows = keep  # which embeddings the bank holds, in order (fit_position_memory reads it)
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
                    part_ids: Sequence[int] | None = None, pooled: LineFrameEmbeddings | None = None,
                    fitted: dict | None = None, whiten_shrink: float | None = None) -> nn.Module:
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
        setattr(model, name, fit_memory(embeddings, image_ids, max_tiles, whiten_shrink).to(device))
        if fitted is not None:  # what fit_position_memory builds on: every embedding and the kept rows
            fitted[name] = (embeddings, getattr(model, name).kept_rows)
    return model


@dataclass(frozen=True)
class LineFrameEmbeddings:
    """Tile embeddings of OK camera frames as a line preprocesses them: ``fine`` and ``coarse`` are
    ``(embeddings, frame index)`` pairs; ``frames`` counts the frames where a part was found."""
    fine: tuple[np.ndarray, np.ndarray]
    coarse: tuple[np.ndarray, np.ndarray]
    frames: int
    # the grid position of each fine and each coarse tile (coarse ones counted from 0)
    positions: tuple[np.ndarray, np.ndarray] | None = None


def frame_tile_embeddings(model: nn.Module, frame_tiles: Iterable[tuple[np.ndarray, np.ndarray, int] | None],
                          meta: ModelMeta, source: str, n_frames: int, progress: bool = True) -> LineFrameEmbeddings:
    """Embed the tiles of OK camera frames as a line preprocessed them: ``frame_tiles`` gives, per
    frame, ``(tiles, tile_index, len(grid))`` (coarse tiles follow the fine ones, indexed after the
    grid's positions) or None where no part was found (skipped); ``calibration.memories`` makes
    them. ``source`` names the line in errors; none at all, or no coarse tile, is an error naming
    the fix."""
    fine_pos: list[np.ndarray] = []
    coarse_pos: list[np.ndarray] = []

    def tiles_per_frame() -> Iterator[tuple[np.ndarray, int]]:
        for frame_id, item in enumerate(tqdm(frame_tiles, total=n_frames, desc="tile memory (line)", unit="frame",
                                             disable=not progress)):
            if item is None:
                continue
            tiles, tile_index, n_grid = item
            # The coarse tiles follow the fine ones; an id of -1 - frame marks them apart.
            coarse = tile_index >= n_grid
            fine_pos.append(tile_index[~coarse])
            yield tiles[~coarse], frame_id
            if coarse.any():
                coarse_pos.append(tile_index[coarse] - n_grid)
                yield tiles[coarse], -1 - frame_id

    embeddings, ids = collect_embeddings(model, tiles_per_frame(), meta)
    if not len(ids):
        raise ValueError(f"{source}: the line found no part in any of the {n_frames} frames; "
                         "check that they show OK parts on this line's belt")
    fine = ids >= 0
    if fine.all():
        raise ValueError(f"{source}: no frame gave a coarse tile with enough part "
                         "(preprocess.min_tile_part_fraction); the part is too small for a coarse pass")
    return LineFrameEmbeddings((embeddings[fine], ids[fine]), (embeddings[~fine], -1 - ids[~fine]),
                               len(np.unique(ids[fine])), (np.concatenate(fine_pos), np.concatenate(coarse_pos)))


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


# Rows per position in a per-position memory (PositionMemory): the shared bank's rows that came from
# that position's tiles, topped up to this many by greedy k-centre continued from them. On the demo
# line (1,406 OK tiles per position: 703 frames, 703 canonical views), NG recall at <= 5 % false
# alarms, study over sequences 7-22 / 23-30: every OK tile as the bank 0.985 / 0.968, topped up to 480
# 0.983 / 0.976, to 512 0.977 / 0.976, the shared rows alone (230-408) 0.914 / 0.903, 256 rows by
# k-centre alone 0.923 (the shared memories: 0.899 / 0.885; research/position_memory.py). Only the
# extra rows are stored: about 1,200 on the demo line, 1.2 MB in model.onnx and model.pt together.
POSITION_MEMORY_ROWS = 480
_MASKED = 1e6  # added to the squared distance of rows of other positions: never the nearest


class PositionMemory(nn.Module):
    """A tile memory per position of one line's tile grids (``ModelMeta.line_grids``).

    On a line every part reaches the model rectified to the same canonical frame, so the tile at a
    given grid position always shows the same region of the part: a corner, an edge, the middle.
    The shared memories compare a tile with OK tiles of every position and of every framing; this
    one compares it with the OK tiles of its own position only (as PaDiM keeps statistics per
    position), in the shared memories' projected space, each position calibrated on its own. A
    position's rows are the shared bank's rows that came from its tiles (``*_tags``: each shared
    row's position, -1 for tiles of images as they are) plus its own extra rows (``*_extra``), so
    only the extra rows take room. ``forward(fine_z, fine_d2, coarse_z, coarse_d2)`` takes a tile's
    two projections and their squared distances to the two shared banks
    (:meth:`TileMemory.squared_distances`, computed once for both) and gives ``(N, n_fine + n_coarse)``: its
    novelty against every position (the caller keeps the column of the tile's own position:
    ``pipeline.vision.scoring.LinePositions``)."""

    def __init__(self, dim: int, n_fine: int, n_coarse: int, shared_fine: int, shared_coarse: int,
                 extra_fine: int, extra_coarse: int) -> None:
        super().__init__()
        self.n_fine, self.n_coarse = n_fine, n_coarse
        self.has_extra = (extra_fine > 0, extra_coarse > 0)  # fixed at construction: no branch in the trace
        self.register_buffer("layout", torch.tensor([n_fine, n_coarse]))
        self.register_buffer("fine_extra", torch.zeros(extra_fine, dim))
        self.register_buffer("fine_extra_sq", torch.zeros(extra_fine))
        self.register_buffer("fine_tags", torch.full((shared_fine + extra_fine,), -1.0))
        self.register_buffer("coarse_extra", torch.zeros(extra_coarse, dim))
        self.register_buffer("coarse_extra_sq", torch.zeros(extra_coarse))
        self.register_buffer("coarse_tags", torch.full((shared_coarse + extra_coarse,), -1.0))
        self.register_buffer("center", torch.ones(n_fine + n_coarse))
        self.register_buffer("scale", torch.ones(n_fine + n_coarse))

    @staticmethod
    def _nearest(z: torch.Tensor, d2: torch.Tensor, extra: torch.Tensor | None, extra_sq: torch.Tensor,
                 tags: torch.Tensor, positions: int) -> torch.Tensor:
        """``d2``: the squared distances to the shared bank, as the shared memory computed them."""
        if positions == 0:
            return z.new_zeros((z.shape[0], 0))
        if extra is not None:
            d2 = torch.cat([d2, (z * z).sum(dim=1, keepdim=True) - 2.0 * (z @ extra.t()) + extra_sq[None]], dim=1)
        ids = torch.arange(positions, dtype=tags.dtype, device=tags.device)
        diff = tags[None, :] - ids[:, None]  # whole numbers: 0 on the position's own rows
        masked = _MASKED * torch.clamp(diff * diff, max=1.0)  # (positions, rows)
        return torch.amin(d2[:, None, :] + masked[None], dim=2)

    def forward(self, fine_z: torch.Tensor, fine_d2: torch.Tensor, coarse_z: torch.Tensor,
                coarse_d2: torch.Tensor) -> torch.Tensor:
        fine_extra = self.fine_extra if self.has_extra[0] else None
        coarse_extra = self.coarse_extra if self.has_extra[1] else None
        d2 = torch.cat([self._nearest(fine_z, fine_d2, fine_extra, self.fine_extra_sq, self.fine_tags, self.n_fine),
                        self._nearest(coarse_z, coarse_d2, coarse_extra, self.coarse_extra_sq, self.coarse_tags,
                                      self.n_coarse)], dim=1)
        return torch.sigmoid((torch.sqrt(torch.clamp(d2, min=0.0)) - self.center[None]) / self.scale[None])


def top_up_rows(z: np.ndarray, positions: np.ndarray, parts: np.ndarray, kept: np.ndarray, bank: np.ndarray,
                n_positions: int, rows: int = POSITION_MEMORY_ROWS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One scale's per-position rows. ``z``: every projected OK tile the shared memory was fitted on,
    ``positions`` (-1: not a line position), ``parts``; ``kept``: the tiles the shared ``bank`` holds,
    in its row order. Each position keeps the bank's rows from its tiles and adds tiles by greedy
    k-centre continued from them until it has ``rows`` (rounded to fp16, as the banks are). Each
    position is calibrated on all its OK tiles' distances to its rows of other parts
    (:func:`center_and_scale`, as :func:`calibrate`). Returns ``(tags of the bank's rows, extra rows,
    their tags, centres, scales)``."""
    bank_tags = positions[kept].astype(np.float32)
    bank_tags[bank_tags < 0] = -1.0
    extra, extra_tags, centres, scales = [], [], [], []
    for p in range(n_positions):
        at = np.nonzero(positions == p)[0]
        if len(at) < 2 or len(np.unique(parts[at])) < 2:
            raise ValueError(f"grid position {p}: OK tiles of at least two parts are needed, got {len(at)}; "
                             "the line keeps too few tiles there (preprocess.min_tile_part_fraction)")
        pts = z[at].astype(np.float32)
        mine = np.nonzero(bank_tags == p)[0]  # bank rows of this position
        chosen = np.searchsorted(at, kept[mine])  # their places among the position's tiles (``at`` is sorted)
        added = k_center(pts, max(rows, len(chosen)), chosen)[len(chosen):]
        new = torch.from_numpy(pts[added]).half().float().numpy()
        own = np.concatenate([bank[mine], new]).astype(np.float64)
        own_parts = np.concatenate([parts[kept[mine]], parts[at[added]]])
        d = nearest_distance(pts.astype(np.float64), own, (own ** 2).sum(1), parts[at][:, None] == own_parts[None])
        center, scale = center_and_scale(d[np.isfinite(d)])
        extra.append(new)
        extra_tags += [float(p)] * len(added)
        centres.append(center)
        scales.append(scale)
    dim = z.shape[1]
    extra_rows = np.concatenate(extra) if extra else np.zeros((0, dim), np.float32)
    return bank_tags, extra_rows.reshape(-1, dim), np.array(extra_tags, np.float32), np.array(centres, np.float32), \
        np.array(scales, np.float32)


def fit_position_memory(model: nn.Module, fitted: dict, images: Sequence[np.ndarray], image_names: Sequence[str],
                        frame_part_names: Sequence[str], pooled: LineFrameEmbeddings, grid: TileGrid,
                        coarse_grid: TileGrid, meta: ModelMeta, rows: int | None = None) -> tuple[PositionMemory, dict]:
    """Fit a :class:`PositionMemory` for a line's tile grids (``grid``, and ``coarse_grid`` for the
    coarse pass) on what the shared memories were
    just fitted on (``attach_memories(..., fitted=...)``): the OK images as they are (no position), the
    same images as that line rectifies them (``canonical_view``: every position, in grid order) and
    the OK frames as it preprocesses them (``pooled``, with their tiles' positions). A frame and the
    image it shows are one part (``frame_part_names``: each frame's part, named as the images are,
    ``calibration.memories.frame_parts``). Returns the memory and the grids (``ModelMeta.line_grids``)."""

    rows = POSITION_MEMORY_ROWS if rows is None else rows
    if getattr(model, "memory", None) is None or getattr(model, "coarse_memory", None) is None:
        raise ValueError("--memory-positions needs both shared tile memories (fine and coarse) in the model")
    index = {name: i for i, name in enumerate(image_names)}
    frame_part = np.array([index.get(name, -1 - k) for k, name in enumerate(frame_part_names)])
    layouts = []
    for name, scale, scale_grid, frame_emb, frame_pos in (
            ("memory", 1.0, grid, pooled.fine, pooled.positions[0]),
            ("coarse_memory", COARSE_SCALE, coarse_grid, pooled.coarse, pooled.positions[1])):
        embeddings, kept = fitted[name]
        counts = [len(tile_grid(*scaled_shape(img.shape[0], img.shape[1], scale), meta.tile_size, MEMORY_OVERLAP))
                  for img in images]
        positions = np.concatenate([np.full(sum(counts), -1)] + [np.arange(len(scale_grid))] * len(images) + [frame_pos])
        parts = np.concatenate([np.repeat(np.arange(len(images)), counts), np.repeat(np.arange(len(images)), len(scale_grid)),
                                frame_part[frame_emb[1]]])
        if len(positions) != len(embeddings):
            raise RuntimeError(f"{name}: {len(embeddings)} embeddings but {len(positions)} tile positions; the fit "
                               "and fit_position_memory disagree on the tiles (a bug)")
        memory = getattr(model, name)
        # TileMemory.project in numpy, as the shipped folder's rows were chosen: torch's matmul sums in
        # another order, and k-centre's choice among near-ties follows the last bit.
        mean, std, whiten = (memory.mean.cpu().numpy(), memory.std.cpu().numpy(), memory.whiten.cpu().numpy())
        z = (((np.sqrt(np.maximum(embeddings, 0.0)) - mean) / std) @ whiten).astype(np.float32)
        layouts.append(top_up_rows(z, positions, parts, kept, memory.bank.cpu().numpy(), len(scale_grid), rows))
    (ft, fx, fxt, fc, fs), (ct, cx, cxt, cc, cs) = layouts
    out = PositionMemory(fx.shape[1], len(grid), len(coarse_grid), len(ft), len(ct), len(fx), len(cx))
    out.fine_extra.copy_(torch.from_numpy(fx))
    out.fine_extra_sq.copy_(out.fine_extra.pow(2).sum(1))
    out.fine_tags.copy_(torch.from_numpy(np.concatenate([ft, fxt])))
    out.coarse_extra.copy_(torch.from_numpy(cx))
    out.coarse_extra_sq.copy_(out.coarse_extra.pow(2).sum(1))
    out.coarse_tags.copy_(torch.from_numpy(np.concatenate([ct, cxt])))
    out.center.copy_(torch.from_numpy(np.concatenate([fc, cc])))
    out.scale.copy_(torch.from_numpy(np.concatenate([fs, cs])))
    return out.to(next(model.parameters()).device), LinePositions(grid, coarse_grid).to_dict()


def attach_position_memory_from_state(model: nn.Module, state: dict) -> None:
    """Give ``model`` an empty :class:`PositionMemory` of the shape ``state`` holds, if it holds one."""
    if "position_memory.layout" in state:
        n_fine, n_coarse = (int(v) for v in state["position_memory.layout"])
        fx, cx = state["position_memory.fine_extra"].shape[0], state["position_memory.coarse_extra"].shape[0]
        model.position_memory = PositionMemory(
            int(state["position_memory.fine_extra"].shape[1]), n_fine, n_coarse,
            int(state["position_memory.fine_tags"].shape[0]) - fx, int(state["position_memory.coarse_tags"].shape[0]) - cx,
            fx, cx)
