import cv2
import numpy as np
import pytest

from pipeline.config import BeltConfig, DecisionConfig, PreprocessConfig
from pipeline.processing import Preprocessor, decide
from pipeline.sim import belt_image, simulate
from pipeline.vision.belt import belt_mask, fit_belt
from pipeline.vision.defects import box_iou, find_defects
from pipeline.vision.locate import locate_silhouette, locate_template, order_corners
from pipeline.vision.rectify import homography_to_canonical, rectify, to_camera
from pipeline.vision.scoring import MapRule, NoveltyShare, PartTiles
from tests.frames import shifted


@pytest.fixture(scope="module")
def frames(mini_data):
    return simulate(mini_data, n_ok=4, n_ng=4, n_empty=2, seed=3)


@pytest.fixture(scope="module")
def belt(frames):
    return fit_belt([f.frame for f in frames[:3]])


def test_belt_mask_separates_part(frames, belt):
    f = next(f for f in frames if "corners" in f.truth)
    mask = belt_mask(f.frame, belt)
    inside = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(inside, np.round(np.array(f.truth["corners"])).astype(np.int32), 1)
    eroded = cv2.erode(inside, np.ones((9, 9), np.uint8)) > 0
    outside = cv2.dilate(inside, np.ones((9, 9), np.uint8)) == 0
    assert mask[outside].mean() > 0.97  # belt is belt
    assert mask[eroded].mean() < 0.05   # part is not belt


@pytest.mark.parametrize("downscale", [1.0, 0.5])
def test_silhouette_corners_match_truth(frames, belt, downscale):
    for f in frames:
        if f.truth["verdict"] == "NO_PART":
            assert locate_silhouette(f.frame, belt, 5000, (256, 320), downscale) is None
            continue
        corners, sil = locate_silhouette(f.frame, belt, 5000, (256, 320), downscale)
        err = np.linalg.norm(corners - np.array(f.truth["corners"]), axis=1)
        assert err.max() < 8.0, err  # full-frame px, on a ~300 px part
        assert sil.shape == tuple(round(v * downscale) for v in f.frame.shape[:2])


def test_rectify_and_map_back_roundtrip(frames, belt):
    f = next(f for f in frames if f.truth["verdict"] == "OK")
    corners, _ = locate_silhouette(f.frame, belt, 5000, (256, 320))
    H = homography_to_canonical(corners, (256, 320))
    canonical = rectify(f.frame, H, (256, 320))
    assert canonical.shape == (320, 256, 3)
    pts = np.array([[0, 0], [255, 319], [100, 50]], np.float32)
    back = to_camera(pts, H)
    again = cv2.perspectiveTransform(back.reshape(-1, 1, 2), H).reshape(-1, 2)
    assert np.abs(again - pts).max() < 1e-2


def test_find_defects_in_camera_coordinates():
    H = np.array([[1, 0, -50], [0, 1, -30], [0, 0, 1]], np.float64)  # camera -> canonical: shift
    amap = np.zeros((320, 256), np.float32)
    amap[100:120, 60:90] = 0.9
    amap[5, 5] = 0.9  # one pixel: below min area
    defects = find_defects(amap, np.ones_like(amap, np.uint8), H, 0.5, 20)
    assert len(defects) == 1
    assert box_iou(defects[0]["bbox"], [110, 130, 30, 20]) > 0.8
    assert defects[0]["score"] == pytest.approx(0.9) and 500 < defects[0]["area_px"] < 700


def test_find_defects_scores_and_orders_by_the_score_map():
    """Regions come from the (smoothed) map; with a score map (the map before smoothing) each is
    scored by its peak there, strongest first: a small sharp defect ahead of a broad faint region."""
    amap = np.zeros((320, 256), np.float32)
    amap[20:80, 20:120] = 0.6  # broad, faint
    amap[200:206, 100:106] = 0.55  # small: its sharp peak was smoothed away
    sharp = amap.copy()
    sharp[203, 103] = 1.0
    mask = np.ones_like(amap, np.uint8)
    plain = find_defects(amap, mask, np.eye(3), 0.5, 20)
    assert [d["score"] for d in plain] == pytest.approx([0.6, 0.55])
    by_peak = find_defects(amap, mask, np.eye(3), 0.5, 20, score_map=sharp)
    assert [d["score"] for d in by_peak] == pytest.approx([1.0, 0.6])
    assert by_peak[0]["bbox"] == plain[1]["bbox"] and by_peak[1]["bbox"] == plain[0]["bbox"]


