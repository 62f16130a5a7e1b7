import numpy as np
import pytest

from engines import metrics


def test_roc_auc_known_values():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert metrics.roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.9]))


def _case(seed=0):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(4):
        m = np.zeros((64, 64), bool)
        m[10:20, 10:30] = True
        m[40:44, 40:44] = i % 2 == 0
        masks.append(m)
        maps.append((rng.random((64, 64)) * 0.5 + m * rng.random((64, 64)) * 0.6).astype(np.float32))
    return masks, maps


def test_pixel_auroc_matches_rank_auroc():
    masks, maps = _case()
    exact = metrics.roc_auc(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]))
    assert abs(metrics.pixel_auroc(masks, maps) - exact) < 2e-3


def test_aupro_perfect_and_random():
    masks, maps = _case()
    assert metrics.aupro(masks, [m.astype(np.float32) for m in masks]) > 0.99
    noise = [np.random.default_rng(i).random(m.shape).astype(np.float32) for i, m in enumerate(masks)]
    assert 0.05 < metrics.aupro(masks, noise) < 0.25  # random guessing: PRO ~ FPR, area ~0.15


def test_region_pro_scores_average_to_aupro():
    """Each region's own score: their mean is AUPRO, a region the map ignores scores lowest."""
    masks, maps = _case()
    maps[1] = np.where(masks[1], 0.0, maps[1]).astype(np.float32)  # image 1's region is missed outright
    own, image = metrics.region_pro_scores(masks, maps)
    assert len(own) == 6 and list(image) == [0, 0, 1, 2, 2, 3]  # two regions in images 0 and 2
    assert abs(own.mean() - metrics.aupro(masks, maps)) < 1e-12
    assert image[np.argmin(own)] == 1 and own.min() < 0.01


def test_f1_and_threshold():
    masks, maps = _case()
    t, f1 = metrics.best_f1_threshold(masks, maps)
    assert abs(metrics.f1_at(masks, maps, t) - f1) < 1e-2
    assert metrics.f1_at(masks, [m.astype(np.float32) for m in masks], 0.5) == 1.0


def test_line_score_ranking_at_the_false_alarm_budget():
    from pipeline.benchmark import false_alarm_bar, score_ranking

    ok = [0.1 * i for i in range(20)]  # 0.0 .. 1.9; 5 % of 20 = one OK part may alarm
    ng = [1.85, 1.95, 2.5, 0.5, None]  # None: a part the line never scored (counts as missed)
    r = score_ranking(ng, ok)
    assert r["threshold_at_fa_budget"] == pytest.approx(1.8)  # above the second-highest OK score
    assert r["ng_recall_at_fa_0.05"] == pytest.approx(3 / 5)
    pairs = sum(sum((n > o) + 0.5 * (n == o) for o in ok) for n in ng if n is not None)
    assert r["score_auroc"] == pytest.approx(pairs / 100, abs=1e-4)
    assert score_ranking([0.9], []) == {}
    assert false_alarm_bar(ok) == pytest.approx(1.8)
    assert false_alarm_bar([None, 0.3], fa_budget=0.5) == float("-inf")  # may flag one: the unscored part is the bar
    assert false_alarm_bar([0.3], fa_budget=1.0) == float("-inf")
    # the same operating point on an image split (evaluate): recall at <= 5 % false alarms
    labels = np.array([False] * 20 + [True] * 4)
    scores = np.array(ok + [1.85, 1.95, 2.5, 0.5])
    assert metrics.recall_at_false_alarms(labels, scores) == pytest.approx(3 / 4)
    assert metrics.recall_at_false_alarms(labels, scores, fa_budget=0.0) == pytest.approx(2 / 4)  # above 1.9
    assert np.isnan(metrics.recall_at_false_alarms(labels[:20], scores[:20]))


