import numpy as np
import pytest

from pipeline.vision.tiling import blend_window, downscale, extract_tiles, scaled_shape, stitch, tile_grid

from pipeline.vision.scoring import blur_map


@pytest.mark.parametrize("h,w", [(300, 270), (128, 128), (100, 260), (129, 500)])
def test_grid_covers_image(h, w):
    grid = tile_grid(h, w, 128, 0.25)
    covered = np.zeros((max(h, 128), max(w, 128)), bool)
    for y, x in grid.origins:
        covered[y:y + 128, x:x + 128] = True
    assert covered[:h, :w].all()


def test_tiles_match_image(ok_images):
    img = ok_images[0]
    grid = tile_grid(*img.shape, 128, 0.5)
    tiles = extract_tiles(img, grid)
    assert tiles.shape == (len(grid), 1, 128, 128)
    for t, (y, x) in zip(tiles, grid.origins):
        assert np.array_equal(t[0], img[y:y + 128, x:x + 128])


def test_stitch_reproduces_smooth_field_without_seams():
    h, w = 300, 270
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = (yy / h + xx / w) / 2
    grid = tile_grid(h, w, 128, 0.25)
    tiles = extract_tiles(field, grid)
    out = stitch(tiles[:, :1], grid)
    assert np.abs(out - field).max() < 1e-5


def test_window_blends_disagreeing_tiles_smoothly():
    # Tiles that disagree (each constant, different values) must fade, not jump.
    grid = tile_grid(128, 256, 128, 0.5)
    maps = np.stack([np.full((1, 128, 128), v, np.float32) for v in np.linspace(0, 1, len(grid))])
    out = stitch(maps, grid)
    assert np.abs(np.diff(out[64])).max() < 0.05
    assert blend_window(128).min() > 0


def test_small_image_padded():
    img = np.arange(100 * 90, dtype=np.float32).reshape(100, 90)
    grid = tile_grid(100, 90)
    tiles = extract_tiles(img, grid)
    assert tiles.shape == (1, 1, 128, 128)
    assert stitch(tiles, grid).shape == (100, 90)


def test_downscale_halves_a_real_image_by_area(ok_images):
    img = ok_images[0]
    small = downscale(img, 0.5)
    assert small.shape == scaled_shape(*img.shape, 0.5) == (round(img.shape[0] / 2), round(img.shape[1] / 2))
    # area averaging: the mean grey level is kept, unlike nearest-neighbour subsampling of a textured surface
    assert abs(float(small.mean()) - float(img.mean())) < 1.0
    assert scaled_shape(3, 1, 0.25) == (1, 1)  # never zero-sized


def test_blur_map_spreads_a_spike_by_sigma_and_keeps_its_mass():
    spike = np.zeros((65, 65), np.float32)
    spike[32, 32] = 1.0
    assert blur_map(spike, 0.0) is spike  # 0: the map as it is
    smooth = blur_map(spike, 2.0)
    assert smooth.dtype == np.float32 and smooth.sum() == pytest.approx(1.0, abs=1e-3)
    assert smooth.max() == pytest.approx(1 / (2 * np.pi * 2.0 ** 2), rel=0.05)  # a 2D Gaussian's peak
    assert smooth[32, 36] == pytest.approx(smooth[32, 32] * np.exp(-0.5 * (4 / 2.0) ** 2), rel=0.05)


def test_line_positions_pick_each_tiles_own_column_only_on_their_own_grid():
    """MapRule.line_scores: with a per-position memory fitted on this grid, a tile's score is column
    2 + its tile_index (full-scale positions, then half-scale ones) in both columns; on another grid,
    or with scores of another width, the shared memories' scores are used as they are."""
    from pipeline.vision.tiling import tile_grid
    from pipeline.vision.scoring import LinePositions, MapRule

    fine, coarse = tile_grid(296, 224), tile_grid(148, 112)
    positions = LinePositions(fine, coarse)
    assert positions.columns == 2 + 6 + 2 and LinePositions.from_dict(positions.to_dict()) == positions
    scores = np.arange(4 * positions.columns, dtype=np.float32).reshape(4, -1)
    index = np.array([0, 5, 6, 7])  # two full-scale tiles, then both half-scale ones
    rule = MapRule(positions=positions)
    picked = rule.line_scores(scores, index, fine, coarse)
    assert picked.shape == (4, 2) and np.array_equal(picked[:, 0], picked[:, 1])
    assert picked[:, 0].tolist() == [scores[0, 2], scores[1, 7], scores[2, 8], scores[3, 9]]
    other = tile_grid(300, 224)
    assert rule.line_scores(scores, index, other, coarse) is scores
    assert rule.line_scores(scores[:, :2], index, fine, coarse) is not None
    assert np.array_equal(rule.line_scores(scores[:, :2], index, fine, coarse), scores[:, :2])
    assert MapRule().line_scores(scores, index, fine, coarse) is scores