def test_strongest_region_outlines_where_the_map_peaks():
    """An NG part with nothing at the pixel threshold: the region at or above half the map's peak on
    the part, however small, marked as below the threshold; a fainter bump elsewhere is left out."""
    from pipeline.vision.defects import strongest_region

    amap = np.zeros((320, 256), np.float32)
    amap[100:103, 60:63] = 0.03  # 9 px: under min_defect_area, and under any useful pixel threshold
    amap[250:270, 200:230] = 0.01
    mask = np.ones_like(amap, np.uint8)
    assert find_defects(amap, mask, np.eye(3), 0.05, 20) == []
    [weak] = strongest_region(amap, mask, np.eye(3))
    assert weak["below_pixel_threshold"] is True and weak["score"] == pytest.approx(0.03)
    assert box_iou(weak["bbox"], [60, 100, 3, 3]) > 0.3
    assert strongest_region(np.zeros_like(amap), mask, np.eye(3)) == []
    assert strongest_region(amap, np.zeros_like(mask), np.eye(3)) == []  # no part


def test_strongest_region_follows_the_smoothed_peak_not_a_lone_sharp_pixel():
    """The score reads the smoothed map, so the weak region is where that peaks: a single sharp
    pixel elsewhere (a higher value before smoothing) does not pull the outline away from it."""
    from pipeline.vision.defects import strongest_region

    amap = np.zeros((200, 200), np.float32)
    amap[10:16, 100:112] = 0.04  # the smoothed map's peak: a notch at the top edge
    amap[120:123, 50:53] = 0.03  # a fainter bump, above half the peak
    sharp = amap.copy()
    sharp[121, 51] = 0.5  # one hot pixel before smoothing
    [weak] = strongest_region(amap, np.ones_like(amap, np.uint8), np.eye(3), score_map=sharp)
    assert weak["bbox"] == [100, 10, 12, 6]


def test_region_score_is_the_part_score_from_that_region_alone(frames, belt):
    """A defect's part_score: the part's score with the map inside the region and the tiles that
    touch it, every other tile as plain as the part's plainest; never above the part's score."""
    from pipeline.vision.scoring import tiles_touching

    prep = Preprocessor(PreprocessConfig(belt=BeltConfig(**belt.to_config())))
    p = prep(next(f for f in frames if f.truth["verdict"] == "OK").frame)
    maps = np.zeros((len(p.tiles), 1, 128, 128), np.float32)
    y0, x0 = p.grid.origins[p.tile_index[0]]
    maps[0, 0, 40:60, 40:60] = 0.9  # a defect inside the first kept tile
    scores = np.full(len(maps), 0.1, np.float32)
    scores[0] = 0.7
    scores[-1] = 0.5  # a novel tile elsewhere, no map there
    v = decide(p.part(maps, scores), p.H, DecisionConfig(), 0.5, 0.3, rule=MapRule(map_score_weight=0.5, fine_top_k=2))
    [d] = v.defects
    assert 0.0 < d["part_score"] <= v.score
    region = np.zeros(p.part_mask.shape, bool)
    region[y0 + 40:y0 + 60, x0 + 40:x0 + 60] = True
    touching = tiles_touching(region, p.grid, p.tile_index)
    assert touching[0] and not touching[-1]
    # What it would be with only the tiles that touch the region and the plainest score elsewhere:
    alone = np.where(touching, scores, 0.1).astype(np.float32)
    expected = MapRule(map_score_weight=0.5, fine_top_k=2).score(np.where(region, v.anomaly_map, 0), alone, None, 0.0)
    assert d["part_score"] == pytest.approx(expected, abs=0.02)
    assert d["part_score"] < v.score  # the other novel tile (0.5) is part of the part's score, not the region's


def test_find_defects_merges_regions_closer_than_the_gap():
    H = np.eye(3)
    amap = np.zeros((200, 200), np.float32)
    amap[50:70, 50:70] = 0.9
    amap[50:70, 75:95] = 0.7   # 5 px to the right of the first
    amap[150:170, 150:170] = 0.8  # far from both
    part = np.ones_like(amap, np.uint8)
    apart = find_defects(amap, part, H, 0.5, 20)
    assert len(apart) == 3
    merged = find_defects(amap, part, H, 0.5, 20, merge_gap=8, core_share=0.0)
    assert len(merged) == 2 and merged[0]["score"] == pytest.approx(0.9)  # the peak of the merged pair
    assert box_iou(merged[0]["bbox"], [50, 50, 45, 20]) > 0.85  # one outline around both
    assert 800 < merged[0]["area_px"] < 1000  # the outline's area, gap included (2 x 400 + 100)
    # Merging stays inside the part: a gap the part does not cover is not bridged.
    part[:, 70:75] = 0
    assert len(find_defects(amap, part, H, 0.5, 20, merge_gap=8, core_share=0.0)) == 3


