"""Commissioning a line in one step: from a folder of recorded OK frames to a line config, a
line-fitted model folder, and a threshold that gives the false-alarm rate asked for.

1. The frames are split once, by a hash of each file's name, into a fit set and a held-out set
   (``HELD_OUT_FRACTION``); nothing fitted sees a held-out frame.
2. ``calibrate_line`` on a few fit frames: belt model (a colour camera's features judged on up to
   ``BELT_JUDGE_FRAMES`` fit frames), canonical size, alignment mode.
3. The model's tile memories are refitted for this line (``export_model``): with the model's OK
   part images (``part_images``), on their canonical views plus the fit frames, with a memory per
   tile position; without them, on the fit frames alone.
4. ``calibrate_line`` again with the line-fitted model (its scale differs from the model's).
5. The held-out OK frames are scored as the line scores parts, and the image threshold is set so
   that at most ``target`` of them would be alarms; the rate comes with the bound it is below at
   95 % confidence (exact binomial). When the held-out frames are too few to show the target even
   with no alarm among them (``frames_needed``), the report says so; held-out frames the line could
   not inspect (a part running out of view, say) are counted by reason in a warning.
6. A report: ``LINE.commissioning.json`` and ``.png`` (score histogram with the threshold, the
   fit frames' tiles per grid position).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

HELD_OUT_FRACTION = 0.3
MIN_FRAMES = 20          # below this, commissioning refuses: nothing could be said of the rate
RECOMMENDED_FRAMES = 200
# below this share of the scale the model learnt the product at, commissioning warns that the camera
# may not resolve thin defects (on 4 of 8 such simulated lines recall fell below the detector's)
MIN_RESOLUTION = 0.9
CALIBRATION_FRAMES = 12  # frames calibrate_line sees (belt, size, mode)


@dataclass
class Commissioning:
    config: str
    model: str
    target_false_alarms: float
    threshold: float
    fit_frames: int
    held_out_frames: int
    held_out_scored: int
    held_out_alarms: int
    false_alarm_rate: float
    false_alarm_upper95: float   # at most this rate, with 95 % confidence
    enough_data: bool            # enough held-out frames that no alarm among them would show the target
    not_located: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    held_out_scores: list[float] = field(default_factory=list)
    part_long_side_px: float = 0.0   # the parts' long side in camera px on this line
    model_long_side_px: float = 0.0  # the long side the parts are rectified to (0: camera px)
    # the held-out frames that set the threshold (its alarms and the next one down, at least 3):
    # {"file", "score"}, highest first, for a person to look at
    highest_held_out: list[dict] = field(default_factory=list)


def split_frames(files: list[Path], held_fraction: float = HELD_OUT_FRACTION) -> tuple[list[Path], list[Path]]:
    """(fit, held out): a file is held out when the hash of its name falls in the first
    ``held_fraction`` of the range; the same names always split the same way."""
    fit, held = [], []
    for f in files:
        h = int(hashlib.sha256(f.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held if h < held_fraction else fit).append(f)
    return fit, held


def rate_upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """The false-alarm rate that k alarms in n frames rule out above, at ``level`` (exact,
    one-sided Clopper-Pearson): "at most this, with 95 % confidence"."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


def choose_threshold(ok_scores: list[float], target: float) -> tuple[float, int]:
    """The image threshold at which at most ``floor(target * n)`` of the OK scores are alarms
    (score >= threshold), placed halfway to the next score up; and that number of alarms."""
    s = np.sort(np.asarray(ok_scores, np.float64))[::-1]
    k = int(math.floor(target * len(s) + 1e-9))
    if k >= len(s):
        return float(s[-1]), len(s)
    t = float(min(0.999, (s[k] + s[k - 1]) / 2 if k > 0 else s[0] + 0.02))
    return t, int((s >= t).sum())


