"""Anomaly-detection metrics: image and pixel AUROC, AUPRO (MVTec), F1 at a threshold.

Implemented with numpy histograms so a few hundred images at full resolution evaluate in seconds.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

N_BINS = 2000
FALSE_ALARM_BUDGET = 0.05  # the operating point: NG recall at <= 5 % false alarms


def false_alarm_bar(ok_scores: list[float | None] | np.ndarray, fa_budget: float = FALSE_ALARM_BUDGET) -> float:
    """The score an NG part must exceed to be flagged by the best threshold that flags at most
    ``fa_budget`` of the OK parts (-inf when every OK part may be flagged). A part with no score
    counts as scoring below every other part."""
    ok = np.array([-np.inf if s is None else s for s in ok_scores], np.float64)
    allowed = int(np.floor(fa_budget * len(ok) + 1e-9))   # OK parts that may score above the threshold
    return float(np.sort(ok)[::-1][allowed]) if allowed < len(ok) else -np.inf


def recall_at_false_alarms(labels: np.ndarray, scores: np.ndarray, fa_budget: float = FALSE_ALARM_BUDGET) -> float:
    """Share of the defective images (``labels`` true) scoring above :func:`false_alarm_bar` of
    the good ones: recall at the best threshold for at most ``fa_budget`` false alarms. NaN when
    one class is absent."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.all() or not labels.any():
        return float("nan")
    return float((scores[labels] > false_alarm_bar(scores[~labels], fa_budget)).mean())


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney with ties), NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    s, l = scores[order], labels[order]
    distinct = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(l)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0, tps / max(1, l.sum())]
    fpr = np.r_[0, fps / max(1, (~l).sum())]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, thr = roc_curve(labels, scores)
    labels = np.asarray(labels).astype(bool).ravel()
    tp = tpr * labels.sum()
    fp = fpr * (~labels).sum()
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return tpr, precision


def _binned(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of scores at or above each edge (descending cumulative histogram)."""
    idx = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 1)
    counts = np.bincount(idx, minlength=len(edges))
    return np.cumsum(counts[::-1])[::-1]


def pixel_auroc(masks: list[np.ndarray], maps: list[np.ndarray]) -> float:
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    edges = np.linspace(scores.min(), scores.max() + 1e-9, N_BINS)
    pos = _binned(scores[labels], edges).astype(np.float64)
    neg = _binned(scores[~labels], edges).astype(np.float64)
    if pos[0] == 0 or neg[0] == 0:
        return float("nan")
    tpr = np.r_[pos / pos[0], 0.0][::-1]
    fpr = np.r_[neg / neg[0], 0.0][::-1]
    return float(np.trapezoid(tpr, fpr))


def region_overlaps(mask: np.ndarray, amap: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(regions, bins)``: the share of each connected region of ``mask`` scoring at or above each edge."""
    labelled, n = ndimage.label(mask)
    if n == 0:
        return np.zeros((0, len(edges)))
    # One 2D histogram (region x bin) instead of a pass over the image per region.
    in_region = labelled > 0
    bins = np.clip(np.searchsorted(edges, amap[in_region], side="right") - 1, 0, len(edges) - 1)
    counts = np.bincount((labelled[in_region] - 1) * len(edges) + bins, minlength=n * len(edges)).reshape(n, -1)
    at_or_above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    return at_or_above / at_or_above[:, :1]


def _pro_histograms(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """On ``N_BINS`` edges spanning all scores: the defect-free pixels' histogram (counts at or
    above each edge) and each image's :func:`region_overlaps`."""
    scores_all = np.concatenate([a.ravel() for a in maps])
    edges = np.linspace(scores_all.min(), scores_all.max() + 1e-9, N_BINS)
    neg = np.zeros(N_BINS)
    curves = []
    for mask, amap in zip(masks, maps):
        neg += _binned(amap[~mask], edges)
        curves.append(region_overlaps(mask, amap, edges))
    return neg, curves


def region_pro_scores(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Each connected defect region's own area under its overlap curve against the FPR of all
    defect-free pixels, up to ``fpr_limit`` and normalised, and the index of its image. Their mean
    is :func:`aupro`, so making one region perfect adds ``(1 - its score) / regions`` to it."""
    neg, curves = _pro_histograms(masks, maps)
    image = np.concatenate([np.full(len(c), i) for i, c in enumerate(curves)])
    fpr = np.r_[neg / neg[0], 0.0][::-1]
    return np.array([_area_to_limit(fpr, np.r_[c, 0.0][::-1], fpr_limit) for c in np.concatenate(curves)]), image


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1]."""
    neg, curves = _pro_histograms(masks, maps)
    pro_sum = np.zeros(N_BINS)
    for overlaps in curves:
        pro_sum += overlaps.sum(axis=0)
    n_regions = sum(len(c) for c in curves)
    if n_regions == 0 or neg[0] == 0:
        return float("nan")
    fpr = np.r_[neg / neg[0], 0.0][::-1]
    pro = np.r_[pro_sum / n_regions, 0.0][::-1]
    return _area_to_limit(fpr, pro, fpr_limit)


def _area_to_limit(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Area under ``pro`` over ascending ``fpr`` up to ``fpr_limit``, normalised to [0, 1]."""
    keep = fpr <= fpr_limit
    f, p = fpr[keep], pro[keep]
    # Close the curve exactly at the limit by interpolation.
    if f[-1] < fpr_limit and keep.sum() < len(fpr):
        nxt = np.argmax(~keep)
        f1, p1 = fpr[nxt], pro[nxt]
        p_lim = p[-1] + (p1 - p[-1]) * (fpr_limit - f[-1]) / max(f1 - f[-1], 1e-12)
        f, p = np.r_[f, fpr_limit], np.r_[p, p_lim]
    return float(np.trapezoid(p, f) / fpr_limit)


def f1_at(masks: list[np.ndarray], maps: list[np.ndarray], threshold: float) -> float:
    tp = fp = fn = 0
    for mask, amap in zip(masks, maps):
        pred = amap >= threshold
        tp += int((pred & mask).sum())
        fp += int((pred & ~mask).sum())
        fn += int((~pred & mask).sum())
    return 2 * tp / max(1, 2 * tp + fp + fn)


def best_f1_threshold(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[float, float]:
    """Threshold maximising pixel F1 over all pixels: (threshold, f1)."""
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    edges = np.linspace(scores.min(), scores.max() + 1e-9, N_BINS)
    tp = _binned(scores[labels], edges).astype(np.float64)
    fp = _binned(scores[~labels], edges).astype(np.float64)
    fn = labels.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    i = int(np.argmax(f1))
    return float(edges[i]), float(f1[i])


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image threshold maximising TPR - FPR."""
    fpr, tpr, thr = roc_curve(labels, scores)
    i = int(np.argmax(tpr - fpr))
    return float(thr[i]) if np.isfinite(thr[i]) else float(np.max(scores))