def test_find_defects_pools_fragments_and_reports_each_at_its_own_extent():
    """Fragments closer than the gap count together towards the minimum area; what is reported is
    where the group's map is at least half its peak, piece by piece, not the group's outline."""
    part = np.ones((200, 200), np.uint8)
    frags = np.zeros((200, 200), np.float32)
    frags[50:53, 50:54] = 0.9  # 12 px each: under min_area alone
    frags[50:53, 58:62] = 0.8
    assert find_defects(frags, part, np.eye(3), 0.5, 20) == []
    [one] = find_defects(frags, part, np.eye(3), 0.5, 20, merge_gap=8)  # pooled; the peak's piece is kept
    assert one["bbox"] == [50, 50, 4, 3] and one["score"] == pytest.approx(0.9)
    # A small sharp blob 3 px from a broad raised area (one region at the pixel threshold once merged):
    amap = np.full((200, 200), 0.0, np.float32)
    amap[20:120, 20:180] = 0.6
    amap[123:133, 90:100] = 1.0
    whole = find_defects(amap, part, np.eye(3), 0.5, 20, merge_gap=8, core_share=0.0)
    assert len(whole) == 1 and box_iou(whole[0]["bbox"], [20, 20, 160, 113]) > 0.9
    own = find_defects(amap, part, np.eye(3), 0.5, 20, merge_gap=8)
    assert [d["bbox"] for d in own] == [[90, 123, 10, 10], [20, 20, 160, 100]]
    assert [d["score"] for d in own] == pytest.approx([1.0, 0.6])


def test_order_corners_is_rotation_stable():
    rect = np.array([[10, 10], [110, 10], [110, 210], [10, 210]], np.float32)
    for shift in range(4):
        assert np.allclose(order_corners(np.roll(rect, shift, axis=0), (100, 200)), rect)


def test_order_corners_keeps_an_about_square_part_upright():
    """A part 104 wide and 100 tall, turned 10 degrees, on a portrait canonical: its long side is
    horizontal by 4 %, which is noise, so it must not be turned a quarter (the first corner stays
    the camera's top left); a part 150 wide is turned so that its long side runs down."""
    def quad(w: float, h: float) -> np.ndarray:
        a = np.deg2rad(10)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return (np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32) - [w / 2, h / 2]) @ rot.T + [300, 200]

    square = quad(104, 100)
    assert np.allclose(order_corners(square, (224, 296)), square, atol=1e-4)
    wide = quad(150, 100)
    assert np.allclose(order_corners(wide, (224, 296)), np.roll(wide, -1, axis=0), atol=1e-4)


def test_canonical_view_turns_and_warps_a_part_image_as_the_line_would():
    from pipeline.vision.rectify import canonical_view

    wide = np.zeros((50, 100), np.uint8)
    wide[:, 90:] = 255  # bright right edge
    view = canonical_view(wide, (224, 296))
    assert view.shape == (296, 224)  # long side along the canonical long side
    assert view[:20].mean() > 250 and view[-20:].max() == 0  # the right edge became the top
    square = np.zeros((100, 104), np.uint8)
    square[:10] = 255  # bright top edge of an about square part
    view = canonical_view(square, (224, 296))
    assert view[:20].mean() > 250 and view[-20:].max() == 0  # kept upright, only stretched


def test_template_mode_locates_part(mini_data):
    from engines.data import read_image

    part = read_image(next((mini_data / "test" / "good").iterdir()), 1)
    part = cv2.resize(part, (200, 240))
    rng = np.random.default_rng(0)
    frame = belt_image(480, 640, rng)
    frame[100:340, 300:500] = part[..., None]
    found = locate_template(frame, part, [0.9, 1.0, 1.1], 0.5, 0.5)
    assert found is not None
    corners, score = found
    assert np.abs(corners[0] - [300, 100]).max() <= 4 and score > 0.8
    assert locate_template(belt_image(480, 640, rng), part, [1.0], 0.5, 0.5) is None


