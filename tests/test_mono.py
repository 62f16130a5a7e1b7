"""Mono cameras and lines of other geometry: the camera kind is told from the frames, a mono line
finds its parts by brightness and texture, and a frame of the other kind than calibrated gets an
ERROR record, never a verdict. Real frames of the bundled test parts on simulated lines."""
import dataclasses
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


def test_a_random_colour_line_on_a_grey_belt_is_seen_as_a_colour_camera(mini_data):
    """A colour sensor's per-channel noise parts the channels on a grey belt, as on a real line; without
    it the simulated colour camera handed out three identical channels and was taken for mono. The
    sensor has its own generator: the parts, poses and truth of a seed stay as they were."""
    import dataclasses

    g = next(LineGeometry.random(s) for s in range(100, 200)
             if not LineGeometry.random(s).mono and len(set(LineGeometry.random(s).belt_bgr)) == 1)
    assert 1.5 <= g.sensor_noise <= 3.0
    noisy = simulate(mini_data, 2, 1, 1, seed=5, geometry=g)
    quiet = simulate(mini_data, 2, 1, 1, seed=5, geometry=dataclasses.replace(g, sensor_noise=0.0))
    assert [f.truth for f in noisy] == [f.truth for f in quiet]
    assert all(frame_kind(f.frame) == "colour" for f in noisy)
    assert all(frame_kind(f.frame) == "mono" for f in quiet)  # what the simulator used to hand out
    diff = np.abs(noisy[0].frame.astype(np.int16) - quiet[0].frame).mean()
    assert 0.5 < diff < 3.0  # noise of a few grey levels, not a different scene


def test_a_random_mono_line_has_sensor_noise_on_its_parts_too(mini_data):
    """A mono sensor is as noisy as a colour one: its frames carry the noise on part and belt alike
    (before, its parts were noise-free), one channel, from the sensor's own generator."""
    import dataclasses

    g = next(LineGeometry.random(s) for s in range(100, 200) if LineGeometry.random(s).mono)
    assert 1.5 <= g.sensor_noise <= 3.0
    noisy = simulate(mini_data, 2, 1, 1, seed=5, geometry=g)
    quiet = simulate(mini_data, 2, 1, 1, seed=5, geometry=dataclasses.replace(g, sensor_noise=0.0))
    assert [f.truth for f in noisy] == [f.truth for f in quiet]
    f, q = next((f, q) for f, q in zip(noisy, quiet) if "corners" in f.truth)
    assert f.frame.ndim == 2 and frame_kind(f.frame) == "mono"
    inside = np.zeros(f.frame.shape, np.uint8)
    cv2.fillConvexPoly(inside, np.round(np.array(f.truth["corners"])).astype(np.int32), 1)
    inside = cv2.erode(inside, np.ones((9, 9), np.uint8)) > 0
    residual = f.frame.astype(np.float32)[inside] - q.frame[inside]
    assert 0.7 * g.sensor_noise < residual.std() < 1.3 * g.sensor_noise


def _jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


GREY_COLOUR_LINE = LineGeometry(width=800, height=600, part_long_side=400, max_angle=8.0, belt_bgr=(30, 30, 30),
                                sensor_noise=1.8)


def test_a_frame_is_refused_only_when_it_lacks_what_its_line_needs_or_is_clearly_another_camera(mini_data):
    """JPEG leaves a colour camera's grey scene a trace of colour or none, frame by frame; one cut
    between the kinds gave such a line ERROR records at random."""
    from pipeline.vision.camera import channel_spread, kind_mismatch

    (grey,) = simulate(mini_data, 1, 0, 0, seed=3, geometry=GREY_COLOUR_LINE)
    (green,) = simulate(mini_data, 1, 0, 0, seed=3)
    q95, q75 = _jpeg(grey.frame, 95), _jpeg(grey.frame, 75)
    assert channel_spread(q75) == 0 < channel_spread(q95) < 6 <= channel_spread(green.frame)
    assert frame_kind(q75) == "mono" and frame_kind(q95) == "colour"  # one camera, two kinds
    # a line that finds parts by colour: a frame without colour is refused, one with it is not
    assert "a mono frame" in kind_mismatch(q75, "colour", needs_colour=True)
    assert kind_mismatch(green.frame, "colour", needs_colour=True) is None
    # a colour camera's line that uses brightness and texture takes its grey scenes either way
    assert kind_mismatch(q75, "colour", needs_colour=False) is None
    assert kind_mismatch(q95, "colour", needs_colour=False) is None
    # a mono line: a trace of colour is not another camera, visible colour is
    assert kind_mismatch(q95, "mono", needs_colour=False) is None
    assert "a colour frame, but this line was calibrated on mono frames" in kind_mismatch(green.frame, "mono", False)
    # what needs colour: a colour model of a green belt does; of a grey belt (told by lightness) not
    from pipeline.vision.belt import fit_belt

    assert fit_belt([green.frame], kind="lab").needs_colour()
    assert not fit_belt([q95], kind="lab").needs_colour() and not fit_belt([q95], kind="mono").needs_colour()


