"""The per-frame work of the preprocess and stitch stages, as pure functions (no sockets)."""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.log import get
from pipeline.config import BeltConfig, DecisionConfig, PreprocessConfig
from pipeline.vision.belt import BeltModel
from pipeline.vision.defects import find_defects, strongest_region
from pipeline.vision.locate import (corners_outside, cut_by_edge, locate_template, part_at, refine_ecc,
                                   silhouette_in_view, small_to_full)
from pipeline.vision.rectify import canonical_corners, homography_to_canonical, rectify, to_camera
from pipeline.vision.camera import kind_mismatch
from pipeline.vision.scoring import MapRule, PartTiles, score_part
from pipeline.vision.tiling import TileGrid, downscale, extract_tiles, scaled_shape, tile_grid


@dataclass
class Prepared:
    verdict: str | None                 # None: tiles to infer; else NO_PART / ERROR
    reason: str = ""
    tiles: np.ndarray | None = None     # (N, C, T, T) uint8, only tiles with enough part
    # (N,) int32 positions in the grid; with a coarse pass, its tiles follow with len(grid) + their
    # position in the coarse grid
    tile_index: np.ndarray | None = None
    grid: TileGrid | None = None
    coarse_grid: TileGrid | None = None  # with a coarse pass
    H: np.ndarray | None = None         # camera -> canonical
    part_mask: np.ndarray | None = None  # (h, w) uint8 canonical

    @property
    def coarse(self) -> np.ndarray:
        """Which tiles are the coarse pass's (they follow the fine ones)."""
        return self.tile_index >= len(self.grid)

    def part(self, maps: np.ndarray, scores: np.ndarray) -> PartTiles:
        """These tiles with the maps and scores inference gave them."""
        return PartTiles(maps, scores, self.tile_index, self.grid, self.part_mask, self.coarse_grid)


