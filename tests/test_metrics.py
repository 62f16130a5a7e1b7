import numpy as np

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


def test_f1_and_threshold():
    masks, maps = _case()
    t, f1 = metrics.best_f1_threshold(masks, maps)
    assert abs(metrics.f1_at(masks, maps, t) - f1) < 1e-2
    assert metrics.f1_at(masks, [m.astype(np.float32) for m in masks], 0.5) == 1.0