def test_a_colour_camera_on_a_grey_belt_is_calibrated_and_run_whatever_its_compression(trained_model, mini_data,
                                                                                    tmp_path):
    """Calibration frames of one colour camera on a grey belt, half saved at JPEG quality 95 and half at
    75: they were refused as coming from two cameras. Now the line calibrates, and its frames at
    either quality are located, none refused."""
    frames = simulate(mini_data, 12, 0, 0, seed=7, ok_from="train/good", geometry=GREY_COLOUR_LINE)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(frames[:8]):
        cv2.imwrite(str(calib / f"{i:02d}.png"), _jpeg(f.frame, 95 if i % 2 else 75))
    assert {frame_kind(cv2.imread(str(f))) for f in calib.iterdir()} == {"mono", "colour"}
    calibrate_line(calib, trained_model, tmp_path / "grey.yaml")
    cfg = load_config(tmp_path / "grey.yaml")
    assert cfg.preprocess.belt.features == "mono"  # a grey part on a grey belt: brightness and texture
    from engines.artifact import model_paths

    prep = Preprocessor.for_model(cfg.preprocess, model_paths(trained_model)[1])
    for f in frames[8:]:
        for quality in (95, 75):
            p = prep(_jpeg(f.frame, quality))
            assert p.verdict is None and len(p.tiles) > 0, p.reason


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



LIGHT_MONO_LINE = LineGeometry(width=800, height=600, part_long_side=440, max_angle=4.0, belt_bgr=(205, 205, 205),
                               mono=True)


def _spread(model) -> np.ndarray:
    return np.sqrt(np.diag(np.linalg.inv(model.inv_cov)))


def test_belt_fit_ignores_parts_reaching_into_the_border_band(mini_data):
    """Parts near the edge of the view put their pixels in the band the belt is fitted on; kept,
    they doubled the model's spread and a part of about the belt's brightness passed for belt."""
    from pipeline.sim import belt_image
    from pipeline.vision.belt import fit_belt

    frames = [f.frame for f in simulate(mini_data, 8, 0, 0, seed=3, ok_from="train/good", geometry=LIGHT_MONO_LINE)]
    rng = np.random.default_rng(3)
    empty = [cv2.cvtColor(belt_image(600, 800, rng, geometry=LIGHT_MONO_LINE), cv2.COLOR_BGR2GRAY) for _ in range(8)]
    b = int(0.06 * 600)  # the band fit_belt reads
    intruding = np.mean([np.concatenate([f[:b], f[-b:], f[:, :b].T, f[:, -b:].T], axis=None).__lt__(150).mean()
                         for f in frames])
    assert intruding > 0.003  # the case: the parts do reach into the band
    clean, fitted = fit_belt(empty, kind="mono"), fit_belt(frames, kind="mono")
    assert np.all(_spread(fitted) < 1.25 * _spread(clean)), (_spread(fitted), _spread(clean))
    assert abs(fitted.mean[0] - clean.mean[0]) < 2.0


