"""Study: where the overall pixel AUROC is lost.

Runs an exported model once over the development ``test/`` split with the detector's own map and
prints:

1. pixel AUROC and AUPRO (FPR 0.3) as ``evaluate`` computes them (histograms of 2,000 bins) and
   exactly (ranks of every pixel; the PRO curve from every distinct score), overall and per type
   (that type's images with the good ones, as ``evaluate`` reports them);
2. a matrix: for the defect pixels of each type (rows), the AUROC against the non-defect pixels of
   each image group (columns: the good images, and the defect-free pixels of each type's images).
   A row that is high against ``good`` and low against the defective groups says that the map finds
   the defective images but does not outline the defect inside them;
3. the images whose maps cost the most: the overall pixel AUROC again with one image's map made
   perfect (its defect pixels above every other pixel, its defect-free ones below), the image that
   gains most taken first, then the next given that one, and so on (histograms of 2,000 bins, as
   ``evaluate``). A short list that reaches the target says the figure hangs on a few images;
4. the same for AUPRO, which weighs every connected defect region alike: each region's own overlap
   curve up to the split's FPR 0.3 (``engines.metrics.region_pro_scores``), the worst first, and
   AUPRO with those regions made perfect;
5. how far from the defects the pixels that outrank them lie: both figures again with the
   defective images' maps set to 0 beyond R px of their ground-truth masks (R = 0 to 64; the good
   images' maps unchanged). If the loss were a halo around loosely outlined defects (the masks
   drawn tighter than the map fires), a few pixels of R would recover it.

    python -m research.pixel_auroc_breakdown --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile

About 2 minutes on 2 CPU cores for magnetic tile.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector


def exact_pixel_auroc(masks: list[np.ndarray], maps: list[np.ndarray]) -> float:
    return metrics.roc_auc(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]))


def exact_aupro(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3) -> float:
    """AUPRO from every distinct score: each defect pixel carries 1 / (its region's area x regions)."""
    weights, negatives, n_regions = [], [], 0
    for mask in masks:
        labelled, n = ndimage.label(mask)
        w = np.zeros(mask.shape)
        if n:
            w[mask] = 1.0 / np.bincount(labelled.ravel())[labelled[mask]]
        n_regions += n
        weights.append(w.ravel())
        negatives.append(~mask.ravel())
    scores = np.concatenate([a.ravel() for a in maps]).astype(np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, w, neg = scores[order], np.concatenate(weights)[order] / n_regions, np.concatenate(negatives)[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last pixel of each distinct score
    fpr = np.r_[0.0, np.cumsum(neg)[last] / neg.sum()]
    pro = np.r_[0.0, np.cumsum(w)[last]]
    k = int((fpr <= fpr_limit).sum())
    f, p = fpr[:k], pro[:k]
    if k < len(fpr):  # close the curve at the limit
        p_lim = p[-1] + (pro[k] - p[-1]) * (fpr_limit - f[-1]) / max(fpr[k] - f[-1], 1e-12)
        f, p = np.r_[f, fpr_limit], np.r_[p, p_lim]
    return float(np.trapezoid(p, f) / fpr_limit)


def hist_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC from histograms over the same bins (ascending scores), ties counting half."""
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def costliest_images(masks: list[np.ndarray], maps: list[np.ndarray], top: int, bins: int = 2000):
    """Greedy: ``(index, overall pixel AUROC with it and those before it made perfect)`` for ``top`` images."""
    hists = []
    for m, a in zip(masks, maps):
        b = np.minimum((np.clip(a, 0, 1) * bins).astype(np.int64), bins - 1)
        hists.append((np.bincount(b[m], minlength=bins).astype(float), np.bincount(b[~m], minlength=bins).astype(float)))
    pos, neg = sum(h[0] for h in hists), sum(h[1] for h in hists)

    def perfect(p, n, i):  # image i's defect pixels to the top bin, its defect-free ones to the bottom
        p, n = p - hists[i][0], n - hists[i][1]
        p[-1] += hists[i][0].sum()
        n[0] += hists[i][1].sum()
        return p, n

    order, left = [], set(range(len(maps)))
    for _ in range(min(top, len(maps))):
        best = max(left, key=lambda i: hist_auroc(*perfect(pos, neg, i)))
        pos, neg = perfect(pos, neg, best)
        order.append((best, hist_auroc(pos, neg)))
        left.discard(best)
    return order


def auroc_between(pos: np.ndarray, sorted_neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half; negatives sorted once by the caller."""
    below = np.searchsorted(sorted_neg, pos, "left") + np.searchsorted(sorted_neg, pos, "right")
    return float(below.mean() / 2 / len(sorted_neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--top", type=int, default=20, help="how many of the costliest images and regions to list")
    args = ap.parse_args()
    engine = load_backend("onnxruntime", args.model)
    detector = Detector(engine, overlap=args.overlap)
    masks, maps, types, names = [], [], [], []
    for s in mvtec_test_set(args.data):
        names.append(Path(s.image_path).name)
        img = read_image(s.image_path, engine.meta.in_channels)
        masks.append(read_mask(s.mask_path, img.shape[:2]) if s.mask_path else np.zeros(img.shape[:2], bool))
        maps.append(detector.predict(img).anomaly_map.astype(np.float32))
        types.append(s.defect_type)
    kinds = sorted(set(types) - {"good"})

    print(f"{'images':<10} {'pixel AUROC (binned / exact)':>30} {'AUPRO (binned / exact)':>26}")
    for name, sel in [("all", range(len(types)))] + [(t, [i for i, ty in enumerate(types) if ty in ("good", t)])
                                                     for t in kinds]:
        mk, mp = [masks[i] for i in sel], [maps[i] for i in sel]
        print(f"{name:<10} {metrics.pixel_auroc(mk, mp):>21.4f} / {exact_pixel_auroc(mk, mp):.4f}"
              f" {metrics.aupro(mk, mp):>17.4f} / {exact_aupro(mk, mp):.4f}")

    groups = ["good"] + kinds
    neg = {g: np.sort(np.concatenate([maps[i][~masks[i]] for i, t in enumerate(types) if t == g])) for g in groups}
    all_neg = np.sort(np.concatenate(list(neg.values())))
    print("\nAUROC of each type's defect pixels (rows) against the defect-free pixels of each image group")
    print(f"{'':<10} {'pixels':>9} " + " ".join(f"{g:>9}" for g in groups) + f" {'all':>9}")
    for t in kinds:
        pos = np.concatenate([maps[i][masks[i]] for i, ty in enumerate(types) if ty == t])
        print(f"{t:<10} {len(pos):>9} " + " ".join(f"{auroc_between(pos, neg[g]):>9.3f}" for g in groups)
              + f" {auroc_between(pos, all_neg):>9.3f}")
    print(f"{'pixels':<10} {'':>9} " + " ".join(f"{len(neg[g]):>9}" for g in groups))

    total = sum(int(m.sum()) for m in masks)
    print(f"\nOverall pixel AUROC with the costliest images' maps made perfect, one by one"
          f" (binned; now {metrics.pixel_auroc(masks, maps):.4f})")
    for k, (i, auc) in enumerate(costliest_images(masks, maps, args.top), 1):
        print(f"{k:>3} {names[i]:<32} {types[i]:<9} {auc:.4f}  ({masks[i].sum() / total:.1%} of the defect pixels)")

    own, image = metrics.region_pro_scores(masks, maps)
    aupro = float(own.mean())
    print(f"\nAUPRO with the worst regions made perfect, one by one (binned; now {aupro:.4f}, {len(own)} regions)")
    areas = np.concatenate([np.bincount(ndimage.label(m)[0].ravel())[1:] for m in masks])
    for k, r in enumerate(np.argsort(own, kind="stable")[:args.top], 1):
        aupro += (1 - own[r]) / len(own)
        i = image[r]
        print(f"{k:>3} {names[i]:<32} {types[i]:<9} {aupro:.4f}  (region of {areas[r]} px, its own score {own[r]:.3f})")

    print("\nThe defective images' maps set to 0 beyond R px of their masks (good images' maps unchanged)")
    print(f"{'R px':>6} {'pixel AUROC':>12} {'AUPRO':>8}")
    for r in (0, 4, 16, 64):
        near = [m if t == "good" else m * cv2.dilate(mk.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8))
                for m, mk, t in zip(maps, masks, types)]
        print(f"{r:>6} {metrics.pixel_auroc(masks, near):>12.4f} {metrics.aupro(masks, near):>8.4f}")
    print(f"{'none':>6} {metrics.pixel_auroc(masks, maps):>12.4f} {metrics.aupro(masks, maps):>8.4f}")


if __name__ == "__main__":
    main()