def test_something_seen_but_too_small_for_a_part_is_an_error_not_no_part(frames, belt):
    """A part the belt model tells from the belt only in part (a light part on a light belt) leaves
    a sliver under ``min_part_area``. That frame did show a part: ERROR, never NO_PART, which would
    let a defective part pass as an empty belt."""
    from dataclasses import replace

    ok = next(f for f in frames if f.truth["verdict"] == "OK")
    empty = next(f for f in frames if f.truth["verdict"] == "NO_PART").frame
    inside = np.zeros(ok.frame.shape[:2], np.uint8)
    cv2.fillConvexPoly(inside, np.round(np.array(ok.truth["corners"])).astype(np.int32), 1)
    xs = np.nonzero(inside.any(axis=0))[0]
    sliver = inside.astype(bool) & (np.arange(inside.shape[1]) < xs[0] + 14)[None, :]
    frame = np.where(sliver[..., None], ok.frame, empty)  # the rest of the part taken for belt
    cfg = PreprocessConfig(belt=BeltConfig(**belt.to_config()))
    assert 0.05 * cfg.min_part_area < sliver.sum() < cfg.min_part_area
    p = Preprocessor(cfg)(frame)
    assert p.verdict == "ERROR" and "under preprocess.min_part_area (5000)" in p.reason, p.reason
    assert Preprocessor(cfg)(empty).verdict == "NO_PART"
    assert Preprocessor(replace(cfg, min_object_fraction=1.0))(frame).verdict == "NO_PART"


def test_preprocessor_verdicts(frames, belt):
    cfg = PreprocessConfig(belt=BeltConfig(**belt.to_config()))
    prep = Preprocessor(cfg)
    for f in frames:
        p = prep(f.frame)
        if f.truth["verdict"] == "NO_PART":
            assert p.verdict == "NO_PART"
        else:
            assert p.verdict is None and p.tiles.dtype == np.uint8 and p.tiles.shape[1:] == (1, 128, 128)
    assert prep(np.zeros((5, 5, 3), np.uint8)).verdict == "ERROR"
    assert prep(np.zeros((100, 100, 4), np.uint8)).verdict == "ERROR"
    assert prep(np.zeros((100, 100), np.float32)).verdict == "ERROR"


def test_decide_outlines_defect_through_homography(frames, belt):
    cfg = PreprocessConfig(belt=BeltConfig(**belt.to_config()))
    prep = Preprocessor(cfg)
    f = next(f for f in frames if f.truth["verdict"] == "OK")
    p = prep(f.frame)
    maps = np.zeros((len(p.tiles), 1, 128, 128), np.float32)
    # a hot spot at canonical (x 120..140, y 150..170), in every tile that covers it
    for k, idx in enumerate(p.tile_index):
        y, x = p.grid.origins[idx]
        sub = np.zeros((320 + 128, 256 + 128), np.float32)
        sub[150:170, 120:140] = 1.0
        maps[k, 0] = sub[y:y + 128, x:x + 128]
    v = decide(p.part(maps, np.ones(len(maps), np.float32)), p.H, DecisionConfig(), 0.5, 0.5)
    assert v.verdict == "NG" and len(v.defects) == 1
    expected = to_camera(np.array([[120, 150], [140, 170]], np.float32), p.H)
    cx, cy = expected.mean(axis=0)
    x, y, w, h = v.defects[0]["bbox"]
    assert x <= cx <= x + w and y <= cy <= y + h