def highest_scores(names: list[str], scores: list[float], n: int) -> list[dict]:
    """The ``n`` highest-scoring frames, highest first: ``{"file", "score"}``."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:n]
    return [{"file": names[i], "score": round(float(scores[i]), 5)} for i in order]


def not_inspected_kinds(reasons: list[str]) -> dict[str, int]:
    """How many frames were not inspected, by kind: each reason (``"ERROR (part not wholly in
    view: its surface ...)"``) read up to its first colon, most frequent first."""
    kinds: dict[str, int] = {}
    for reason in reasons:
        verdict, _, why = reason.partition(" (")
        kind = f"{verdict}: {why.split(':')[0].rstrip(')')}" if why else verdict
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def not_inspected_note(reasons: list[str], n_held: int) -> str:
    """The warning for held-out OK frames the line could not inspect, counted by kind, with what to
    change when parts run out of view."""
    kinds = not_inspected_kinds(reasons)
    note = (f"warning: {len(reasons)} of {n_held} held-out OK frames ({100 * len(reasons) / max(1, n_held):.1f} %) "
            "had no part inspected (" + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
            + "; each with its frame in the report's JSON) and do not count towards the threshold; on the line such "
              "parts get the same record, and ERROR is rejected by default (sinks.modbus.reject_verdicts)")
    if any("not wholly in view" in kind for kind in kinds):
        note += ("; parts that run out of view call for a wider view (the camera further back, another lens) or a "
                 "trigger that centres the part")
    return note


def too_few_note(n_scored: int, target: float, held_fraction: float) -> str | None:
    """What to do when ``n_scored`` held-out frames cannot show ``target`` even with no alarm among
    them; None when they can (alarms then leave the 95 % bound above the target however many
    frames there are, and the threshold's note gives the bound)."""
    need = frames_needed(target)
    if n_scored >= need:
        return None
    return (f"too few held-out frames to show a false-alarm rate of {target:g}: {n_scored} scored; even with no alarm "
            f"among them at least {need} are needed (about {int(math.ceil(need / held_fraction))} recorded frames in "
            "all); record more OK frames and commission again")


def frames_needed(target: float, level: float = 0.95) -> int:
    """Held-out OK frames needed before zero alarms shows a rate below ``target`` at ``level``."""
    return int(math.ceil(math.log(1 - level) / math.log(1 - target)))


def part_image_scale(part_images: str | Path) -> tuple[int, float]:
    """(median long side in px, median short/long ratio) of the part images."""
    from engines.data import training_images

    sizes = []
    for f in training_images(part_images):
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        if img is not None:
            sizes.append(img.shape)
    if not sizes:
        raise ValueError(f"--part-images {part_images}: no readable images")
    arr = np.array(sizes, np.float64)
    return int(np.median(arr.max(axis=1))), float(np.median(arr.min(axis=1) / arr.max(axis=1)))