def test_a_part_as_bright_as_a_light_belt_is_located_whole():
    """A part as bright and as grainy as a light belt is told from it only by the step at its
    outline (here a dark chamfer a few px wide). The silhouette must be the whole part: eroding the
    rim away before filling let the belt leak in and left a sliver."""
    from pipeline.sim import belt_image
    from pipeline.vision.belt import fit_belt
    from pipeline.vision.locate import locate_silhouette

    rng = np.random.default_rng(5)
    grab = lambda: cv2.cvtColor(belt_image(600, 800, rng, geometry=LIGHT_MONO_LINE), cv2.COLOR_BGR2GRAY)
    belt = fit_belt([cv2.resize(grab(), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) for _ in range(3)],
                    kind="mono")
    for angle in (0.0, 5.0, -8.0):
        inside = np.zeros((600, 800), np.uint8)
        box = cv2.boxPoints(((400.0, 300.0), (260.0, 360.0), angle))
        cv2.fillConvexPoly(inside, box.astype(np.int32), 1)
        rim = inside - cv2.erode(inside, np.ones((7, 7), np.uint8))
        frame = grab()
        frame[rim > 0] = 90  # the chamfer; inside, the part is belt-like
        found = locate_silhouette(frame, belt, 20000, (260, 360), 0.5)
        assert found is not None
        sil = cv2.resize(found[1], (800, 600), interpolation=cv2.INTER_NEAREST)
        assert sil.sum() / inside.sum() > 0.93, "the silhouette lost the part's inside"
        assert (sil & (inside == 0)).sum() / inside.sum() < 0.03, "the silhouette took in belt"


@pytest.mark.parametrize("belt_bgr, expected", [((30, 30, 30), "mono"),
                                                ((60, 110, 40), "lab")])
def test_a_colour_camera_on_a_grey_belt_tells_parts_by_brightness_and_texture(mini_data, belt_bgr, expected):
    """Colour cannot tell a grey part from a grey belt: calibration tries both feature sets on a
    colour camera and keeps the one whose silhouettes hold together."""
    from calibration.line import choose_belt

    g = LineGeometry(width=800, height=600, part_long_side=400, max_angle=8.0, belt_bgr=belt_bgr)
    frames = [f.frame for f in simulate(mini_data, 10, 0, 0, seed=7, ok_from="train/good", geometry=g)]
    belt, quality = choose_belt(frames, "colour", 0.5)
    assert belt.features == expected, quality
    assert quality[expected]["worst"] > 0.9 and quality[expected]["broken"] == 0
    assert quality["lab"]["frames"] == quality["mono"]["frames"] == 10
    if expected == "mono":
        assert quality["lab"]["broken"] > 0 or quality["lab"]["worst"] < quality["mono"]["worst"] - 0.02


def _grainy_part_frame(rng: np.random.Generator, light_corner: bool) -> np.ndarray:
    """A colour camera's frame of a light grey belt and a grainy dark part; with ``light_corner``
    a quarter of the part is as light as the belt (its grain alone tells it apart)."""
    from pipeline.sim import belt_image

    f = belt_image(600, 800, rng, geometry=LineGeometry(width=800, height=600, belt_bgr=(205, 205, 205)))
    f = f.astype(np.float32)
    grain = cv2.resize(15 * rng.standard_normal((90, 90)).astype(np.float32), (360, 360),
                       interpolation=cv2.INTER_NEAREST)
    f[120:480, 220:580] = (110 + grain)[..., None]
    if light_corner:
        f[120:300, 220:400] += 205 - 110
    return np.clip(f + rng.normal(0, 2.0, f.shape), 0, 255).astype(np.uint8)


def test_belt_features_are_judged_on_more_frames_than_calibration_sees():
    """Colour tells a light grey part from a light grey belt on most parts and loses a corner of the
    lightest ones. A dozen calibration frames may hold none of those (both feature sets then look
    alike and Lab is kept); judged on more of the line's frames, brightness and texture win."""
    from calibration.line import choose_belt

    rng = np.random.default_rng(11)
    calib = [_grainy_part_frame(rng, False) for _ in range(6)]
    judge = calib + [_grainy_part_frame(rng, True) for _ in range(2)]
    belt, quality = choose_belt(calib, "colour", 0.5)
    assert belt.features == "lab" and quality["lab"]["broken"] == quality["mono"]["broken"] == 0, quality
    belt, quality = choose_belt(calib, "colour", 0.5, iter(judge))
    assert belt.features == "mono", quality
    assert quality["lab"] == {"frames": 8, "broken": 2, "worst": pytest.approx(0.87, abs=0.05)}
    assert quality["mono"]["broken"] == 0