def test_decide_smooths_the_map_before_the_threshold(frames, belt):
    """With the model's map_blur_sigma the stitched map is smoothed before the part mask, the pixel
    threshold and the defects read it: a one-pixel spike that is a defect unsmoothed spreads to
    below the threshold, and the NG part is then outlined at its strongest region, marked as below
    the threshold."""
    from pipeline.vision.scoring import blur_map

    prep = Preprocessor(PreprocessConfig(belt=BeltConfig(**belt.to_config())))
    p = prep(next(f for f in frames if f.truth["verdict"] == "OK").frame)
    maps = np.zeros((len(p.tiles), 1, 128, 128), np.float32)
    for k, idx in enumerate(p.tile_index):  # a spike at canonical (x 130, y 160) in every tile that covers it
        y, x = p.grid.origins[idx]
        if y <= 160 < y + 128 and x <= 130 < x + 128:
            maps[k, 0, 160 - y, 130 - x] = 1.0
    args = (p.part(maps, np.ones(len(maps), np.float32)), p.H, DecisionConfig(min_defect_area=1), 0.5, 0.5)
    sharp, smooth = decide(*args), decide(*args, rule=MapRule(map_blur_sigma=2.0))
    assert sharp.verdict == smooth.verdict == "NG"
    assert float(sharp.anomaly_map.max()) == pytest.approx(1.0) and len(sharp.defects) == 1
    np.testing.assert_allclose(smooth.anomaly_map[140:180, 110:150], blur_map(sharp.anomaly_map, 2.0)[140:180, 110:150],
                               atol=1e-6)
    assert float(smooth.anomaly_map.max()) < 0.05
    [weak] = smooth.defects
    assert weak["below_pixel_threshold"] is True and weak["score"] == pytest.approx(1.0)  # the spike's own peak
    expected = to_camera(np.array([[130, 160]], np.float32), p.H)[0]
    x, y, w, h = weak["bbox"]
    assert x <= expected[0] <= x + w and y <= expected[1] <= y + h
    # Above a lower threshold the spread spike is one defect as any other, scored by its own peak.
    low = decide(*args[:-2], 0.01, 0.5, rule=MapRule(map_blur_sigma=2.0))
    assert len(low.defects) == 1 and low.defects[0]["score"] == pytest.approx(1.0)
    assert "below_pixel_threshold" not in low.defects[0] and "below_pixel_threshold" not in sharp.defects[0]
    assert low.defects[0]["area_px"] > sharp.defects[0]["area_px"]


def test_decide_score_follows_the_models_map_weight(frames, belt):
    """A model with a tile memory (map_score_weight 0) is judged on its tile scores alone."""
    prep = Preprocessor(PreprocessConfig(belt=BeltConfig(**belt.to_config())))
    p = prep(next(f for f in frames if f.truth["verdict"] == "OK").frame)
    maps = np.full((len(p.tiles), 1, 128, 128), 0.9, np.float32)  # a hot map everywhere
    quiet = np.full(len(maps), 0.2, np.float32)
    args = (p.part(maps, quiet), p.H, DecisionConfig(), 0.5, 0.5)
    assert decide(*args, rule=MapRule(map_score_weight=0.0)).verdict == "OK"
    assert decide(*args, rule=MapRule(map_score_weight=0.0)).score == pytest.approx(0.2)
    assert decide(*args, rule=MapRule(map_score_weight=0.5)).verdict == "NG"


def test_score_part_is_the_score_every_caller_reads(frames, belt):
    """PartTiles splits a part's tiles by pass; score_part gives the score decide judges by."""
    from pipeline.vision.scoring import score_part

    both = Preprocessor(PreprocessConfig(belt=BeltConfig(**belt.to_config())), coarse_scale=0.5)(
        next(f for f in frames if f.truth["verdict"] == "OK").frame)
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 0.3, (len(both.tiles), 1, 128, 128)).astype(np.float32)
    scores = rng.uniform(0, 1, (len(both.tiles), 2)).astype(np.float32)
    part = both.part(maps, scores)
    n = part.n_fine
    assert 0 < n < len(maps) and (part.fine_positions < len(both.grid)).all()
    assert np.array_equal(part.coarse_positions, both.tile_index[n:] - len(both.grid))
    rule = MapRule(0.0, NoveltyShare(both=0.03, score_weight=0.5, spread="min"), coarse_map_weight=0.25,
                   fine_top_k=2, map_blur_sigma=2.0)
    cfg = DecisionConfig()
    scored = score_part(part, rule, cfg.part_erode_px)
    verdict = decide(part, both.H, cfg, 0.5, 0.0, rule)
    assert verdict.score == scored.score and np.array_equal(verdict.anomaly_map, scored.anomaly)
    assert float(scored.anomaly[~scored.inspect].max()) == 0.0


