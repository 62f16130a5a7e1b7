"""commission_line: one command from recorded OK frames to a line config, a line-fitted model and a
threshold set on held-out frames, with its report. Real frames (the simulated line of the bundled
test parts), the trained fixture model, the real export and the real line scoring."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.commission import (choose_threshold, frames_needed, not_inspected_kinds, not_inspected_note,
                                   rate_upper_bound, split_frames, too_few_note)
from pipeline.config import load_config
from tools import commission_line as commission_cli
from tools import simulate_line as simulate_cli

ROOT = Path(__file__).resolve().parent.parent


def test_threshold_gives_at_most_the_target_share_of_alarms():
    scores = list(np.linspace(0.1, 0.5, 200))
    for target in (0.01, 0.05, 0.1):
        t, alarms = choose_threshold(scores, target)
        assert alarms == sum(s >= t for s in scores) <= int(target * 200)
        assert alarms == int(target * 200)  # and no fewer than it may: the threshold is not needlessly high
    t, alarms = choose_threshold([0.2, 0.3], 0.01)
    assert alarms == 0 and t > 0.3
    assert rate_upper_bound(0, 299) == pytest.approx(0.01, abs=2e-4)  # zero alarms in 299 frames: below 1 %
    assert rate_upper_bound(3, 299) > 0.01
    assert frames_needed(0.01) == 299 and frames_needed(0.05) == 59


def test_too_few_frames_is_said_only_when_no_alarm_could_show_the_target():
    # 143 held-out frames and 4 alarms at a 3 % target: the bound (6.3 %) is above the target, as it is
    # whenever the threshold allows alarms, and more frames would not change that; they are not too few
    assert frames_needed(0.03) == 99 and rate_upper_bound(4, 143) > 0.03
    assert too_few_note(143, 0.03, 0.3) is None and too_few_note(99, 0.03, 0.3) is None
    note = too_few_note(88, 0.03, 0.3)
    assert "88 scored" in note and "at least 99" in note and "about 330 recorded frames" in note


def test_frames_not_inspected_are_counted_by_kind_with_what_to_change():
    reasons = ["ERROR (part not wholly in view: its surface lies on the frame's top edge for 2.5% of its outline)",
               "ERROR (part not wholly in view: its surface lies on the frame's left edge for 4.0% of its outline)",
               "NO_PART (no part on the belt)"]
    assert not_inspected_kinds(reasons) == {"ERROR: part not wholly in view": 2, "NO_PART: no part on the belt": 1}
    note = not_inspected_note(reasons, 150)
    assert note.startswith("warning: 3 of 150 held-out OK frames (2.0 %)")
    assert "2 ERROR: part not wholly in view, 1 NO_PART: no part on the belt" in note and "wider view" in note
    assert "wider view" not in not_inspected_note(reasons[2:], 150)


def test_split_is_fixed_by_name_and_holds_out_about_the_share():
    files = [Path(f"{i:06d}.png") for i in range(1000)]
    fit, held = split_frames(files)
    assert 250 < len(held) < 350 and len(fit) + len(held) == 1000
    assert split_frames(list(reversed(files)))[1] == list(reversed(held))  # the same frames, whatever the order


@pytest.mark.slow
def test_commission_line_writes_a_line_that_runs(trained_model, mini_data, tmp_path):
    pytest.importorskip("torch")
    frames = tmp_path / "ok"
    assert simulate_cli.main(["--data", str(mini_data), "--out", str(frames), "--ok", "30", "--ng", "0", "--empty", "0",
                              "--ok-from", "train/good", "--seed", "3"]) == 0
    (frames / "sequence.jsonl").unlink()  # a folder of frames, as a user records them
    out = tmp_path / "line7.yaml"
    assert commission_cli.main(["--frames", str(frames), "--model", str(trained_model), "--out", str(out),
                                "--target-false-alarms", "0.05", "--part-images", str(mini_data)]) == 0
    cfg = load_config(out)
    model = tmp_path / "line7_model"
    assert Path(cfg.inference.model) == model.resolve()
    meta = json.loads((model / "model.json").read_text())
    assert meta["line_grids"]  # a memory per tile position of this line
    report = json.loads((tmp_path / "line7.commissioning.json").read_text())
    assert (tmp_path / "line7.commissioning.png").stat().st_size > 10_000
    n = report["held_out_scored"]
    assert report["fit_frames"] + report["held_out_frames"] == 30 and n >= 5
    assert report["held_out_alarms"] <= int(0.05 * n)
    assert cfg.decision.image_threshold == pytest.approx(report["threshold"], abs=1e-4)
    assert sum(s >= report["threshold"] for s in report["held_out_scores"]) == report["held_out_alarms"]
    # the frames that set the threshold, by name: its alarms and the next one down
    highest = report["highest_held_out"]
    assert [h["score"] for h in highest] == sorted(report["held_out_scores"], reverse=True)[:len(highest)]
    assert len(highest) == max(3, report["held_out_alarms"] + 1) and all((frames / h["file"]).is_file() for h in highest)
    assert highest[-1]["score"] < report["threshold"] <= highest[0]["score"] or report["held_out_alarms"] == 0
    assert f"the held-out frames that set it: {highest[0]['file']}" in out.read_text()
    assert not report["enough_data"] and "too few held-out frames" in out.read_text()  # 59 needed for 5 %
    assert ("had no part inspected" in out.read_text()) == bool(report["not_located"])
    assert np.asarray(report["tiles_per_position"]).sum() > 0
    # the simulated camera sees parts of about 300 px; the part images are larger: warned when under 0.9 of them
    from calibration.commission import part_image_scale

    assert report["part_long_side_px"] == pytest.approx(300, rel=0.1)
    assert report["model_long_side_px"] == part_image_scale(mini_data)[0]
    low = report["part_long_side_px"] < 0.9 * report["model_long_side_px"]
    assert ("warning: the camera sees the parts at a long side of" in out.read_text()) == low
    assert not (tmp_path / "line7.commissioning").exists()  # its working folder cleaned up
    seq = tmp_path / "seq"
    assert simulate_cli.main(["--data", str(mini_data), "--out", str(seq), "--ok", "2", "--ng", "2", "--empty", "1",
                              "--seed", "5"]) == 0
    run = subprocess.run([sys.executable, "-m", "tools.run_pipeline", "--config", str(out), "--source", f"replay:{seq}",
                          "--results", str(tmp_path / "r.jsonl"), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 5


def test_calibration_leaves_out_frames_whose_part_runs_out_of_view(trained_model, mini_data, tmp_path):
    """A recorded frame whose part the frame's edge cuts is left out of calibration (the line would
    not inspect it, and its size is the cut one), and the config says so; with fewer than 3 frames
    of a whole part left, calibration refuses and says why."""
    import cv2

    from calibration.line import calibrate_line
    from pipeline.sim import simulate
    from tests.frames import shifted

    frames = simulate(mini_data, 6, 0, 1, seed=5, ok_from="train/good")
    empty = next(f.frame for f in frames if f.truth["verdict"] == "NO_PART")
    parts = [f for f in frames if f.truth["verdict"] == "OK"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for folder in (whole, cut):
        folder.mkdir()
        for i, f in enumerate(parts[:5]):
            cv2.imwrite(str(folder / f"{i:02d}.png"), f.frame)
    right = float(np.array(parts[5].truth["corners"])[:, 0].max())
    cv2.imwrite(str(cut / "05.png"), shifted(parts[5].frame, empty, 640 - right + 40))  # 40 px past the right edge
    base = calibrate_line(whole, trained_model, tmp_path / "whole.yaml")
    cal = calibrate_line(cut, trained_model, tmp_path / "cut.yaml")
    assert base.cut == [] and cal.cut == ["05.png"]
    assert cal.part_long_side_px == base.part_long_side_px  # the cut part's size did not enter
    assert "05.png left out: the part runs out of view" in (tmp_path / "cut.yaml").read_text()
    few = tmp_path / "few"
    few.mkdir()
    for i, f in enumerate(parts[:4]):
        left = float(np.array(f.truth["corners"])[:, 0].min())
        cv2.imwrite(str(few / f"{i:02d}.png"), f.frame if i < 2 else shifted(f.frame, empty, -left - 40))
    with pytest.raises(ValueError, match=r"the part runs out of view in 02.png, 03.png, and 2 frame\(s\) show one"):
        calibrate_line(few, trained_model, tmp_path / "few.yaml")


def test_commission_line_refuses_too_few_frames(trained_model, mini_data, tmp_path, capsys):
    frames = tmp_path / "ok"
    assert simulate_cli.main(["--data", str(mini_data), "--out", str(frames), "--ok", "5", "--ng", "0", "--empty", "0",
                              "--ok-from", "train/good"]) == 0
    capsys.readouterr()
    assert commission_cli.main(["--frames", str(frames), "--model", str(trained_model),
                                "--out", str(tmp_path / "l.yaml")]) == 2
    err = capsys.readouterr().err
    assert "5 frames; commissioning needs at least 20" in err and "record_sequence" in err


@pytest.mark.slow
def test_commission_bench_runs_a_random_line_end_to_end(trained_model, mini_data, tmp_path, capsys):
    pytest.importorskip("torch")
    from tools import commission_bench

    code = commission_bench.main(["--data", str(mini_data), "--model", str(trained_model), "--lines", "4",
                                  "--out", str(tmp_path / "cb"), "--fit-frames", "30", "--ok", "3", "--ng", "3"])
    assert code in (0, 1)  # 1: the bar missed (a model trained for a few steps)
    (row,) = json.loads((tmp_path / "cb" / "summary.json").read_text())
    assert row["seed"] == 4 and row["frames"] == row["frames_expected"] == 11 and row["exit_code"] == 0
    table = capsys.readouterr().out
    assert "NG recall" in table and "false al." in table and "best rec." in table and "11/11" in table
    assert 0.0 <= row["ng_recall_at_best_threshold"] <= 1.0
    assert 0.0 <= row["detector_auroc"] <= 1.0 and 0.0 <= row["detector_recall_at_best_threshold"] <= 1.0
    assert "det. rec." in table
    folder = tmp_path / "cb" / "line004"
    fit_parts = {p.name for p in (folder / "product" / "A" / "train" / "good").iterdir()}
    held_parts = {p.name for p in (folder / "product" / "B" / "train" / "good").iterdir()}
    assert fit_parts and held_parts and not fit_parts & held_parts  # held-out frames show parts the memory lacks


def test_the_detector_alone_scores_a_line_s_own_test_parts_once_each(trained_model, mini_data):
    """The bench's reference: the same parts a line is judged on, each scored once on its own image
    by the model as shipped, ranked as the line's scores are."""
    from calibration.bench import PartImageScores, detector_alone
    from engines.backends import load_backend
    from engines.data import read_image
    from engines.detector import Detector
    from pipeline.sim import simulate

    truths = [f.truth for f in simulate(mini_data, 4, 4, 2, seed=3)]
    scorer = PartImageScores(mini_data, trained_model)
    alone = detector_alone(truths, scorer)
    parts = {(t["defect_type"], t["source_image"]) for t in truths if t["verdict"] != "NO_PART"}
    assert set(scorer.scores) == parts  # empty frames are not parts; each image scored once
    kind, name = sorted(parts)[0]
    det = Detector(load_backend("onnxruntime", trained_model))
    own = det.predict(read_image(mini_data / "test" / kind / name, det.meta.in_channels)).score
    assert scorer(kind, name) == pytest.approx(own, abs=1e-6)
    assert 0.0 <= alone["score_auroc"] <= 1.0 and "ng_recall_at_fa_0.05" in alone
    # a ranking of its own: OK parts all below the NG parts give AUROC 1 and full recall
    fake = {k: (0.9 if k[0] != "good" else 0.1) for k in parts}
    ranked = detector_alone(truths, lambda kind, name: fake[(kind, name)])
    assert ranked["score_auroc"] == 1.0 and ranked["ng_recall_at_fa_0.05"] == 1.0