def test_commissioning_judges_the_belt_features_on_the_fit_frames(trained_model, tmp_path):
    """``calibrate_line(judge_dir=...)`` reads the frames there and says in the config why it chose."""
    from calibration.line import calibrate_line

    rng = np.random.default_rng(11)
    calib, judge = tmp_path / "calib", tmp_path / "fit"
    calib.mkdir(), judge.mkdir()
    for i in range(6):
        f = _grainy_part_frame(rng, False)
        cv2.imwrite(str(calib / f"{i:03d}.png"), f)
        cv2.imwrite(str(judge / f"{i:03d}.png"), f)
    for i in range(6, 9):
        cv2.imwrite(str(judge / f"{i:03d}.png"), _grainy_part_frame(rng, True))
    plain = calibrate_line(calib, trained_model, tmp_path / "plain.yaml")
    judged = calibrate_line(calib, trained_model, tmp_path / "judged.yaml", judge_dir=judge)
    assert plain.config.preprocess.belt.features == "lab"
    assert judged.config.preprocess.belt.features == "mono"
    assert "by colour 3" in (tmp_path / "judged.yaml").read_text()


def test_a_part_on_a_dark_belt_under_drifting_light_is_located_to_its_corners(mini_data):
    """A magnetic tile's bevelled side is about as dark as a black belt. Under light that drifts from
    frame to frame, a belt model spread over every brightness of calibration took that side for belt,
    and a mono line's corners sat 13-16 px inside the part's on average (lines 100-103 of the
    tuning set); each frame is now read at the belt's own level."""
    from calibration.line import choose_belt
    from pipeline.vision.locate import locate_silhouette, shrink

    g = LineGeometry(width=1024, height=768, part_long_side=400, max_angle=6.0, perspective=0.04,
                     belt_bgr=(30, 30, 30), belt_weave=4.6, belt_noise=4.6, lighting_drift=0.13, mono=True,
                     sensor_noise=1.7)
    fit = [f.frame for f in simulate(mini_data, 10, 0, 0, seed=11, geometry=g)]
    belt, _ = choose_belt(fit, "mono", 0.5)
    errors = []
    for f in simulate(mini_data, 6, 6, 0, seed=12, geometry=g):
        corners, _ = locate_silhouette(f.frame, belt, 20000, (256, 320), 0.5)
        truth = np.array(f.truth["corners"])
        errors += [np.linalg.norm(corners - t, axis=1).min() for t in truth]
    assert np.mean(errors) < 11.0, np.round(errors, 1)  # 15.1 px before, 8.2 px now
    assert belt.level > 0 and shrink(fit[0], 0.5).shape[0] == 384


def test_a_mono_belt_under_brighter_light_is_still_belt():
    """Light that drifts by a quarter moves a dark belt by several grey levels, far beyond the belt
    model's own spread; each frame is scaled to the belt's calibrated level first."""
    import dataclasses

    from pipeline.sim import belt_image
    from pipeline.vision.belt import belt_mask, fit_belt

    rng = np.random.default_rng(3)
    grab = lambda gain: np.clip(cv2.cvtColor(belt_image(384, 512, rng, geometry=MONO_LINE), cv2.COLOR_BGR2GRAY)
                                * gain + rng.normal(0, 2.0, (384, 512)), 0, 255).astype(np.uint8)
    belt = fit_belt([grab(1.0) for _ in range(3)], kind="mono")
    assert 20 < belt.level < 40
    brighter = grab(1.25)
    assert belt_mask(brighter, belt).mean() > 0.99
    assert belt_mask(brighter, dataclasses.replace(belt, level=0.0)).mean() < 0.5  # unscaled: not belt