def test_coarse_pass_tiles_follow_and_score_without_touching_the_map(frames, belt):
    """With a coarse scale the preprocessor appends tiles of the half-size part (indices after the
    fine grid); decide stitches the fine maps only (unless the model gives the coarse maps a weight)
    and averages the strongest fine and coarse score."""
    cfg = PreprocessConfig(belt=BeltConfig(**belt.to_config()))
    frame = next(f for f in frames if f.truth["verdict"] == "OK").frame
    plain, both = Preprocessor(cfg)(frame), Preprocessor(cfg, coarse_scale=0.5)(frame)
    n = len(plain.tiles)
    assert np.array_equal(both.tile_index[:n], plain.tile_index) and np.array_equal(both.tiles[:n], plain.tiles)
    coarse = both.tile_index[n:]
    assert len(coarse) >= 1 and (coarse >= len(both.grid)).all()
    maps = np.zeros((len(both.tiles), 1, 128, 128), np.float32)
    maps[n:] = 1.0  # a hot coarse map must not reach the canonical map
    scores = np.zeros((len(both.tiles), 2), np.float32)
    scores[:n, 0] = 0.2
    scores[n:, 1] = 0.8
    scores[:n, 1] = scores[n:, 0] = 1.0  # the other column of each pass is ignored
    without_coarse_grid = PartTiles(maps, scores, both.tile_index, both.grid, both.part_mask)
    v = decide(without_coarse_grid, both.H, DecisionConfig(), 0.5, 0.6, rule=MapRule(0.0))
    assert v.score == pytest.approx(0.5) and v.verdict == "OK" and float(v.anomaly_map.max()) == 0.0
    # With the coarse grid and a share, the coarse scores (0.8) reach the map at that share, on the part only.
    v = decide(both.part(maps, scores), both.H, DecisionConfig(), 0.5, 0.6, MapRule(0.0, NoveltyShare(coarse=0.1)))
    assert v.score == pytest.approx(0.5) and float(v.anomaly_map.max()) == pytest.approx(0.08, abs=1e-4)
    assert float(v.anomaly_map[both.part_mask == 0].max()) == 0.0
    # With a coarse map weight, the coarse tiles' own maps (1.0) reach the map at that weight; the
    # score (no map share in it) does not move.
    v = decide(both.part(maps, scores), both.H, DecisionConfig(), 0.5, 0.6, MapRule(0.0, coarse_map_weight=0.25))
    assert v.score == pytest.approx(0.5) and float(v.anomaly_map.max()) == pytest.approx(0.25, abs=1e-4)
    assert float(v.anomaly_map[both.part_mask == 0].max()) == 0.0


def test_add_coarse_map_stitches_the_listed_tiles_and_resizes():
    from pipeline.vision.tiling import tile_grid
    from pipeline.vision.scoring import add_coarse_map

    coarse = tile_grid(64, 128, 64, 0.0)  # a half-size image: two tiles side by side
    base = np.full((128, 256), 0.1, np.float32)
    out = add_coarse_map(base, np.ones((1, 1, 64, 64), np.float32), coarse, 0.5, positions=np.array([1]))
    assert out.shape == (128, 256)
    assert np.allclose(out[:, :120], 0.1) and np.allclose(out[:, 136:], 0.6)  # left tile unlisted: 0
    assert add_coarse_map(base, np.ones((1, 1, 64, 64)), coarse, 0.0, np.array([1])) is base
    assert add_coarse_map(base, np.ones((1, 1, 64, 64)), None, 0.5, np.array([1])) is base


def test_spread_scores_holds_each_score_over_its_tile():
    from pipeline.vision.tiling import tile_grid
    from pipeline.vision.scoring import spread_scores

    grid = tile_grid(64, 128, 64, 0.0)  # two tiles side by side
    out = spread_scores(np.array([0.5]), np.array([1]), grid, (128, 256))  # only the right tile, resized x2
    assert out.shape == (128, 256)
    assert out[:, 140:].min() == pytest.approx(0.5, abs=1e-5) and out[:, :110].max() == 0.0
    both = spread_scores(np.array([0.3, 0.3]), np.array([0, 1]), grid, (64, 128))
    assert np.allclose(both, 0.3)


def test_min_spread_marks_only_pixels_that_every_covering_tile_finds_novel():
    """Three overlapping tiles in a row; the middle one and the right one are novel (a defect in
    their shared part). "min" keeps the left tile's pixels, and the middle tile's pixels that the
    left tile also covers, at the low score; "mean" lifts them."""
    from pipeline.vision.tiling import tile_grid
    from pipeline.vision.scoring import spread_scores

    grid = tile_grid(64, 160, 64, 0.5)  # x origins 0, 32, 64, 96
    assert grid.xs == (0, 32, 64, 96)
    scores = np.array([0.1, 0.1, 0.9, 0.9], np.float32)  # tiles at x 64 and 96 hold a defect in x 96..127
    low = spread_scores(scores, np.arange(4), grid, (64, 160), "min")
    mean = spread_scores(scores, np.arange(4), grid, (64, 160), "mean")
    assert np.allclose(low[:, :96], 0.1)  # x 64..95 lies in the novel tile 2 but also in the clean tile 1
    assert np.allclose(low[:, 96:], 0.9)  # covered by the novel tiles 2 and 3 only
    assert mean[:, 80].max() > 0.1 + 1e-3  # the mean lifts a pixel that a clean tile also covers
    # Tiles left out (not on the part) do not count; pixels no listed tile covers are 0.
    part = spread_scores(np.array([0.9], np.float32), np.array([3]), grid, (64, 160), "min")
    assert np.allclose(part[:, 96:], 0.9) and part[:, :96].max() == 0.0
    with pytest.raises(ValueError, match="spread must be one of"):
        spread_scores(scores, np.arange(4), grid, (64, 160), "max")