class Preprocessor:
    def __init__(self, cfg: PreprocessConfig, tile: int = 128, channels: int = 1, coarse_scale: float = 0.0) -> None:
        """``coarse_scale`` > 0 (the model's ``ModelMeta.coarse_scale``): also tile the part at that scale."""
        self.cfg = cfg
        self.tile = tile
        self.channels = channels
        self.coarse_scale = coarse_scale
        self.wh = (int(cfg.canonical_size[0]), int(cfg.canonical_size[1]))
        self.belt = BeltModel.from_config(cfg.belt)
        self.needs_colour = cfg.mode == "silhouette" and self.belt.needs_colour()  # parts told by colour
        # calibrate_line fits the belt in template mode too; a hand-written config may leave it unset
        self.belt_fitted = cfg.belt != BeltConfig()
        self.template = None
        if cfg.mode == "template":
            tpl = cv2.imread(cfg.template, cv2.IMREAD_GRAYSCALE)
            if tpl is None:
                raise ValueError(f"preprocess.template: cannot read {cfg.template}; re-run calibrate_line")
            self.template = cv2.resize(tpl, self.wh, interpolation=cv2.INTER_AREA)
        self.canonical_corners = canonical_corners(self.wh)
        self.grid = tile_grid(self.wh[1], self.wh[0], tile, cfg.tile_overlap)
        self.coarse_grid = None
        if coarse_scale > 0:
            self.coarse_grid = tile_grid(*scaled_shape(self.wh[1], self.wh[0], coarse_scale), tile, cfg.tile_overlap)

    @classmethod
    def for_model(cls, cfg: PreprocessConfig, meta) -> "Preprocessor":
        """The preprocessing a line runs for the model ``meta`` (an ``engines.artifact.ModelMeta``):
        its tile size, channels and coarse pass. Everything that scores parts as the line does
        builds it here, so calibration, benchmarks and the stage cannot drift apart. A model whose
        per-position memory was fitted on other grids than this line's is said so on stderr: the
        line then scores tiles against the shared memories."""
        prep = cls(cfg, meta.tile_size, meta.in_channels, meta.coarse_scale)
        positions = meta.line_positions()
        if positions is not None and not positions.matches(prep.grid, prep.coarse_grid):
            get("note").info(f"the model's per-position memory was fitted for a {positions.fine.width}x"
                  f"{positions.fine.height} canonical part, this line's is {prep.wh[0]}x{prep.wh[1]} (or its tile "
                  "overlap differs): tiles are scored against the shared memories; refit with export_model "
                  "--memory-positions for this line")
        return prep

    def __call__(self, frame: np.ndarray) -> Prepared:
        if frame is None or frame.size == 0 or frame.ndim not in (2, 3) or frame.dtype != np.uint8:
            shape = None if frame is None else (frame.shape, str(frame.dtype))
            return Prepared("ERROR", f"malformed frame {shape}; expected uint8 (H, W) or (H, W, 3)")
        if frame.ndim == 3 and frame.shape[2] not in (1, 3):
            return Prepared("ERROR", f"frame has {frame.shape[2]} channels; expected 1 or 3")
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[..., 0]
        if min(frame.shape[:2]) < 16:
            return Prepared("ERROR", f"frame is {frame.shape[1]}x{frame.shape[0]}; too small")
        mismatch = kind_mismatch(frame, self.cfg.camera, self.needs_colour)
        if mismatch:
            return Prepared("ERROR", mismatch)
        if self.cfg.mode == "template":
            found = locate_template(frame, self.template, self.cfg.template_scales, self.cfg.downscale,
                                    self.cfg.template_min_score)
            if found is None:
                return self._unmatched(frame)
            H = homography_to_canonical(found[0], self.wh)
            gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            H = refine_ecc(gray, self.template, H)
            cut = corners_outside(to_camera(self.canonical_corners, H), frame.shape)
            if cut:
                return Prepared("ERROR", self._cut_reason(f"the matched part reaches past the frame's {' and '.join(cut)} "
                                                          "edge"))
            part_mask = np.full((self.wh[1], self.wh[0]), 255, np.uint8)
        else:
            bgr = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            seen = silhouette_in_view(bgr, self.belt, self.cfg.downscale)
            found = part_at(seen, self.cfg.min_part_area, self.wh, self.cfg.downscale)
            if found is None:
                return self._no_part(seen)
            corners, silhouette = found
            contact, edges = cut_by_edge(bgr, silhouette, self.belt, self.cfg.downscale)
            if contact >= self.cfg.max_edge_contact:
                return Prepared("ERROR", self._cut_reason(
                    f"its surface lies on the frame's {' and '.join(edges)} edge for {contact:.1%} of its outline "
                    f"(preprocess.max_edge_contact {self.cfg.max_edge_contact})"))
            H = homography_to_canonical(corners, self.wh)
            part_mask = rectify(silhouette * 255, H @ small_to_full(self.cfg.downscale), self.wh, cv2.INTER_NEAREST)
        canonical = rectify(frame, H, self.wh)
        if self.channels == 1 and canonical.ndim == 3:
            canonical = cv2.cvtColor(canonical, cv2.COLOR_BGR2GRAY)
        elif self.channels == 3 and canonical.ndim == 2:
            canonical = cv2.cvtColor(canonical, cv2.COLOR_GRAY2RGB)
        elif self.channels == 3:
            canonical = cv2.cvtColor(canonical, cv2.COLOR_BGR2RGB)
        tiles, keep = self._tiles(canonical, part_mask, self.grid)
        if keep.size == 0:
            return Prepared("ERROR", "part located, but no tile holds preprocess.min_tile_part_fraction of it: "
                                     "check preprocess.canonical_size and the belt model")
        if self.coarse_grid is not None:
            small_tiles, small_keep = self._tiles(downscale(canonical, self.coarse_scale),
                                                  downscale(part_mask, self.coarse_scale), self.coarse_grid)
            tiles = np.concatenate([tiles, small_tiles])
            keep = np.concatenate([keep, len(self.grid) + small_keep])
        return Prepared(None, "", tiles, keep, self.grid, self.coarse_grid, H.astype(np.float64), part_mask)

    @staticmethod
    def _cut_reason(what: str) -> str:
        return (f"part not wholly in view: {what}; the part beyond it would go uninspected. Check the "
                "trigger timing and the camera's field of view")

    def _seen_area(self, seen: tuple[np.ndarray, int] | None) -> int:
        """Camera px of what ``silhouette_in_view`` saw, when it is at least ``min_object_fraction``
        of ``min_part_area`` (something on the belt); else 0 (an empty belt)."""
        area = 0 if seen is None else int(round(float(seen[0].sum()) / self.cfg.downscale**2))
        return area if area and area >= self.cfg.min_object_fraction * self.cfg.min_part_area else 0

    def _unmatched(self, frame: np.ndarray) -> Prepared:
        """Template mode, no match: NO_PART for an empty belt; ERROR when the belt model sees
        something there. A part unlike the template (broken, soiled, turned over, another product)
        is the part that most needs inspecting and must not pass as no part. Without a fitted belt
        model (a hand-written config) nothing tells the two apart: NO_PART, as the match says."""
        no_match = "no template match above preprocess.template_min_score"
        if self.belt_fitted:
            bgr = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            area = self._seen_area(silhouette_in_view(bgr, self.belt, self.cfg.downscale))
            if area:
                return Prepared("ERROR", f"something of {area} px in view, but {no_match} "
                                         f"({self.cfg.template_min_score}): a part unlike the template (broken, "
                                         "turned over, another product) or partly in view; check this frame")
        return Prepared("NO_PART", no_match)

    def _no_part(self, seen: tuple[np.ndarray, int] | None) -> Prepared:
        """NO_PART for a belt with nothing on it; ERROR when something was seen (``seen``: what
        ``silhouette_in_view`` found) but is too small for a part: a part the belt model did not
        tell whole from the belt must not pass as no part."""
        area = self._seen_area(seen)
        if area:
            return Prepared("ERROR", f"something of {area} px in view, under preprocess.min_part_area "
                                     f"({self.cfg.min_part_area}): a part not told whole from the belt, or not "
                                     "wholly in view; check this frame, the lighting and the belt model")
        return Prepared("NO_PART", "no part silhouette larger than preprocess.min_part_area")

    def _tiles(self, image: np.ndarray, part_mask: np.ndarray, grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
        """The tiles of ``grid`` with at least ``min_tile_part_fraction`` of part, and their positions."""
        fractions = extract_tiles(part_mask, grid).reshape(len(grid), -1).mean(axis=1) / 255.0
        keep = np.nonzero(fractions >= self.cfg.min_tile_part_fraction)[0].astype(np.int32)
        return extract_tiles(image, grid)[keep], keep


@dataclass
class Verdict:
    verdict: str
    score: float
    defects: list = field(default_factory=list)
    anomaly_map: np.ndarray | None = None


def decide(part: PartTiles, H: np.ndarray, cfg: DecisionConfig, pixel_threshold: float, image_threshold: float,
           rule: MapRule = MapRule()) -> Verdict:
    """A part's verdict: scored by the model's ``rule`` (:func:`pipeline.vision.scoring.score_part`,
    ``ModelMeta.map_rule()``), NG at or above ``image_threshold``; an NG part's defects are the
    regions of its map at the pixel threshold, each at its own extent and with the part's score
    from that region alone (an NG part with none there gets its strongest region, marked as below
    the threshold), in camera pixels through ``H``."""
    scored = score_part(part, rule, cfg.part_erode_px)
    if scored.score < image_threshold:
        return Verdict("OK", scored.score, [], scored.anomaly)
    anomaly, inspect = scored.anomaly, scored.inspect
    defects = find_defects(anomaly, inspect, H, pixel_threshold, cfg.min_defect_area, cfg.merge_gap_px,
                           score_map=scored.sharp, part_score=scored.region_score)
    if not defects:  # NG on its score, nothing at the pixel threshold: still say where to look
        defects = strongest_region(anomaly, inspect, H, cfg.merge_gap_px, score_map=scored.sharp,
                                   part_score=scored.region_score)
    return Verdict("NG", scored.score, defects, anomaly)
