import cv2
import numpy as np
import pytest

from engines.synth import CHANGE_EPS, DEFAULT_GENERATORS, GENERATORS, _grain_is_vertical, synthesize


def _crops(ok_images, n=6, tile=128):
    return [img[:tile, i * 10:i * 10 + tile].astype(np.float32) / 255.0 for i, img in zip(range(n), ok_images)]


REGION_GENERATORS = {"uneven", "uneven_step"}  # label a whole region whose texture changed, not each changed pixel


@pytest.mark.parametrize("name", sorted(set(GENERATORS) - REGION_GENERATORS))
def test_generator_mask_is_what_changed(name, ok_images):
    rng = np.random.default_rng(1)
    donors = [ok_images[0].astype(np.float32) / 255.0]
    hits = 0
    for crop in _crops(ok_images):
        out, mask = GENERATORS[name](crop, rng, 0.8, donors=donors)
        assert out.shape == crop.shape and out.dtype == np.float32
        assert mask.shape == crop.shape[:2]
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert out.min() >= 0.0 and out.max() <= 1.0
        changed = np.abs(out - crop) > CHANGE_EPS
        # every labelled pixel really changed
        assert np.all(changed[mask > 0])
        hits += mask.sum() > 0
    assert hits >= 3, f"{name} produced a visible defect in only {hits}/6 crops"


@pytest.mark.parametrize("name", sorted(REGION_GENERATORS))
def test_uneven_finish_labels_the_changed_region(name, ok_images):
    rng = np.random.default_rng(2)
    hits = 0
    for crop in _crops(ok_images) * 3:
        out, mask = GENERATORS[name](crop, rng, 0.8)
        assert out.shape == crop.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        if not mask.sum():
            assert np.array_equal(out, crop)  # nothing labelled, nothing changed
            continue
        hits += 1
        inside = mask > 0
        assert 0.05 < inside.mean() < 0.9  # a large region, not a spot or the whole crop
        change = np.abs(out - crop)
        assert change[inside].mean() > 0.6 * CHANGE_EPS  # visible as a region
        far = cv2.dilate(inside.astype(np.uint8), np.ones((41, 41), np.uint8)) == 0
        if far.any():  # the diffuse edge fades out well before 20 px from the region
            assert change[far].max() <= CHANGE_EPS
    assert hits >= 9, f"{name} produced a region in only {hits}/18 crops"


def test_uneven_step_is_a_band_with_a_sharp_straight_edge_across_the_grain(ok_images):
    """The real uneven regions of magnetic tile mostly end at a straight line across the grinding
    grain, where one pass stopped: ``uneven_step`` makes a band from the top or bottom of a crop
    with vertical grain, its edge a nearly straight, sharp line."""
    rng = np.random.default_rng(3)
    crops = [c for c in _crops(ok_images) if _grain_is_vertical(c)]
    assert crops, "the fixture images have vertical grain"
    hits = 0
    for crop in crops * 4:
        out, mask = GENERATORS["uneven_step"](crop, rng, 0.8)
        if not mask.sum():
            continue
        inside = mask > 0
        cols = inside.sum(axis=0)
        if cols.min() == 0 or cols.max() == inside.shape[0]:
            continue  # the edge leaves the crop (a steep tilt near a corner): nothing to measure
        hits += 1
        from_top = inside[0].all()
        assert from_top or inside[-1].all()  # a band from one side across the whole crop
        # each column is one run from that side: the edge is a line y(x), not a blob
        runs = np.abs(np.diff(inside.astype(np.int8), axis=0)).sum(axis=0)
        assert runs.max() == 1
        x = np.arange(inside.shape[1])
        slope, icpt = np.polyfit(x, cols, 1)
        assert abs(slope) < 0.3 and np.abs(cols - (slope * x + icpt)).max() < 6  # straight, slightly tilted
        # sharp: 8 px beyond the edge the texture is untouched, inside it changed
        change = np.abs(out - crop)
        rows = np.arange(inside.shape[0])[:, None]
        beyond = rows > cols + 8 if from_top else rows < inside.shape[0] - cols - 8
        if beyond.any():
            assert change[beyond].max() <= CHANGE_EPS
        assert change[inside].mean() > 0.6 * CHANGE_EPS
    assert hits >= 6, f"uneven_step made a measurable band in only {hits} crops"