def test_both_scales_share_marks_only_pixels_novel_at_both_scales():
    """NoveltyShare.both adds the lower of the fine and the coarse spread at each pixel: a novel
    fine tile on a familiar coarse tile gains nothing, a familiar fine tile on a novel coarse tile
    gains nothing, only where both are novel does the pixel gain; fine / coarse add their own spread."""
    from pipeline.vision.tiling import tile_grid
    from pipeline.vision.scoring import NoveltyShare, spread_scores

    fine_grid = tile_grid(64, 256, 64, 0.0)  # four fine tiles side by side
    coarse_grid = tile_grid(32, 128, 64, 0.0)  # the image at half size: two coarse tiles, each over two fine ones
    fine = np.array([0.9, 0.1, 0.9, 0.1], np.float32)
    coarse = np.array([0.2, 0.8], np.float32)
    base = np.zeros((64, 256), np.float32)
    out = NoveltyShare(both=0.5, spread="min").add(base, fine_grid, fine, coarse_grid=coarse_grid,
                                                     coarse_scores=coarse)
    assert np.allclose(out[:, 8:56], 0.5 * 0.2)    # novel fine tile, familiar coarse one
    assert np.allclose(out[:, 72:120], 0.5 * 0.1)  # familiar fine tile on the familiar coarse one
    assert np.allclose(out[:, 136:184], 0.5 * 0.8)  # novel at both scales
    assert np.allclose(out[:, 200:248], 0.5 * 0.1)  # familiar fine tile on the novel coarse one
    f = spread_scores(fine, np.arange(4), fine_grid, base.shape, "min")
    c = spread_scores(coarse, np.arange(2), coarse_grid, base.shape, "min")
    old = NoveltyShare(fine=0.01, coarse=0.02, spread="min").add(base, fine_grid, fine, coarse_grid=coarse_grid,
                                                                  coarse_scores=coarse)
    np.testing.assert_allclose(old, 0.01 * f + 0.02 * c, atol=1e-7)
    # Without a coarse pass there is nothing to agree with: the share adds nothing.
    assert NoveltyShare(both=0.5).add(base, fine_grid, fine).max() == 0.0
    # The agreement peak, for the image score: the strongest place novel at both scales (tile 2's
    # 0.9 over the coarse 0.8), not the strongest fine tile (0.9) or coarse tile (0.8) alone; read
    # only when the score takes a share of it.
    rule = NoveltyShare(spread="min", score_weight=0.5)
    blended, peak = rule.blend(base, fine_grid, fine, coarse_grid=coarse_grid, coarse_scores=coarse)
    assert peak == pytest.approx(0.8) and blended.max() == 0.0
    # A novel fine tile over a familiar coarse one: the agreement is the coarse tile's 0.2.
    assert NoveltyShare(spread="min", score_weight=0.5).blend(base, fine_grid, np.array([0.9, 0.1, 0.1, 0.1], np.float32),
                                                               coarse_grid=coarse_grid, coarse_scores=coarse)[1] == pytest.approx(0.2)
    assert NoveltyShare(both=0.5).blend(base, fine_grid, fine, coarse_grid=coarse_grid, coarse_scores=coarse)[1] == 0.0
    assert rule.blend(base, fine_grid, fine)[1] == 0.0  # no coarse pass


