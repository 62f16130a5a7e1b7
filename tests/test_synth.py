import numpy as np
import pytest

from engines.synth import CHANGE_EPS, GENERATORS, synthesize


def _crops(ok_images, n=6, tile=128):
    return [img[:tile, i * 10:i * 10 + tile].astype(np.float32) / 255.0 for i, img in zip(range(n), ok_images)]


@pytest.mark.parametrize("name", sorted(GENERATORS))
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