def test_line_accuracy_reads_truth_and_scores(tmp_path):
    import json

    from pipeline.benchmark import line_accuracy

    truth = [{"file": f"{i}.png", "verdict": v} for i, v in enumerate(["OK", "OK", "NG", "NG", "NO_PART"])]
    (tmp_path / "truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth))
    results = [{"source_name": "0.png", "verdict": "OK", "score": 0.2}, {"source_name": "1.png", "verdict": "NG", "score": 0.7},
               {"source_name": "2.png", "verdict": "NG", "score": 0.9}, {"source_name": "3.png", "verdict": "OK", "score": 0.3},
               {"source_name": "4.png", "verdict": "NO_PART", "score": None}]
    acc = line_accuracy(results, tmp_path / "truth.jsonl")
    assert acc["ng_recall"] == 0.5 and acc["false_alarm_rate"] == 0.5 and acc["verdict_matches_truth"] == 0.6
    assert acc["score_auroc"] == pytest.approx(0.75) and acc["ng_recall_at_fa_0.05"] == 0.5
    assert line_accuracy(results, tmp_path / "missing.jsonl") is None
    assert acc["localisation"] == {}  # no truth boxes in this truth file
    # What limits the recall: with two OK parts none may alarm, so the stronger one (0.7) sets the
    # bar, and the NG part at 0.3 is the one missed below it.
    assert [r["file"] for r in acc["ok_parts_setting_the_bar"]] == ["1.png"]
    assert [(r["file"], r["score"]) for r in acc["ng_parts_missed_at_the_bar"]] == [("3.png", 0.3)]


def test_budget_parts_name_what_sets_the_bar_and_what_it_misses():
    """budget_parts: the OK parts that may alarm and the one that sets the bar, strongest first; the
    NG parts at or below it (an unscored one first), weakest first; source image and defect type
    from the truth; and the benchmark's text names them."""
    from engines.benchmark import format_results
    from pipeline.benchmark import budget_parts

    ok = [0.1 * i for i in range(20)]  # 5 % of 20: one may alarm, the second-highest (1.8) sets the bar
    truth = {f"ok{i}.png": {"verdict": "OK", "defect_type": "good", "source_image": f"g{i}.jpg"} for i in range(20)}
    truth.update({f"ng{i}.png": {"verdict": "NG", "defect_type": k, "source_image": f"d{i}.jpg"}
                  for i, k in enumerate(["blowhole", "crack", "break", "blowhole"])})
    results = ([{"source_name": f"ok{i}.png", "score": s} for i, s in enumerate(ok)]
               + [{"source_name": "ng0.png", "score": 1.8}, {"source_name": "ng1.png", "score": 1.95},
                  {"source_name": "ng2.png", "score": 0.4}, {"source_name": "ng3.png", "score": None}])
    parts = budget_parts(results, truth)
    assert [(r["file"], r["source_image"]) for r in parts["ok_parts_setting_the_bar"]] == [("ok19.png", "g19.jpg"),
                                                                                       ("ok18.png", "g18.jpg")]
    assert [(r["file"], r["defect_type"], r["score"]) for r in parts["ng_parts_missed_at_the_bar"]] == [
        ("ng3.png", "blowhole", None), ("ng2.png", "break", 0.4), ("ng0.png", "blowhole", 1.8)]  # a tie with the bar misses
    assert budget_parts(results[:20], truth) == {}  # no NG part: nothing to say
    text = format_results({"model": "m", "arch": "tiny_unet", "width": 16, "precision": "fp32", "parameters": 1e6,
                           "gmac_per_tile": 0.6, "results": [], "skipped": [], "pipeline": {
        "sequence": "s", "pace": "as fast as possible", "frames": 24, "frames_per_s": 1.0, "latency_ms": {}, "stage_share": {},
        "overhead_ms_per_frame": {}, "verdicts": {}, "accuracy": {"score_auroc": 0.9, **parts}}})
    assert "OK parts at or above the 5 % bar: ok19.png (g19.jpg) 1.9, ok18.png (g18.jpg) 1.8" in text
    assert "NG parts missed at that bar: 3 (blowhole 2, break 1): ng3.png (d3.jpg, blowhole) None" in text
    assert "ok_parts_setting_the_bar" not in text  # the lists are not printed twice


def test_defect_localisation_against_truth_boxes():
    from pipeline.benchmark import defect_localisation

    truth = {"a.png": {"verdict": "NG", "boxes": [[10, 10, 20, 20], [100, 100, 10, 10]]},
             "b.png": {"verdict": "NG", "boxes": [[0, 0, 50, 50]]},
             "c.png": {"verdict": "NG", "boxes": [[0, 0, 5, 5]]},
             "d.png": {"verdict": "OK", "boxes": []}}
    results = [
        {"source_name": "a.png", "verdict": "NG", "defects": [{"bbox": [15, 15, 5, 5]}, {"bbox": [60, 60, 5, 5]}]},
        {"source_name": "b.png", "verdict": "NG", "defects": [{"bbox": [200, 200, 5, 5]}, {"bbox": [40, 40, 20, 20]}]},
        {"source_name": "c.png", "verdict": "OK", "defects": []},   # missed: not a localisation case
        {"source_name": "d.png", "verdict": "NG", "defects": [{"bbox": [0, 0, 9, 9]}]},  # false alarm: neither
    ]
    loc = defect_localisation(results, truth)
    assert loc["flagged_ng_parts"] == 2 and loc["defects_per_flagged_ng_part"] == 2.0
    assert loc["truth_boxes_hit"] == pytest.approx(2 / 3, abs=1e-4)  # a's first box and b's box
    assert loc["defects_on_truth"] == 0.5 and loc["top_defect_on_truth"] == 0.5
    assert loc["top_defect_iou"] == pytest.approx((25 / 400) / 2, abs=1e-4)  # a's top box inside its truth box; b's off


def test_line_summary_over_several_sequences():
    """benchmark --pipeline SEQ SEQ ...: recall per sequence with mean / min / max, mean line AUROC,
    speed ranges, misses by defect type, and which OK source images set the bar how often; a
    sequence without truth counts for speed only. The text report prints every run and the summary."""
    from engines.benchmark import format_results
    from pipeline.benchmark import line_summary

    def run(name, recall, auroc, fps, overhead, missed, bar):
        acc = {"score_auroc": auroc, "ng_recall_at_fa_0.05": recall,
               "ng_parts_missed_at_the_bar": [{"file": "f", "source_image": "d.jpg", "defect_type": k, "score": 0.1} for k in missed],
               "ok_parts_setting_the_bar": [{"file": "f", "source_image": b, "defect_type": "good", "score": 0.5} for b in bar]}
        return {"sequence": name, "pace": "as fast as possible", "frames": 10, "frames_per_s": fps, "latency_ms": {},
                "stage_share": {}, "overhead_ms_per_frame": {"p50": overhead}, "verdicts": {}, "accuracy": acc}

    runs = [run("a", 0.9, 0.98, 15.0, 3.9, ["blowhole", "crack"], ["g1.jpg", "g2.jpg"]),
            run("b", 0.8, 0.96, 14.0, 4.2, ["blowhole"], ["g1.jpg", "g3.jpg"]),
            {"sequence": "c", "frames": 5, "frames_per_s": 16.0, "overhead_ms_per_frame": {"p50": 3.5}}]
    s = line_summary(runs)
    assert (s["sequences"], s["judged"]) == (3, 2)
    assert s["ng_recall_at_fa_0.05"] == {"per_sequence": [0.9, 0.8], "mean": 0.85, "min": 0.8, "max": 0.9}
    assert s["score_auroc_mean"] == pytest.approx(0.97)
    assert s["frames_per_s"] == [14.0, 16.0] and s["overhead_ms_per_frame_p50"] == [3.5, 4.2]
    assert s["ng_missed_at_the_bar_by_type"] == {"blowhole": 2, "crack": 1}
    assert list(s["ok_sources_setting_the_bar"].items())[0] == ("g1.jpg", 2)
    text = format_results({"model": "m", "arch": "tiny_unet", "width": 16, "precision": "fp32", "parameters": 1e6,
                           "gmac_per_tile": 0.6, "results": [], "skipped": [], "pipeline": runs[0],
                           "pipelines": runs[:2], "line_summary": s})
    assert "pipeline over a " in text and "pipeline over b " in text
    assert "NG recall at <= 5 % false alarms: 0.90 / 0.80; mean 0.850 (min 0.80, max 0.90)" in text
    assert "missed at the bar: blowhole 2, crack 1" in text and "g1.jpg 2" in text


def test_benchmark_names_the_frames_without_a_verdict_and_why():
    """A pipeline figure counted over frames some of which got NO_PART or ERROR says which frames
    and the reason their stage gave, in the JSON report and in its text."""
    from engines.benchmark import format_results
    from pipeline.benchmark import without_verdict

    results = [{"frame_id": 0, "source_name": "0.png", "verdict": "OK", "reason": ""},
               {"frame_id": 1, "source_name": "1.png", "verdict": "ERROR", "reason": "stitch failed: ValueError()"},
               {"frame_id": 2, "source_name": "2.png", "verdict": "NG", "reason": ""},
               {"frame_id": 3, "source_name": "3.png", "verdict": "NO_PART",
                "reason": "no part silhouette larger than preprocess.min_part_area"},
               {"frame_id": 4, "source_name": "4.png", "verdict": "DROPPED"}]
    missing = without_verdict(results)
    assert [(r["frame_id"], r["verdict"]) for r in missing] == [(1, "ERROR"), (3, "NO_PART"), (4, "DROPPED")]
    assert missing[0]["reason"] == "stitch failed: ValueError()" and missing[2]["reason"] == ""
    text = format_results({"model": "m", "arch": "tiny_unet", "width": 16, "precision": "fp32", "parameters": 1e6,
                           "gmac_per_tile": 0.6, "results": [], "skipped": [], "pipeline": {
        "sequence": "s", "pace": "as fast as possible", "frames": 5, "frames_per_s": 1.0, "latency_ms": {},
        "stage_share": {}, "overhead_ms_per_frame": {}, "verdicts": {}, "without_verdict": missing}})
    assert "  frame 1 (1.png): ERROR, stitch failed: ValueError()" in text
    assert "  frame 3 (3.png): NO_PART, no part silhouette larger than preprocess.min_part_area" in text
    assert "  frame 4 (4.png): DROPPED, no reason given" in text