def test_image_score_averages_the_strongest_full_scale_tiles():
    """fine_top_k: the fine part of the image score is the mean of the k strongest full-scale tile
    scores (all of them when there are fewer), averaged with the strongest coarse one."""
    from pipeline.vision.scoring import image_score

    fine, coarse, blank = np.array([0.2, 0.9, 0.5], np.float32), np.array([0.4, 0.6], np.float32), np.zeros((4, 4))
    assert image_score(blank, fine, 0.0, coarse) == pytest.approx(0.5 * (0.9 + 0.6))
    assert image_score(blank, fine, 0.0, coarse, fine_top_k=2) == pytest.approx(0.5 * (0.7 + 0.6))
    assert image_score(blank, fine, 0.0, None, fine_top_k=5) == pytest.approx(1.6 / 3)
    # both_scales_score_weight: that share of the tile score is replaced by the agreement peak.
    tiles = 0.5 * (0.7 + 0.6)
    assert image_score(blank, fine, 0.0, coarse, 2, 0.2, 0.5) == pytest.approx(0.5 * tiles + 0.5 * 0.2)
    assert image_score(blank, fine, 0.0, coarse, 2, 0.2, 0.0) == pytest.approx(tiles)
    assert image_score(blank, fine, 0.0, None, 2, 0.2, 0.5) == pytest.approx(0.7)  # no coarse pass: no agreement


def test_template_mode_tells_an_unmatched_part_from_an_empty_belt(mini_data, belt, tmp_path):
    """Template mode: a part the template does not match (here one whose face is another
    product's) was on the belt and was not inspected: ERROR, never NO_PART. The empty belt stays
    NO_PART; so does every unmatched frame of a config whose belt model was never fitted."""
    from dataclasses import replace
    from engines.data import read_image

    part = cv2.resize(read_image(next((mini_data / "test" / "good").iterdir()), 1), (256, 320))
    cv2.imwrite(str(tmp_path / "template.png"), part)
    cfg = PreprocessConfig(mode="template", template=str(tmp_path / "template.png"),
                           belt=BeltConfig(**belt.to_config()))
    prep = Preprocessor(cfg)
    rng = np.random.default_rng(0)
    empty = belt_image(480, 640, rng)
    frame = empty.copy()
    frame[80:400, 300:556] = part[..., None]
    assert prep(frame).verdict is None  # matched, tiled
    stranger = frame.copy()
    ys, xs = np.mgrid[80:400, 300:556]
    stranger[80:400, 300:556] = np.where(((xs // 24 + ys // 24) % 2 == 0), 40, 200).astype(np.uint8)[..., None]
    assert locate_template(stranger, prep.template, cfg.template_scales, cfg.downscale, 0.5) is None
    p = prep(stranger)
    assert p.verdict == "ERROR" and "no template match" in p.reason and "px in view" in p.reason, p.reason
    assert prep(empty).verdict == "NO_PART"
    unfitted = Preprocessor(replace(cfg, belt=BeltConfig()))
    assert unfitted(stranger).verdict == "NO_PART" and unfitted(empty).verdict == "NO_PART"


def test_a_part_cut_by_the_frames_edge_is_an_error_not_a_verdict(frames, belt):
    """A part that runs out of view would be judged on what is left of it, the rest uninspected:
    ERROR naming the edge. A part a few px inside the edge is still inspected."""
    from dataclasses import replace

    ok = next(f for f in frames if f.truth["verdict"] == "OK")
    empty = next(f for f in frames if f.truth["verdict"] == "NO_PART").frame
    left = float(np.array(ok.truth["corners"])[:, 0].min())
    cfg = PreprocessConfig(belt=BeltConfig(**belt.to_config()))
    prep = Preprocessor(cfg)
    cut = prep(shifted(ok.frame, empty, -left - 25))   # 25 px of the part out of view on the left
    assert cut.verdict == "ERROR" and "not wholly in view" in cut.reason and "left edge" in cut.reason, cut.reason
    assert prep(shifted(ok.frame, empty, -left + 4)).verdict is None  # 4 px inside: inspected
    assert prep(ok.frame).verdict is None
    assert Preprocessor(replace(cfg, max_edge_contact=1.0))(shifted(ok.frame, empty, -left - 25)).verdict is None


def test_template_mode_a_match_reaching_past_the_frame_is_an_error(mini_data, belt, tmp_path):
    """Template mode: a match whose refined outline reaches past the frame's edge is ERROR."""
    from engines.data import read_image

    part = cv2.resize(read_image(next((mini_data / "test" / "good").iterdir()), 1), (256, 320))
    cv2.imwrite(str(tmp_path / "template.png"), part)
    prep = Preprocessor(PreprocessConfig(mode="template", template=str(tmp_path / "template.png"),
                                         belt=BeltConfig(**belt.to_config())))
    frame = belt_image(480, 640, np.random.default_rng(0))
    frame[80:400, 0:226] = part[:, 30:, None]  # 30 px of the part beyond the left edge
    p = prep(frame)
    assert p.verdict == "ERROR" and "not wholly in view" in p.reason and "left edge" in p.reason, p.reason
