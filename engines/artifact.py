"""Model artifacts: a folder holding ``model.onnx`` and ``model.json`` (the metadata sidecar)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.vision.scoring import SPREADS, LinePositions, MapRule, NoveltyShare

ONNX_NAME = "model.onnx"
META_NAME = "model.json"
# A model folder's coarse-map network, itself a model folder (engines.export.add_coarse_map_net).
COARSE_MAP_DIR = "coarse_map"
META_VERSION = 1
# The tile memories: model attributes, state-dict prefixes and ONNX node-name scopes (engines.tile_memory).
# Here, without torch, so that the TensorRT builder can select their layers.
MEMORY_NAMES = ("memory", "coarse_memory")
# ... and the per-position memory of one line's grid (engines.tile_memory.PositionMemory).
POSITION_MEMORY_NAME = "position_memory"
ALL_MEMORY_NAMES = MEMORY_NAMES + (POSITION_MEMORY_NAME,)  # fitted after training, never trained or averaged
MEMORY_SCOPES = tuple(f"/{name}/" for name in ALL_MEMORY_NAMES)


# The Gaussian (sigma, px) that smooths a new folder's finished map (ModelMeta.map_blur_sigma). Of
# 1, 1.5, 2, 3, 4 and 8 on the shipped model's development split, 1.5 to 2 gave the best AUPRO
# (0.846 -> 0.856), on both halves of the split; 2 was the best of 1, 2 and 4 on three other folders.
# Export writes it; a sidecar or --map-blur-sigma may say up to the max.
MAP_BLUR_SIGMA = 2.0
MAP_BLUR_SIGMA_MAX = 32.0


def map_blur_sigma_problem(sigma: object) -> str | None:
    """What is wrong with ``sigma`` as a ``map_blur_sigma``, or None: the one check for the sidecar
    and for ``export_model --map-blur-sigma``."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma <= MAP_BLUR_SIGMA_MAX:
        return (f"use a number of pixels from 0 to {MAP_BLUR_SIGMA_MAX:g} (0: the map is not smoothed; "
                f"{MAP_BLUR_SIGMA:g} is export's default)")
    return None


class ArtifactError(ValueError):
    pass


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(data: bytes) -> dict[int, list[bytes]]:
    """The protobuf message ``data``'s fields: number -> payloads of its length-delimited
    occurrences (empty for other wire types); ValueError when the framing is broken."""
    out: dict[int, list[bytes]] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, i = _varint(data, i)
            payload = b""
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            payload = b""
        elif wire == 2:
            n, i = _varint(data, i)
            payload = data[i:i + n]
            i += n
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(data):
            raise ValueError("a field runs past the end of the file")
        out.setdefault(number, []).append(payload)
    return out


def check_onnx_file(path: str | Path) -> None:
    """A quick structural check of an ONNX file without importing onnx (which takes most of a second):
    the protobuf framing of the model and of its graph holds to the last byte, and the graph has
    nodes, inputs and outputs. Catches a truncated, empty or foreign file; ArtifactError otherwise."""
    path = Path(path)
    fix = f"export it again (export_model ... --out {path.parent})"
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; {fix}")
    try:
        model = _fields(path.read_bytes())
        (graph,) = model.get(7) or [None]  # ModelProto.graph
        if graph is None or 8 not in model:  # and opset_import
            raise ValueError("no graph or opset")
        parts = _fields(graph)
        if not all(parts.get(k) for k in (1, 11, 12)):  # GraphProto.node, input, output
            raise ValueError("the graph lacks nodes, inputs or outputs")
    except ValueError as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc}); the file is damaged or incomplete: {fix}") from None


