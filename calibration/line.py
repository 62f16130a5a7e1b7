"""Line calibration from a handful of frames of OK parts on the running belt.

Fits the belt colour model, measures the canonical part size, chooses the alignment mode (template
when OK parts look alike, silhouette when their texture differs part to part), and sets the
operating threshold from the model's own scores on these OK parts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from engines.artifact import model_paths
from engines.backends import load_backend
from engines.backends.base import map_coarse_tiles
from pipeline.config import (BeltConfig, DecisionConfig, InferenceConfig, LineConfig, PreprocessConfig,
                             commented_yaml)
from pipeline.processing import Preprocessor
from pipeline.vision.scoring import score_part
from pipeline.sources import DirSource, image_files
from pipeline.vision.belt import BeltModel, fit_belt, shading_map
from pipeline.vision.camera import MONO_MAX_CHANNEL_DIFF, channel_spread, kind_mismatch
from pipeline.vision.locate import cut_by_edge, locate_silhouette, part_silhouette, shrink
from pipeline.vision.rectify import homography_to_canonical, rectify

TEMPLATE_MIN_NCC = 0.8   # mean similarity of OK parts to their median above which template mode is used
THRESHOLD_MARGIN = 0.05  # image threshold sits this far above the highest OK score (or the model's own)
FEATURE_MARGIN = 0.02   # a colour camera is told by brightness and texture when that is this much more solid
BROKEN_SOLIDITY = 0.95  # a part silhouette less solid than this has lost part of the part or taken in belt
BELT_JUDGE_FRAMES = 120  # at most this many frames judge the belt features


@dataclass
class Calibration:
    config: LineConfig
    ok_scores: list[float]
    template_ncc: float
    notes: list[str]
    part_long_side_px: float = 0.0  # the parts' long side in camera px (median over the frames)
    cut: list[str] = field(default_factory=list)  # frames (file names) left out: their part runs out of view


def _round8(v: float) -> int:
    return int(max(128, 8 * round(v / 8)))


def silhouette_solidity(frame: np.ndarray, belt: BeltModel) -> float:
    """The part silhouette's area over its convex hull's (0 when no part is found): a silhouette
    the belt model cuts into, or that takes in belt, scores low."""
    sil = part_silhouette(frame, belt, 0)
    if sil is None:
        return 0.0
    contour = max(cv2.findContours(sil, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0], key=cv2.contourArea)
    return float(sil.sum()) / max(1.0, cv2.contourArea(cv2.convexHull(contour)))


def choose_belt(frames: list[np.ndarray], camera: str, downscale: float,
                judge: Iterable[np.ndarray] | None = None) -> tuple[BeltModel, dict[str, dict]]:
    """The belt model, fitted on ``frames`` at the scale the line locates parts at (the mono
    features' texture and the pixel noise both change with it), and how each candidate's
    silhouettes held together on the ``judge`` frames (default: ``frames``).

    A mono camera has brightness and texture only. A colour camera is tried both ways: by colour
    (Lab), and, as a mono camera would be, by brightness and texture. On a grey belt colour cannot
    tell a grey part from it and Lab silhouettes come apart, on some parts only; on a coloured belt
    Lab is the cleaner. The features that broke fewer silhouettes (solidity under
    ``BROKEN_SOLIDITY``) win; with as many broken, the one whose worst silhouette is more solid by
    ``FEATURE_MARGIN``, Lab on a tie. Judge on many frames: on a light grey belt, Lab broke the
    silhouettes of a few light parts in a hundred, and a dozen calibration frames may show none."""
    small = [shrink(f, downscale) for f in frames]
    if camera == "mono":
        return fit_belt(small, kind="mono"), {}
    models = {kind: fit_belt(small, kind=kind) for kind in ("lab", "mono")}
    values: dict[str, list[float]] = {kind: [] for kind in models}
    for f in (small if judge is None else (shrink(f, downscale) for f in judge)):
        for kind, m in models.items():
            values[kind].append(silhouette_solidity(f, m))
    quality = {kind: {"frames": len(v), "broken": int(np.sum(np.array(v) < BROKEN_SOLIDITY)),
                      "worst": round(float(min(v, default=1.0)), 3)} for kind, v in values.items()}
    lab, mono = quality["lab"], quality["mono"]
    if mono["broken"] != lab["broken"]:
        kind = "mono" if mono["broken"] < lab["broken"] else "lab"
    else:
        kind = "mono" if mono["worst"] > lab["worst"] + FEATURE_MARGIN else "lab"
    return models[kind], quality


def _judge_frames(folder: str | Path | None) -> Iterator[np.ndarray] | None:
    """The OK frames of ``folder`` that judge the belt features, read one at a time."""
    if folder is None:
        return None
    files = image_files(Path(folder))
    step = max(1, len(files) // BELT_JUDGE_FRAMES)
    return (f for f in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files[::step][:BELT_JUDGE_FRAMES])
            if f is not None)


def _shading_note(belt: BeltModel) -> str:
    """How uneven the light over the view is, when the belt model keeps its shading."""
    if not belt.shading:
        return ""
    gain = shading_map(48, 64, belt.shading)
    return (f"; the light is uneven across the view ({gain.min():.2f}-{gain.max():.2f} of its mean along the view's "
            "border), taken out before part and belt are told apart: even light is better still")


def _belt_note(quality: dict[str, dict], chosen: str) -> str:
    """What the belt features' silhouettes did, for the config's header."""
    if len(quality) < 2:
        return ""
    other = "lab" if chosen == "mono" else "mono"
    q, o = quality[chosen], quality[other]
    how = {"lab": "by colour", "mono": "by brightness and texture"}
    return (f" (silhouettes broken, solidity under {BROKEN_SOLIDITY}: {q['broken']} of {q['frames']} frames, "
            f"{how[other]} {o['broken']}; worst solidity {q['worst']:.2f} against {o['worst']:.2f})")


def calibrate_line(frames_dir: str | Path, model: str | Path, out_yaml: str | Path,
                   canonical_long_side: int | None = None, judge_dir: str | Path | None = None) -> Calibration:
    """``canonical_long_side``: rectify parts to this long side (the scale the model learnt the
    product at, e.g. its training images'), whatever their size in camera px; default: their size
    in camera px. ``judge_dir``: more OK frames of this line (up to ``BELT_JUDGE_FRAMES`` of them,
    evenly spread) on which a colour camera's belt features are judged; default: ``frames_dir``'s."""
    readable = [item for item in DirSource(frames_dir) if item.frame is not None]
    frames, names = [item.frame for item in readable], [item.name for item in readable]
    if len(frames) < 3:
        raise ValueError(f"{frames_dir}: need at least 3 readable frames of OK parts (5-10 recommended), "
                         f"found {len(frames)}")
    _, meta = model_paths(model)
    # the camera's kind from most frames; a frame is odd only when clearly of the other kind (see
    # pipeline.vision.camera: a colour camera's grey scene may or may not keep a trace of colour)
    camera = "mono" if float(np.median([channel_spread(f) for f in frames])) <= MONO_MAX_CHANNEL_DIFF else "colour"
    downscale = PreprocessConfig().downscale
    belt, quality = choose_belt(frames, camera, downscale, _judge_frames(judge_dir))
    odd = [i for i, f in enumerate(frames) if kind_mismatch(f, camera, belt.needs_colour())]  # the line's own rule
    if odd:
        other = "mono" if camera == "colour" else "colour"
        raise ValueError(f"{frames_dir}: {', '.join(names[i] for i in odd)} are {other}, the others {camera}; "
                         "calibrate on frames from the one camera of this line")
    probe_wh = (256, 320)
    sizes, corners_all, cut = [], [], []
    for i, f in enumerate(frames):
        found = locate_silhouette(f, belt, 2000, probe_wh, downscale)
        if found is None:
            raise ValueError(f"{frames_dir}: {names[i]} shows no part distinct from the belt; calibration needs "
                             "every frame to show one OK part fully inside the view")
        if cut_by_edge(f, found[1], belt, downscale)[0] >= PreprocessConfig().max_edge_contact:
            cut.append(names[i])  # the line will not inspect such a part; its size would be the cut one
            continue
        c = found[0]
        sizes.append((np.linalg.norm(c[1] - c[0]), np.linalg.norm(c[3] - c[0])))
        corners_all.append(c)
    if len(sizes) < 3:
        raise ValueError(f"{frames_dir}: the part runs out of view in {', '.join(cut)}, and {len(sizes)} frame(s) "
                         "show one wholly in view; calibration needs at least 3: record frames with the part inside "
                         "the view")
    frames, names = [f for f, n in zip(frames, names) if n not in cut], [n for n in names if n not in cut]
    w, h = np.median(np.array(sizes), axis=0)
    part_long_side = round(float(max(w, h)), 1)  # camera px
    if canonical_long_side:
        w, h = w * canonical_long_side / max(w, h), h * canonical_long_side / max(w, h)
    canonical = [_round8(w), _round8(h)]
    wh = (canonical[0], canonical[1])
    areas = [a * b for a, b in sizes]
    grays = []
    for f, c in zip(frames, corners_all):
        H = homography_to_canonical(c, wh)
        grays.append(cv2.cvtColor(rectify(f, H, wh), cv2.COLOR_BGR2GRAY).astype(np.float32))
    template = np.median(np.stack(grays), axis=0).astype(np.uint8)
    ncc = float(np.mean([cv2.matchTemplate(g.astype(np.uint8), template, cv2.TM_CCOEFF_NORMED)[0, 0] for g in grays]))
    mode = "template" if ncc >= TEMPLATE_MIN_NCC else "silhouette"
    notes = [f"OK parts match their median at NCC {ncc:.2f} -> {mode} mode "
             f"(template when >= {TEMPLATE_MIN_NCC})"]
    if cut:
        notes.append(f"{', '.join(cut)} left out: the part runs out of view")
    out_yaml = Path(out_yaml)
    out_yaml.parent.mkdir(parents=True, exist_ok=True)
    template_path = ""
    if mode == "template":
        template_path = str(out_yaml.with_suffix(".template.png"))
        cv2.imwrite(template_path, template)
    how = "brightness and texture" if belt.features == "mono" else "colour (Lab)"
    notes.insert(0, f"{camera} camera: the part is told from the belt by {how}" + _belt_note(quality, belt.features)
                 + _shading_note(belt))
    pre = PreprocessConfig(camera=camera, mode=mode, template=template_path, canonical_size=canonical,
                           min_part_area=int(0.3 * min(areas)), belt=BeltConfig(**belt.to_config()))
    if mode == "template":
        probe = Preprocessor.for_model(pre, meta)
        misses = sum(probe(f).verdict is not None for f in frames)
        if misses:
            notes.append(f"template mode missed {misses}/{len(frames)} calibration parts -> silhouette mode")
            pre.mode, pre.template = "silhouette", ""
            Path(template_path).unlink(missing_ok=True)
    cfg = LineConfig(name=out_yaml.stem, preprocess=pre, inference=InferenceConfig(model=str(Path(model).resolve())),
                     decision=DecisionConfig())
    # Score the calibration parts with the real preprocessing and model.
    prep = Preprocessor.for_model(pre, meta)
    scores = []
    for i, score in enumerate(part_scores(prep, model, frames, cfg.decision)):
        if isinstance(score, str):
            raise ValueError(f"{frames_dir}: preprocessing found {score} on calibration frame {names[i]}")
        scores.append(score)
    # The model's own threshold was set for its shared memories' scores (evaluate --set-thresholds). A
    # per-position memory fitted on this line's grid scores the line's parts on its own scale, for which
    # only these OK parts speak.
    positions = meta.line_positions()
    own_scale = positions is not None and positions.matches(prep.grid, prep.coarse_grid)
    floor = 0.0 if own_scale else meta.image_threshold
    threshold = min(0.99, max(floor, max(scores) + THRESHOLD_MARGIN))
    cfg.decision.image_threshold = round(float(threshold), 4)
    source = ("the per-position memory's scores: the model threshold does not apply" if own_scale
              else f"model threshold {meta.image_threshold:.3f}")
    notes.append(f"OK scores {min(scores):.3f}..{max(scores):.3f}; {source} -> image_threshold {threshold:.3f}")
    write_commented(cfg, out_yaml, notes, len(frames), str(frames_dir))
    return Calibration(cfg, scores, ncc, notes, part_long_side, cut)


def part_scores(prep: Preprocessor, model: str | Path, frames: list[np.ndarray], decision: DecisionConfig,
                engine=None) -> list[float | str]:
    """Each frame's part score as the line computes it (the line's preprocessing, the model on
    onnxruntime, ``score_part``); for a frame whose part was not found, the reason instead."""
    _, meta = model_paths(model)
    engine = engine or load_backend("onnxruntime", model)
    out: list[float | str] = []
    for f in frames:
        p = prep(f)
        if p.verdict is not None:
            out.append(f"{p.verdict} ({p.reason})")
            continue
        maps, tile_scores = engine.infer(meta.normalise(p.tiles))
        maps = map_coarse_tiles(engine, p.tiles, maps, p.coarse)
        out.append(float(score_part(p.part(maps, tile_scores), meta.map_rule(), decision.part_erode_px).score))
    return out


def _relative(target: str, yaml_path: Path) -> str:
    """Paths relative to the config file's folder (how load_config reads them), so a line folder can move."""
    return os.path.relpath(Path(target).resolve(), yaml_path.resolve().parent) if target else ""


def write_commented(cfg: LineConfig, path: Path, notes: list[str], n_frames: int, frames_dir: str,
                    tool: str = "calibrate_line") -> Path:
    """The line config as YAML with every key explained (``pipeline.config.commented_yaml``), paths
    relative to the file's folder so that a line folder can move."""
    header = [f"Line config written by {tool} from {n_frames} OK frames in {frames_dir}", *notes]
    relative = {"inference.model": _relative(cfg.inference.model, path),
                "preprocess.template": _relative(cfg.preprocess.template, path),
                "sinks.http.spool_dir": _relative(cfg.sinks.http.spool_dir, path),
                "sinks.http.ca_bundle": _relative(cfg.sinks.http.ca_bundle, path)}
    path.write_text(commented_yaml(cfg, header, relative))
    return path