def test_grain_crack_is_a_thin_line_along_the_grain(ok_images):
    """Mostly along the crop's own grain (vertical in these images), nearly straight, a few px wide."""
    crops = [c for c in _crops(ok_images) if _grain_is_vertical(c)]
    along, drawn = 0, 0
    for seed in range(20):
        out, mask = GENERATORS["grain_crack"](crops[seed % len(crops)], np.random.default_rng(seed), 0.8)
        ys, xs = np.nonzero(mask)
        if len(ys) < 10:
            continue
        drawn += 1
        height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
        assert mask.sum() <= 6 * max(height, width)  # a line a few px wide (its soft edge counts), not a region
        along += height > 4 * width
    assert drawn >= 15 and along >= 0.7 * drawn, (drawn, along)


def test_border_blob_is_a_small_spot_at_the_given_side(ok_images):
    """Blowholes at a part's border lie in the outermost pixels of their inference tile; ``border_blob``
    puts a small blob there, on the side handed to it as an image border, mostly darker."""
    rng = np.random.default_rng(4)
    darker = 0
    for i, crop in enumerate(_crops(ok_images) * 4):
        side = ("top", "bottom", "left", "right")[i % 4]
        out, mask = GENERATORS["border_blob"](crop, rng, 0.5, edge_sides=[side])
        ys, xs = np.nonzero(mask)
        assert len(ys) >= 4, "a visible spot"
        assert mask.sum() < 500  # a blowhole, not a region (radius <= 8 px)
        gap = {"top": ys.min(), "bottom": 127 - ys.max(), "left": xs.min(), "right": 127 - xs.max()}[side]
        assert gap <= 12, f"spot {gap} px from the {side} side"
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) <= 24
        darker += (out - crop)[mask > 0].mean() < 0
    assert darker >= 16  # 85 % dark; 24 draws


def test_grain_direction():
    stripes = np.tile((np.arange(64) % 4 < 2).astype(np.float32) * 0.3 + 0.3, (64, 1))  # vertical lines
    assert _grain_is_vertical(stripes)
    assert not _grain_is_vertical(np.ascontiguousarray(stripes.T))


def test_default_generators_weight_uneven(ok_images):
    # every generator but the opt-in ones
    assert set(DEFAULT_GENERATORS) == set(GENERATORS) - {"uneven_step", "grain_crack", "border_blob"} and DEFAULT_GENERATORS.count("uneven") == 3
    crop = _crops(ok_images, 1)[0]
    drawn = [synthesize(crop, np.random.default_rng(s), 0.7, donors=[crop])[2] for s in range(200)]
    assert 0.12 < drawn.count("uneven") / len(drawn) < 0.4 and len(set(drawn)) >= 8  # 3 of 11 draws, some retried
    eight = sorted(set(DEFAULT_GENERATORS) - {"uneven"})
    assert "uneven" not in {synthesize(crop, np.random.default_rng(s), 0.7, names=eight, donors=[crop])[2]
                            for s in range(60)}


@pytest.mark.parametrize("name", ["bezier_blob", "point_cloud", "gradient", "bezier_scratch"])
def test_strength_scales_contrast(name, ok_images):
    crop = _crops(ok_images, 1)[0]

    def mean_change(strength):
        total = []
        for seed in range(20):
            out, mask = GENERATORS[name](crop, np.random.default_rng(seed), strength)
            if mask.sum():
                total.append(np.abs(out - crop)[mask > 0].mean())
        return np.mean(total)

    assert mean_change(1.0) > 1.5 * mean_change(0.0)


def test_does_not_modify_input(ok_images):
    crop = _crops(ok_images, 1)[0]
    before = crop.copy()
    for name, gen in GENERATORS.items():
        gen(crop, np.random.default_rng(0), 0.5, donors=[crop])
        assert np.array_equal(crop, before), name


def test_synthesize_three_channels(ok_images):
    rgb = np.repeat(_crops(ok_images, 1)[0][..., None], 3, axis=2)
    out, mask, name = synthesize(rgb, np.random.default_rng(3), 0.7, donors=[rgb])
    assert out.shape == rgb.shape and mask.shape == rgb.shape[:2]
    assert name in GENERATORS and mask.sum() > 0


def test_unknown_generator_is_named():
    with pytest.raises(ValueError, match="valid"):
        synthesize(np.zeros((8, 8), np.float32), np.random.default_rng(0), names=["nope"])
