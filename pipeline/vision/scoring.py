"""The model's scoring rule on a part: how its tiles' maps and novelty scores become the part's
defect map and score (``MapRule``, read from the model's sidecar), and one call that applies it to
a part's tiles (:func:`score_part`), used alike by the line, line calibration and the benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.vision.tiling import TileGrid, stitch

SCORE_SMOOTH_SIGMA = 4.0  # px; the image score ignores single-pixel spikes


# How a tile's novelty score is spread over the pixels of the map (``spread_scores``):
# "mean": the window-weighted mean of the tiles covering a pixel, as maps are stitched;
# "min": the lowest score among them, so that a pixel is marked only where every tile holding it is
# novel. A defect pixel lies in every tile that covers it; a defect-free pixel near a defect has some
# covering tile that misses the defect, and so stays low (research/novelty_min_pool.py).
SPREADS = ("mean", "min")


def spread_scores(scores: np.ndarray, positions: np.ndarray, grid: TileGrid, shape: tuple[int, int],
                  how: str = "mean") -> np.ndarray:
    """Tile scores -> a map at ``shape``: each score held over its tile at ``positions`` of ``grid``,
    combined where tiles overlap as ``how`` says (see ``SPREADS``), then resized to ``shape`` (the
    coarse grid covers a downscaled image). Pixels that no listed tile covers are 0 (with "mean",
    missing tiles count as 0)."""
    t = grid.tile
    if how == "mean":
        flat = np.zeros((len(grid), t, t), np.float32)
        flat[np.asarray(positions, np.int64)] = np.asarray(scores, np.float32)[:, None, None]
        out = stitch(flat, grid)
    elif how == "min":
        full = np.full((max(grid.height, t), max(grid.width, t)), np.inf, np.float32)
        origins = grid.origins
        for i, s in zip(np.asarray(positions, np.int64), np.asarray(scores, np.float32)):
            y, x = origins[i]
            np.minimum(full[y:y + t, x:x + t], s, out=full[y:y + t, x:x + t])
        out = np.where(np.isfinite(full), full, 0.0).astype(np.float32)[: grid.height, : grid.width]
    else:
        raise ValueError(f"spread must be one of {SPREADS}, got {how!r}")
    if out.shape != tuple(shape):
        out = cv2.resize(out, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return out


@dataclass(frozen=True)
class NoveltyShare:
    """What of the tiles' novelty scores is added to the stitched defect map, outside the graph:
    ``fine`` x the full-scale tiles' scores and ``coarse`` x the coarse (downscaled) tiles' scores,
    each spread over its tiles as ``spread`` says, and ``both`` x the lower of the two spreads at
    each pixel, which is high only where the part is novel at both scales; ``score_weight``, what
    share of the image score the strongest such place takes. From the model's metadata
    (``ModelMeta.novelty_share``); all 0: the map is the graph's output alone, the score the tiles'."""

    fine: float = 0.0
    coarse: float = 0.0
    spread: str = "mean"
    both: float = 0.0
    # Share of the image score taken by the agreement peak (``blend``); the rest is the tile score.
    score_weight: float = 0.0

    def add(self, anomaly: np.ndarray, grid: TileGrid, fine_scores: np.ndarray,
            fine_positions: np.ndarray | None = None, coarse_grid: TileGrid | None = None,
            coarse_scores: np.ndarray | None = None, coarse_positions: np.ndarray | None = None) -> np.ndarray:
        """``anomaly`` plus the shares; positions are the scored tiles' indices in their grid
        (default: every tile, in grid order)."""
        return self.blend(anomaly, grid, fine_scores, fine_positions, coarse_grid, coarse_scores, coarse_positions)[0]

    def blend(self, anomaly: np.ndarray, grid: TileGrid, fine_scores: np.ndarray,
              fine_positions: np.ndarray | None = None, coarse_grid: TileGrid | None = None,
              coarse_scores: np.ndarray | None = None,
              coarse_positions: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """(``anomaly`` plus the shares, the agreement peak): the highest value over the map of the
        lower of the two spreads, the strongest place where the part is novel at both scales (0.0
        without a coarse pass, or when ``score_weight`` is 0 and nothing reads it)."""
        fine_positions = np.arange(len(fine_scores)) if fine_positions is None else fine_positions
        if coarse_scores is not None and coarse_positions is None:
            coarse_positions = np.arange(len(coarse_scores))
        has_fine = len(fine_scores) > 0
        has_coarse = coarse_grid is not None and coarse_scores is not None and len(coarse_scores) > 0
        need_both = (self.both > 0 or self.score_weight > 0) and has_fine and has_coarse
        fine_map = coarse_map = None
        if has_fine and (self.fine > 0 or need_both):
            fine_map = spread_scores(fine_scores, fine_positions, grid, anomaly.shape, self.spread)
        if has_coarse and (self.coarse > 0 or need_both):
            coarse_map = spread_scores(coarse_scores, coarse_positions, coarse_grid, anomaly.shape, self.spread)
        out, peak = anomaly, 0.0
        if self.fine > 0 and fine_map is not None:
            out = out + self.fine * fine_map
        if self.coarse > 0 and coarse_map is not None:
            out = out + self.coarse * coarse_map
        if need_both:
            lower = np.minimum(fine_map, coarse_map)
            if self.both > 0:
                out = out + self.both * lower
            peak = float(lower.max()) if self.score_weight > 0 else 0.0
        return out, peak


def image_score(anomaly_map: np.ndarray, tile_scores: np.ndarray, map_weight: float = 0.5,
                coarse_scores: np.ndarray | None = None, fine_top_k: int = 1, agreement_peak: float = 0.0,
                agreement_weight: float = 0.0) -> float:
    """``map_weight`` x peak of the smoothed map + the rest x the tile score: the mean of the
    ``fine_top_k`` strongest tile scores (``ModelMeta.fine_top_k``). With coarse tile scores, the
    tile part is the mean of that and the strongest coarse score, and ``agreement_weight`` of it
    (``ModelMeta.both_scales_score_weight``) is replaced by ``agreement_peak``, the strongest place
    novel at both scales (``NoveltyShare.blend``)."""
    tiles = float(np.sort(tile_scores.ravel())[-fine_top_k:].mean()) if tile_scores.size else 0.0
    if coarse_scores is not None and coarse_scores.size:
        tiles = 0.5 * (tiles + float(coarse_scores.max()))
        if agreement_weight > 0:
            tiles = (1.0 - agreement_weight) * tiles + agreement_weight * agreement_peak
    if map_weight <= 0.0:
        return tiles
    smooth = cv2.GaussianBlur(anomaly_map, (0, 0), SCORE_SMOOTH_SIGMA)
    return map_weight * float(smooth.max()) + (1.0 - map_weight) * tiles


@dataclass(frozen=True)
class LinePositions:
    """The line's tile grids that a model's per-position memory was fitted on (``ModelMeta.line_grids``,
    ``engines.tile_memory.PositionMemory``). Such a model's graph scores each tile against every
    position's bank: score columns ``2 + p`` for the ``len(fine)`` full-scale positions, then the
    ``len(coarse)`` half-scale ones, after the two shared memories' columns. A tile's own position is
    its ``tile_index`` (coarse tiles count from ``len(fine)``), so its column is ``2 + tile_index``."""

    fine: TileGrid
    coarse: TileGrid

    @property
    def columns(self) -> int:
        return 2 + len(self.fine) + len(self.coarse)

    def matches(self, grid: TileGrid, coarse_grid: TileGrid | None) -> bool:
        return grid == self.fine and coarse_grid == self.coarse

    def scores(self, tile_scores: np.ndarray, tile_index: np.ndarray) -> np.ndarray:
        """``(N, columns)`` scores -> ``(N, 2)``: each tile's novelty against its own position's
        bank, in both columns (``split_scores`` reads the first for full-scale tiles, the second for
        half-scale ones)."""
        picked = tile_scores[np.arange(len(tile_scores)), 2 + np.asarray(tile_index, np.int64)]
        return np.stack([picked, picked], axis=1)

    @classmethod
    def from_dict(cls, d: dict) -> "LinePositions":
        return cls(TileGrid.from_dict(d["fine"]), TileGrid.from_dict(d["coarse"]))

    def to_dict(self) -> dict:
        return {"fine": self.fine.to_dict(), "coarse": self.coarse.to_dict()}


@dataclass(frozen=True)
class MapRule:
    """How a model turns its tiles' maps and scores into a part's defect map and image score: the
    fields of its sidecar that say so (``ModelMeta.map_rule()``), read alike by the detector and
    the line (``pipeline.processing.decide``). The defaults are a folder's without a tile memory,
    from before any of the later fields existed."""

    map_score_weight: float = 0.5  # ModelMeta.map_score_weight: the map's peak's share of the image score
    novelty: NoveltyShare = NoveltyShare()  # ModelMeta.novelty_share()
    coarse_map_weight: float = 0.0  # ModelMeta.coarse_map_weight
    fine_top_k: int = 1  # ModelMeta.fine_top_k
    map_blur_sigma: float = 0.0  # ModelMeta.map_blur_sigma
    positions: LinePositions | None = None  # ModelMeta.line_grids: a per-position memory's grids

    def line_scores(self, tile_scores: np.ndarray, tile_index: np.ndarray, grid: TileGrid,
                    coarse_grid: TileGrid | None) -> np.ndarray:
        """The tile scores a part on a line is judged by: with a per-position memory fitted on this
        very grid, each tile's novelty against the OK tiles of its own position
        (:meth:`LinePositions.scores`); otherwise the shared memories' scores as they are."""
        p = self.positions
        if (p is None or tile_scores.ndim != 2 or tile_scores.shape[1] != p.columns
                or not p.matches(grid, coarse_grid)):
            return tile_scores
        return p.scores(tile_scores, tile_index)

    def finish(self, stitched: np.ndarray, grid: TileGrid, fine_scores: np.ndarray, coarse_maps: np.ndarray,
               fine_positions: np.ndarray | None = None, coarse_grid: TileGrid | None = None,
               coarse_scores: np.ndarray | None = None,
               coarse_positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """The stitched full-scale map plus the novelty shares and the coarse tiles' maps ->
        (the finished map, smoothed; the same before smoothing; the agreement peak). Positions are
        the scored tiles' indices in their grid (default: every tile, in grid order)."""
        anomaly, agreement = self.novelty.blend(stitched, grid, fine_scores, fine_positions, coarse_grid,
                                                coarse_scores, coarse_positions)
        anomaly = add_coarse_map(anomaly, coarse_maps, coarse_grid, self.coarse_map_weight, coarse_positions)
        return blur_map(anomaly, self.map_blur_sigma), anomaly, agreement

    def score(self, anomaly: np.ndarray, fine_scores: np.ndarray, coarse_scores: np.ndarray | None,
              agreement: float) -> float:
        """The image score of a finished map (:meth:`finish`) and the part's tile scores, with this
        rule's weights (:func:`image_score`)."""
        return image_score(anomaly, fine_scores, self.map_score_weight, coarse_scores, self.fine_top_k, agreement,
                           self.novelty.score_weight)

    def region_score(self, anomaly: np.ndarray, region: np.ndarray, grid: TileGrid, fine_scores: np.ndarray,
                     fine_positions: np.ndarray, coarse_grid: TileGrid | None = None,
                     coarse_scores: np.ndarray | None = None, coarse_positions: np.ndarray | None = None) -> float:
        """The part's score from ``region`` alone (a boolean mask on the canonical part): the
        finished map inside it, the scores of the tiles that overlap it, each other tile at the
        part's lowest score at its scale (the part as plain everywhere else as its plainest tile),
        and the agreement peak inside it. On the part score's scale and never above it, so that
        a region reads against the image threshold like the part does."""
        fine = _plain_outside(fine_scores, tiles_touching(region, grid, fine_positions))
        coarse = None
        if coarse_grid is not None and coarse_scores is not None and len(coarse_scores):
            coarse = _plain_outside(coarse_scores, tiles_touching(region, coarse_grid, coarse_positions))
        agreement = 0.0
        if self.novelty.score_weight > 0 and coarse is not None and len(fine):
            lower = np.minimum(spread_scores(fine, fine_positions, grid, anomaly.shape, self.novelty.spread),
                               spread_scores(coarse, coarse_positions, coarse_grid, anomaly.shape,
                                             self.novelty.spread))
            agreement = float(lower[region].max()) if region.any() else 0.0
        return self.score(np.where(region, anomaly, 0.0).astype(np.float32), fine, coarse, agreement)


def _plain_outside(scores: np.ndarray, touching: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float32)
    return np.where(touching, scores, scores.min()) if len(scores) else scores


def tiles_touching(region: np.ndarray, grid: TileGrid, positions: np.ndarray) -> np.ndarray:
    """For each tile of ``grid`` at ``positions``, whether it overlaps ``region`` (a boolean mask
    on the canonical part; resized to the grid's image for a coarse grid, keeping any pixel)."""
    mask = region.astype(np.float32)
    if mask.shape != (grid.height, grid.width):
        mask = cv2.resize(mask, (grid.width, grid.height), interpolation=cv2.INTER_AREA)
    origins = grid.origins
    t = grid.tile
    return np.array([bool((mask[y:y + t, x:x + t] > 0).any()) for y, x in (origins[int(i)] for i in positions)],
                    bool)


def add_coarse_map(anomaly: np.ndarray, coarse_maps: np.ndarray, coarse_grid: TileGrid | None, weight: float,
                   positions: np.ndarray | None = None) -> np.ndarray:
    """``anomaly`` plus ``weight`` x the coarse pass's tiles' defect maps (a model's coarse-map
    network's, ``engines.backends.base.map_coarse_tiles``), stitched on
    ``coarse_grid`` (tiles not listed in ``positions`` count as 0; default: every tile, in grid
    order) and resized to ``anomaly``'s shape. A coarse tile sees twice the stretch of the part, so
    wide, faint regions show on its map that a full-scale tile sees only a piece of."""
    if weight <= 0 or coarse_grid is None or not len(coarse_maps):
        return anomaly
    t = coarse_grid.tile
    positions = np.arange(len(coarse_maps)) if positions is None else np.asarray(positions, np.int64)
    full = np.zeros((len(coarse_grid), 1, t, t), np.float32)
    full[positions] = np.asarray(coarse_maps, np.float32).reshape(-1, 1, t, t)
    small = stitch(full, coarse_grid)
    if small.shape != anomaly.shape:
        small = cv2.resize(small, (anomaly.shape[1], anomaly.shape[0]), interpolation=cv2.INTER_LINEAR)
    return anomaly + weight * small


def blur_map(anomaly: np.ndarray, sigma: float) -> np.ndarray:
    """The finished defect map smoothed with a Gaussian of ``sigma`` px (``ModelMeta.map_blur_sigma``;
    0: as it is). The network answers pixel by pixel, so a real defect's region is covered in
    patches; smoothing evens its cover before the pixel threshold and the metrics read it. On the
    shipped model's development split, sigma 2: AUPRO 0.846 -> 0.856 (both halves of the split, every
    defect type but uneven regions, -0.002), pixel AUROC unchanged."""
    if sigma <= 0:
        return anomaly
    return cv2.GaussianBlur(np.ascontiguousarray(anomaly, np.float32), (0, 0), float(sigma))


@dataclass
class PartTiles:
    """One part's tiles as inference returns them: their defect maps ``(N, 1, t, t)``, their
    scores ``(N,)`` or ``(N, columns)``, where each lies, and the part's mask on the canonical
    grid. Full-scale tiles come first, ``tile_index`` their position in ``grid``; the tiles of a
    coarse (downscaled) pass follow, on ``coarse_grid``, indexed after the fine grid's positions."""

    maps: np.ndarray
    scores: np.ndarray
    tile_index: np.ndarray
    grid: TileGrid
    part_mask: np.ndarray
    coarse_grid: TileGrid | None = None

    @property
    def n_fine(self) -> int:
        return int((np.asarray(self.tile_index) < len(self.grid)).sum())

    @property
    def fine_positions(self) -> np.ndarray:
        return np.asarray(self.tile_index)[:self.n_fine]

    @property
    def coarse_positions(self) -> np.ndarray:
        return np.asarray(self.tile_index)[self.n_fine:] - len(self.grid)

    def split_scores(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """:func:`split_scores` of ``scores`` in this part's tile order."""
        return split_scores(scores, self.n_fine)


def split_scores(scores: np.ndarray, n_fine: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores of a batch whose first ``n_fine`` tiles are the fine pass and the rest the coarse
    pass -> (fine tile scores, coarse tile scores or None). A two-column score (model with a coarse
    memory) gives column 0 for fine tiles and column 1 for coarse ones."""
    if scores.ndim == 1:
        return scores[:n_fine], None
    return scores[:n_fine, 0], scores[n_fine:, 1]


@dataclass
class PartScore:
    """A part scored by :func:`score_part`: its finished defect map over the inspected area
    (smoothed as the rule says), the same before smoothing, the part's score, and what scoring a
    region of it alone needs (:meth:`region_score`)."""

    anomaly: np.ndarray
    sharp: np.ndarray
    score: float
    inspect: np.ndarray
    part: PartTiles
    rule: "MapRule"
    fine_scores: np.ndarray
    coarse_scores: np.ndarray | None

    def region_score(self, region: np.ndarray) -> float:
        """The part's score from ``region`` alone (:meth:`MapRule.region_score`)."""
        p = self.part
        return self.rule.region_score(self.anomaly, region, p.grid, self.fine_scores, p.fine_positions,
                                      p.coarse_grid, self.coarse_scores, p.coarse_positions)


def score_part(part: PartTiles, rule: MapRule = MapRule(), erode_px: int = 0) -> PartScore:
    """The model's rule applied to one part: stitch the kept full-scale tiles' maps (skipped tiles
    count as 0), finish the map (novelty shares, the coarse tiles' maps, smoothing), keep it inside
    the part less ``erode_px`` px at its outline, and score it with the tile scores (each tile
    against its own position's OK tiles where the model has a per-position memory of this grid)."""
    t = part.grid.tile
    n_fine = part.n_fine
    fine_scores, coarse_scores = part.split_scores(rule.line_scores(part.scores, part.tile_index, part.grid,
                                                                    part.coarse_grid))
    full = np.zeros((len(part.grid), 1, t, t), np.float32)
    full[part.fine_positions] = part.maps[:n_fine].reshape(-1, 1, t, t)
    anomaly, sharp, agreement = rule.finish(stitch(full, part.grid), part.grid, fine_scores, part.maps[n_fine:],
                                            part.fine_positions, part.coarse_grid, coarse_scores,
                                            part.coarse_positions)
    inspect = part.part_mask > 0
    if erode_px > 0:
        k = 2 * erode_px + 1
        inspect = cv2.erode(inspect.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    anomaly = anomaly * inspect
    score = rule.score(anomaly, fine_scores, coarse_scores, agreement)
    return PartScore(anomaly, sharp, score, inspect, part, rule, fine_scores, coarse_scores)
