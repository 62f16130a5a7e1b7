"""Mono cameras and lines of other geometry: the camera kind is told from the frames, a mono line
finds its parts by brightness and texture, and a frame of the other kind than calibrated gets an
ERROR record, never a verdict. Real frames of the bundled test parts on simulated lines."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.line import calibrate_line
from pipeline.config import load_config
from pipeline.processing import Preprocessor
from pipeline.sim import LineGeometry, simulate, write_sequence
from pipeline.vision.camera import frame_kind

ROOT = Path(__file__).resolve().parent.parent
MONO_LINE = LineGeometry(width=800, height=600, part_long_side=360, max_angle=8.0, belt_bgr=(30, 30, 30), mono=True)


def test_camera_kind_is_told_from_the_frame(mini_data, tmp_path):
    (colour,) = simulate(mini_data, 1, 0, 0, seed=1)
    (mono,) = simulate(mini_data, 1, 0, 0, seed=1, geometry=MONO_LINE)
    assert colour.frame.ndim == 3 and frame_kind(colour.frame) == "colour"
    assert mono.frame.ndim == 2 and frame_kind(mono.frame) == "mono"
    # as the sources read it: a one-channel file decoded to three identical channels, PNG or JPEG
    for ext in (".png", ".jpg"):
        cv2.imwrite(str(tmp_path / f"m{ext}"), mono.frame)
        decoded = cv2.imread(str(tmp_path / f"m{ext}"), cv2.IMREAD_COLOR)
        assert decoded.shape[2] == 3 and frame_kind(decoded) == "mono"
    grey_scene = np.clip(cv2.cvtColor(mono.frame, cv2.COLOR_GRAY2BGR).astype(np.int16)
                         + np.random.default_rng(0).normal(0, 3, (*mono.frame.shape, 3)), 0, 255).astype(np.uint8)
    assert frame_kind(grey_scene) == "colour"  # a colour sensor's noise parts the channels, even on grey


def test_random_lines_are_fixed_by_their_seed_and_vary(mini_data):
    lines = [LineGeometry.random(s) for s in range(12)]
    assert LineGeometry.random(3) == lines[3]
    assert len({(g.width, g.height) for g in lines}) > 2 and {g.mono for g in lines} == {True, False}
    assert len({g.belt_bgr for g in lines}) > 2
    for g in lines[:3]:
        frames = simulate(mini_data, 2, 1, 1, seed=0, geometry=g)
        assert all(f.frame.shape[:2] == (g.height, g.width) and (f.frame.ndim == 2) == g.mono for f in frames)


@pytest.fixture(scope="module")
def mono_line(trained_model, mini_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("mono")
    calib = root / "calib"
    calib.mkdir()
    for i, f in enumerate(simulate(mini_data, 6, 0, 0, seed=21, ok_from="train/good", geometry=MONO_LINE)):
        cv2.imwrite(str(calib / f"{i:02d}.png"), f.frame)
    cal = calibrate_line(calib, trained_model, root / "mono.yaml")
    return root / "mono.yaml", cal


def test_mono_line_is_calibrated_on_brightness_and_texture(mono_line, mini_data, line):
    config, cal = mono_line
    cfg = load_config(config)
    assert cfg.preprocess.camera == "mono" and cfg.preprocess.belt.features == "mono"
    assert "mono camera" in cal.notes[0]
    from engines.artifact import model_paths

    _, meta = model_paths(cfg.inference.model)
    prep = Preprocessor.for_model(cfg.preprocess, meta)
    frames = simulate(mini_data, 3, 3, 2, seed=22, geometry=MONO_LINE)
    for f in frames:
        p = prep(f.frame)
        if f.truth["verdict"] == "NO_PART":
            assert p.verdict == "NO_PART"  # an empty belt is not a part (it was NG on a colour model)
        else:
            assert p.verdict is None and len(p.tiles) > 0
    colour = simulate(mini_data, 1, 0, 0, seed=23)[0].frame
    p = prep(colour)
    assert p.verdict == "ERROR" and "a colour frame, but this line was calibrated on mono frames" in p.reason
    colour_cfg = load_config(line[0])
    p = Preprocessor.for_model(colour_cfg.preprocess, meta)(frames[0].frame)
    assert p.verdict == "ERROR" and "a mono frame" in p.reason and "calibrate it again" in p.reason


@pytest.mark.slow
def test_mono_sequence_through_the_line(mono_line, mini_data, line, tmp_path):
    config, _ = mono_line
    seq = write_sequence(simulate(mini_data, 3, 3, 2, seed=24, geometry=MONO_LINE), tmp_path / "seq")
    results = tmp_path / "r.jsonl"
    run = subprocess.run([sys.executable, "-m", "tools.run_pipeline", "--config", str(config), "--source",
                          f"replay:{seq}", "--results", str(results), "--quiet"], cwd=ROOT, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    truth = {t["file"]: t["verdict"] for t in map(json.loads, (seq / "truth.jsonl").read_text().splitlines())}
    records = [json.loads(x) for x in results.read_text().splitlines()]
    assert [r["frame_id"] for r in records] == list(range(8))
    for r in records:
        expected = truth[r["source_name"]]
        assert r["verdict"] == "NO_PART" if expected == "NO_PART" else r["verdict"] in ("OK", "NG"), r
    # the colour line given the mono camera: ERROR records saying why, once on the console
    wrong = subprocess.run([sys.executable, "-m", "tools.run_pipeline", "--config", str(line[0]), "--source",
                            f"replay:{seq}", "--results", str(tmp_path / "w.jsonl"), "--quiet"], cwd=ROOT,
                           capture_output=True, text=True, timeout=180)
    assert wrong.returncode == 0
    verdicts = [json.loads(x)["verdict"] for x in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert verdicts == ["ERROR"] * 8 and wrong.stderr.count("calibrated on colour frames") == 1