def _link_frames(files: list[Path], folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in files:
        try:
            os.symlink(f.resolve(), folder / f.name)
        except OSError:  # a file system without links
            shutil.copy2(f, folder / f.name)
    return folder


def commission_line(frames_dir: str | Path, model: str | Path, out_yaml: str | Path, target: float = 0.01,
                    part_images: str | Path | None = None, held_fraction: float = HELD_OUT_FRACTION,
                    progress: bool = True) -> Commissioning:
    from calibration.line import calibrate_line, part_scores, write_commented
    from engines.artifact import model_paths
    from calibration.memories import export_model
    from pipeline.config import load_config
    from pipeline.processing import Preprocessor
    from pipeline.sources import image_files

    if not 0 < target < 0.5:
        raise ValueError(f"--target-false-alarms {target}: give a rate between 0 and 0.5 (0.01 is 1 %)")
    frames_dir, out_yaml = Path(frames_dir), Path(out_yaml)
    model_paths(model)  # a model folder, or an error naming what is missing
    files = image_files(frames_dir)
    if len(files) < MIN_FRAMES:
        raise ValueError(f"{frames_dir}: {len(files)} frames; commissioning needs at least {MIN_FRAMES} frames of OK "
                         f"parts on this line ({RECOMMENDED_FRAMES} or more recommended): record more "
                         "(record_sequence), then run it again")
    fit, held = split_frames(files, held_fraction)
    notes = []
    if len(files) < RECOMMENDED_FRAMES:
        notes.append(f"warning: {len(files)} frames; {RECOMMENDED_FRAMES} or more give a tighter memory and threshold")
    work = out_yaml.with_name(out_yaml.stem + ".commissioning")
    line_model = out_yaml.with_name(out_yaml.stem + "_model")
    out_yaml.parent.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        if progress:
            print(f"commission_line: {text}", file=sys.stderr, flush=True)

    say(f"{len(fit)} frames to fit, {len(held)} held out to set the threshold")
    calib = _link_frames(fit[:: max(1, len(fit) // CALIBRATION_FRAMES)][:CALIBRATION_FRAMES], work / "calibration_frames")
    fit_dir = _link_frames(fit, work / "fit_frames")
    long_side, aspect = part_image_scale(part_images) if part_images else (None, None)
    first = calibrate_line(calib, model, out_yaml, canonical_long_side=long_side, judge_dir=fit_dir)
    if long_side:
        notes.append(f"parts rectified to a long side of {long_side} px, the median of the part images: the scale "
                     "the model learnt the product at")
        if first.part_long_side_px < MIN_RESOLUTION * long_side:
            notes.append(f"warning: the camera sees the parts at a long side of {first.part_long_side_px:.0f} px, "
                         f"{first.part_long_side_px / long_side:.2f} of the {long_side} px the model learnt them at, "
                         "and enlarges them: detail finer than the camera resolves cannot be found, and on some "
                         "simulated lines of this kind thin defects were missed more often; a closer camera or a "
                         f"higher resolution (a long side of at least {MIN_RESOLUTION * long_side:.0f} px) avoids it")
        w, h = first.config.preprocess.canonical_size
        seen = min(w, h) / max(w, h)
        if abs(seen - aspect) > 0.2 * aspect:
            notes.append(f"warning: the parts measured on this line are {seen:.2f} as wide as long, the part images "
                         f"{aspect:.2f}: the part may not stand out from the belt; check "
                         f"{out_yaml.stem}.commissioning.png and the belt (a belt of the parts' own brightness "
                         "and colour cannot be told from them)")
    say("calibrated (belt, canonical size, alignment); refitting the tile memories on this line")
    if part_images:
        export_model(model, line_model, memory_data=part_images, memory_canonical=out_yaml, memory_frames=fit_dir,
                     memory_positions=True, progress=progress)
        how = f"memories refitted on {part_images} as this line rectifies them, {len(fit)} fit frames, per position"
    else:
        export_model(model, line_model, memory_data=fit_dir, memory_line=out_yaml, progress=progress)
        how = f"memories refitted on {len(fit)} fit frames (give --part-images for a memory per tile position too)"
    second = calibrate_line(calib, line_model, out_yaml, canonical_long_side=long_side, judge_dir=fit_dir)
    cfg = load_config(out_yaml)
    _, meta = model_paths(line_model)
    prep = Preprocessor.for_model(cfg.preprocess, meta)
    say(f"scoring {len(held)} held-out frames")
    held_frames = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in held]
    scored, not_located, names, reasons = [], [], [], []
    for f, score in zip(held, part_scores(prep, line_model, held_frames, cfg.decision)):
        if isinstance(score, str):
            not_located.append(f"{f.name}: {score}")
            reasons.append(score)
        else:
            scored.append(score)
            names.append(f.name)
    if not scored:
        raise ValueError(f"{frames_dir}: no held-out frame showed a part the line could locate; check the frames")
    threshold, alarms = choose_threshold(scored, target)
    highest = highest_scores(names, scored, max(3, alarms + 1))
    rate = alarms / len(scored)
    upper = rate_upper_bound(alarms, len(scored))
    too_few = too_few_note(len(scored), target, held_fraction)
    enough = too_few is None
    cfg.decision.image_threshold = round(threshold, 4)
    notes += first.notes[:2] + [how, second.notes[-1].split(";")[0] + " (calibration frames)",
                                f"threshold {threshold:.4f} from {len(scored)} held-out OK frames: {alarms} alarm(s), "
                                f"false-alarm rate {rate:.3f}, at most {upper:.3f} with 95 % confidence; target {target:g}"]
    notes.append("the held-out frames that set it: " + ", ".join(f"{h['file']} {h['score']:.3f}" for h in highest)
                 + "; should one not show a normal OK part as the line sees it (dirt on the belt, a part located "
                   "wrongly), the threshold sits too high: take it out of the recorded frames, or record more, and "
                   "commission again")
    if too_few:
        notes.append(too_few)
    if first.cut:
        notes.append(f"{len(first.cut)} calibration frame(s) left out: the part runs out of view")
    if not_located:
        notes.append(not_inspected_note(reasons, len(held)))
    write_commented(cfg, out_yaml, notes, len(files), str(frames_dir), tool="commission_line")
    load_config(out_yaml)  # what was written must be accepted by run_pipeline
    result = Commissioning(str(out_yaml), str(line_model), target, threshold, len(fit), len(held), len(scored), alarms,
                           rate, upper, enough, not_located, notes, [round(s, 5) for s in scored],
                           first.part_long_side_px, float(long_side or 0), highest)
    coverage = _coverage(prep, fit_dir)
    view = next((f.shape[:2] for f in held_frames if f is not None), (480, 640))
    _report(result, coverage, out_yaml, tuple(cfg.preprocess.belt.shading), view)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _coverage(prep, fit_dir: Path) -> np.ndarray:
    """Fit frames' inspected tiles per fine grid position, (rows, cols)."""
    grid = prep.grid
    counts = np.zeros((len(grid.ys), len(grid.xs)), np.int64)
    for f in sorted(fit_dir.iterdir()):
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        p = prep(img) if img is not None else None
        if p is None or p.verdict is not None:
            continue
        for t in p.tile_index[~p.coarse]:
            counts[int(t) // len(grid.xs), int(t) % len(grid.xs)] += 1
    return counts


def report_paths(out_yaml: Path) -> tuple[Path, Path]:
    """Where the commissioning report of ``LINE.yaml`` goes: ``LINE.commissioning.json`` and ``.png``."""
    return (out_yaml.with_name(f"{out_yaml.stem}.commissioning.json"),
            out_yaml.with_name(f"{out_yaml.stem}.commissioning.png"))


def _report(result: Commissioning, coverage: np.ndarray, out_yaml: Path, shading: tuple[float, ...] = (),
            view: tuple[int, int] = (480, 640)) -> None:
    """The report's JSON and PNG: the held-out scores and the threshold, the tiles per position and,
    where the light over the view is uneven, its shading as the belt model takes it out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path, png_path = report_paths(out_yaml)
    data = asdict(result) | {"tiles_per_position": coverage.tolist()}
    json_path.write_text(json.dumps(data, indent=1))
    ratios = [2, 1, 1] if shading else [2, 1]
    fig, axes = plt.subplots(1, len(ratios), figsize=(4.2 * len(ratios) + 2.6, 4.2), gridspec_kw={"width_ratios": ratios})
    ax, bx = axes[:2]
    ax.hist(result.held_out_scores, bins=30, color="#4a7ab5", label=f"held-out OK frames (n={result.held_out_scored})")
    ax.axvline(result.threshold, color="#c0392b", lw=2, label=f"threshold {result.threshold:.3f}")
    ax.set_title(f"false alarms {result.held_out_alarms}/{result.held_out_scored} = {result.false_alarm_rate:.3f} "
                 f"(at most {result.false_alarm_upper95:.3f}, 95 % confidence); target {result.target_false_alarms:g}"
                 + ("" if result.enough_data else "\ntoo few frames to show the target"), fontsize=9)
    ax.set_xlabel("part score (NG at or above the threshold)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    im = bx.imshow(coverage, cmap="viridis")
    bx.set_title("fit frames' tiles per position", fontsize=9)
    bx.set_xticks(range(coverage.shape[1]))
    bx.set_yticks(range(coverage.shape[0]))
    bx.set_xlabel("tile column")
    bx.set_ylabel("tile row")
    for (r, c), v in np.ndenumerate(coverage):
        bx.text(c, r, str(v), ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(im, ax=bx, fraction=0.046)
    if shading:
        from pipeline.vision.belt import shading_map

        cx = axes[2]
        light = shading_map(96, max(1, round(96 * view[1] / view[0])), shading)  # the view's own aspect
        shown = cx.imshow(light, cmap="magma")
        cx.set_title(f"light over the view, taken out\n({light.min():.2f}-{light.max():.2f} of its mean along the border)",
                     fontsize=9)
        cx.set_xticks([])
        cx.set_yticks([])
        fig.colorbar(shown, ax=cx, fraction=0.046)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