def read_onnx(path: str | Path, weights: bool = True):
    """The parsed ONNX model at ``path``; ArtifactError naming the file and the fix when it is
    missing, truncated or not ONNX at all. ``weights=False`` skips external weight files."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; export the model again (export_model ... --out {path.parent})")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as exc:  # protobuf raises its own DecodeError; a truncated file, others
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(exc).__name__}); the file is damaged or "
                            f"incomplete: export it again (export_model ... --out {path.parent})") from exc


@dataclass
class ModelMeta:
    arch: str  # "tiny_unet" or "ae_ssim"
    width: int
    in_channels: int
    tile_size: int = 128
    mean: float = 0.5
    std: float = 0.25
    pixel_threshold: float = 0.5
    image_threshold: float = 0.5
    # Image score = w * (peak of the smoothed map) + (1 - w) * (strongest tile score). Models with a
    # tile memory use 0: its tile score ranks whole images far better than the map's peak does.
    map_score_weight: float = 0.5
    # > 0: the model also has a coarse tile memory. Each image is then tiled a second time at this
    # scale (see ``pipeline.vision.tiling.downscale``); those tiles' second score column is their
    # novelty against the coarse memory, and the tile part of the image score is the mean of the
    # strongest fine and the strongest coarse tile score. 0: one pass, one score per tile.
    coarse_scale: float = 0.0
    # The fine part of the image score is the mean of the ``fine_top_k`` strongest full-scale tile
    # scores (1: the strongest; folders from before the field). Export sets 2 for a model with both
    # memories (``engines.tile_memory.FINE_TOP_K``).
    fine_top_k: int = 1
    # Share of the coarse tiles' novelty added to the stitched map, outside the graph (a coarse tile
    # covers several fine ones, so its score is spread over its area and resized; see
    # ``pipeline.vision.scoring.spread_scores``). 0: the map is the fine tiles' graph output alone.
    coarse_map_share: float = 0.0
    # > 0: the model has a coarse-map network, the model folder ``coarse_map/`` inside this one
    # (``export_model --coarse-map``). The backends run it on the coarse pass's tiles; their maps,
    # stitched on the coarse grid and resized, are added to the defect map at this weight
    # (``pipeline.vision.scoring.add_coarse_map``). 0: the coarse tiles' maps are not used.
    coarse_map_weight: float = 0.0
    # Share of the full-scale tiles' novelty added to the stitched map outside the graph. 0 for
    # models exported before this field existed, whose graph blends it into each tile's map instead
    # (``extra.memory_map_share``); the graph cannot take the minimum over neighbouring tiles.
    fine_map_share: float = 0.0
    # How both shares are spread over the map: "mean" or "min" (``pipeline.vision.scoring.SPREADS``).
    novelty_spread: str = "mean"
    # Share of the lower of the two spread novelty maps (full-scale and coarse tiles) added to the
    # map: a pixel gains it only where the part is novel at both scales. The full-scale tiles
    # localise, the coarse ones confirm. 0 for models exported before this field existed.
    both_scales_map_share: float = 0.0
    # Share of the image score taken by the strongest place where the part is novel at both scales
    # (the peak of the lower of the two spread novelty maps); the rest is the tile score
    # (``engines.detector.image_score``). 0 for models exported before this field existed.
    both_scales_score_weight: float = 0.0
    # Sigma (px) of the Gaussian that smooths the finished defect map, before the pixel threshold,
    # the defects and the image score read it (``pipeline.vision.scoring.blur_map``). Export writes
    # ``MAP_BLUR_SIGMA`` (2); 0 for folders exported before this field existed.
    map_blur_sigma: float = 0.0
    # The line tile grids ({"fine": TileGrid dict, "coarse": ...}) of a per-position memory
    # (``export_model --memory-positions``): on a line with exactly these grids each tile is scored
    # against its own position's OK tiles (``pipeline.vision.scoring.LinePositions``). Empty: none.
    line_grids: dict = field(default_factory=dict)
    training_data_hash: str = ""
    training_command: str = ""
    precision: str = "fp32"
    opset: int = 17
    extra: dict = field(default_factory=dict)
    version: int = META_VERSION

    def normalise(self, tiles_u8: np.ndarray) -> np.ndarray:
        """uint8 tiles ``(N, C, H, W)`` -> float32 network input."""
        return ((tiles_u8.astype(np.float32) / 255.0) - self.mean) / self.std

    def save(self, folder: Path) -> Path:
        path = Path(folder) / META_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "ModelMeta":
        path = Path(folder) / META_NAME
        if not path.is_file():
            raise ArtifactError(f"{path}: metadata sidecar missing; a model folder needs {ONNX_NAME} and "
                                f"{META_NAME} (re-export with `export_model`)")
        raw = json.loads(path.read_text())
        if raw.get("version") != META_VERSION:
            raise ArtifactError(f"{path}: metadata version {raw.get('version')} but this code reads "
                                f"{META_VERSION}; re-export the model with this version")
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ArtifactError(f"{path}: unknown metadata field(s) {sorted(unknown)}")
        meta = cls(**raw)
        if isinstance(meta.fine_top_k, bool) or not isinstance(meta.fine_top_k, int) or meta.fine_top_k < 1:
            raise ArtifactError(f"{path}: fine_top_k is {meta.fine_top_k!r}; use a whole number of at least 1 "
                                "(1: the image score reads the strongest full-scale tile)")
        for name in ("fine_map_share", "coarse_map_share", "both_scales_map_share"):
            value = getattr(meta, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ArtifactError(f"{path}: {name} is {value!r}; use a number of at least 0 (0: no share)")
        problem = map_blur_sigma_problem(meta.map_blur_sigma)
        if problem:
            raise ArtifactError(f"{path}: map_blur_sigma is {meta.map_blur_sigma!r}; {problem}")
        w = meta.both_scales_score_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise ArtifactError(f"{path}: both_scales_score_weight is {w!r}; use a number from 0 to 1 "
                                "(0: the image score reads the tile scores alone)")
        if meta.line_grids:
            try:
                LinePositions.from_dict(meta.line_grids)
            except (KeyError, TypeError, ValueError) as exc:
                raise ArtifactError(f"{path}: line_grids is not a pair of tile grids ({exc}); re-export with "
                                    "`export_model --memory-positions` or set it to {}") from None
        if meta.novelty_spread not in SPREADS:
            raise ArtifactError(f"{path}: novelty_spread is {meta.novelty_spread!r}; use one of {list(SPREADS)}")
        return meta

    def novelty_share(self) -> NoveltyShare:
        """What of the tile novelty the stitched map adds, outside the graph, and what of the
        two scales' agreement the image score reads."""
        return NoveltyShare(self.fine_map_share, self.coarse_map_share, self.novelty_spread, self.both_scales_map_share,
                            self.both_scales_score_weight)

    def map_rule(self) -> MapRule:
        """How this model's tile maps and scores become a part's map and score (the detector and
        the line read it alike)."""
        return MapRule(self.map_score_weight, self.novelty_share(), self.coarse_map_weight, self.fine_top_k,
                       self.map_blur_sigma, self.line_positions())

    def line_positions(self) -> LinePositions | None:
        """The grids of this model's per-position memory, or None without one."""
        return LinePositions.from_dict(self.line_grids) if self.line_grids else None


def model_paths(folder: str | Path) -> tuple[Path, ModelMeta]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: --model must be a model folder holding {ONNX_NAME} and {META_NAME}")
    onnx_path = folder / ONNX_NAME
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path}: missing; export the checkpoint with `export_model`")
    return onnx_path, ModelMeta.load(folder)