def test_uneven_light_is_named_in_the_config_and_drawn_in_the_report(trained_model, mini_data, tmp_path):
    """A view lit unevenly: calibration says so in the config's header (how uneven, and that it is
    taken out), and the commissioning report draws the light over the view next to the scores."""
    import cv2

    from calibration.commission import Commissioning, _report, report_paths
    from calibration.line import calibrate_line
    from pipeline.sim import LineGeometry, simulate

    g = LineGeometry(belt_bgr=(200, 200, 200), mono=True, vignetting=0.3, sensor_noise=2.0)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(simulate(mini_data, 6, 0, 0, seed=9, ok_from="train/good", geometry=g)):
        cv2.imwrite(str(calib / f"{i:02d}.png"), f.frame)
    cal = calibrate_line(calib, trained_model, tmp_path / "line.yaml")
    shading = tuple(load_config(tmp_path / "line.yaml").preprocess.belt.shading)
    assert len(shading) == 5 and "the light is uneven across the view" in cal.notes[0]
    assert "the light is uneven across the view" in (tmp_path / "line.yaml").read_text()
    result = Commissioning(str(tmp_path / "line.yaml"), "", 0.05, 0.5, 10, 10, 10, 0, 0.0, 0.26, False,
                           held_out_scores=[0.1, 0.2, 0.3])
    widths = {}
    for name, light in (("even", ()), ("uneven", shading)):
        _report(result, np.ones((3, 2), np.int64), tmp_path / f"{name}.yaml", light, (480, 640))
        widths[name] = cv2.imread(str(report_paths(tmp_path / f"{name}.yaml")[1])).shape[1]
    assert widths["uneven"] > widths["even"]  # a third panel: the light over the view