@pytest.mark.parametrize("light", ["vignetting=0.25", "light_slope=0.3"])
def test_light_uneven_across_the_view_is_taken_out_before_belt_and_part_are_told(mini_data, light):
    """A light belt lit a quarter less at the corners than at the centre (lens vignetting, a lamp
    over the belt's middle), or rising by 30 % of its mean from one side to the other (a lamp to one side): a model
    fitted on the view's border band took the bright middle of an empty belt for a part. The belt model keeps the light's shading, fitted on the calibration
    frames, and takes it out of each frame first: the empty belt is belt, parts are found to their
    corners. An evenly lit view keeps no shading, and is read exactly as before."""
    from calibration.line import choose_belt
    from pipeline.config import BeltConfig, PreprocessConfig
    from pipeline.vision.belt import BeltModel
    from pipeline.vision.locate import locate_silhouette

    even = LineGeometry(width=800, height=600, part_long_side=360, max_angle=5.0, belt_bgr=(205, 205, 205),
                        mono=True, sensor_noise=2.0)
    field, value = light.split("=")
    shaded = dataclasses.replace(even, **{field: float(value)})
    fit = [f.frame for f in simulate(mini_data, 8, 0, 0, seed=31, geometry=shaded)]
    belt, _ = choose_belt(fit, "mono", 0.5)
    assert len(belt.shading) == 5
    flat = dataclasses.replace(belt, shading=())  # the same model without the light's shading
    test = simulate(mini_data, 3, 3, 3, seed=32, geometry=shaded)
    prep = Preprocessor(PreprocessConfig(camera="mono", min_part_area=20000, belt=BeltConfig(**belt.to_config())))
    for f in test:
        if "corners" not in f.truth:
            assert prep(f.frame).verdict == "NO_PART"
            assert locate_silhouette(f.frame, flat, 20000, (256, 320), 0.5) is not None  # the bright middle
            continue
        corners, _ = locate_silhouette(f.frame, belt, 20000, (256, 320), 0.5)
        assert np.linalg.norm(corners - np.array(f.truth["corners"]), axis=1).max() < 6.0
    assert BeltModel.from_config(BeltConfig(**belt.to_config())).shading == pytest.approx(belt.shading, abs=1e-5)
    evenly = [f.frame for f in simulate(mini_data, 8, 0, 0, seed=31, geometry=even)]
    assert choose_belt(evenly, "mono", 0.5)[0].shading == ()


def test_a_mono_part_near_the_frames_edge_is_inspected_and_one_cut_by_it_is_not(mini_data):
    """A mono belt model's neighbourhoods take a few px of belt around a part into its silhouette, so
    a part 3 px inside the frame's edge reaches it with belt, not with its own surface: inspected.
    Counting every silhouette pixel on the edge took such parts for cut. A part 10 px out of view
    shows its surface on the edge: ERROR."""
    from calibration.line import choose_belt
    from pipeline.config import BeltConfig, PreprocessConfig
    from pipeline.vision.locate import edge_contact, silhouette_in_view
    from tests.frames import shifted

    g = dataclasses.replace(MONO_LINE, sensor_noise=2.0)
    frames = simulate(mini_data, 8, 0, 1, seed=41, ok_from="train/good", geometry=g)
    parts = [f for f in frames if "corners" in f.truth]
    empty = next(f.frame for f in frames if "corners" not in f.truth)
    belt, _ = choose_belt([f.frame for f in parts], "mono", 0.5)
    prep = Preprocessor(PreprocessConfig(camera="mono", min_part_area=20000, belt=BeltConfig(**belt.to_config())))
    for f in parts[:3]:
        left = float(np.array(f.truth["corners"])[:, 0].min())
        near, cut = shifted(f.frame, empty, -left + 3), shifted(f.frame, empty, -left - 10)
        seen = silhouette_in_view(cv2.cvtColor(near, cv2.COLOR_GRAY2BGR), belt, 0.5)
        assert edge_contact(seen[0])[0] > 0  # the silhouette does reach the edge, with belt
        assert prep(near).verdict is None, prep(near).reason
        p = prep(cut)
        assert p.verdict == "ERROR" and "not wholly in view" in p.reason and "left edge" in p.reason, p.reason


def test_calibration_names_the_frames_it_refuses(trained_model, mini_data, tmp_path):
    """A colour frame among a mono camera's, or a frame with no part, is refused by its file name."""
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(simulate(mini_data, 4, 0, 0, seed=21, ok_from="train/good", geometry=MONO_LINE)):
        cv2.imwrite(str(calib / f"mono_{i}.png"), f.frame)
    (colour,) = simulate(mini_data, 1, 0, 0, seed=22, ok_from="train/good")
    cv2.imwrite(str(calib / "other_camera.png"), colour.frame)
    with pytest.raises(ValueError, match=r"other_camera.png are colour, the others mono"):
        calibrate_line(calib, trained_model, tmp_path / "line.yaml")
    (calib / "other_camera.png").unlink()
    (empty,) = simulate(mini_data, 0, 0, 1, seed=23, geometry=MONO_LINE)
    cv2.imwrite(str(calib / "mono_9_empty.png"), empty.frame)
    with pytest.raises(ValueError, match=r"mono_9_empty.png shows no part distinct from the belt"):
        calibrate_line(calib, trained_model, tmp_path / "line.yaml")
