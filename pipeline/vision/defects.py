"""From a stitched anomaly map on the canonical part to defects in camera coordinates."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.vision.rectify import to_camera


def find_defects(anomaly_map: np.ndarray, part_mask: np.ndarray, H: np.ndarray, pixel_threshold: float,
                 min_area: int, merge_gap: int = 0, score_map: np.ndarray | None = None) -> list[dict]:
    """Connected regions of ``anomaly_map >= pixel_threshold`` inside the part, at least ``min_area``
    canonical px, each as ``{"bbox": [x, y, w, h], "area_px", "score", "polygon"}`` in camera px.
    Regions less than ``merge_gap`` canonical px apart are one defect (a morphological closing of
    the thresholded map, kept inside the part): its outline encloses them all, its area is that of
    the outline, its score the peak of the map over its above-threshold pixels (of ``score_map``
    there, when given: the map before smoothing, whose peaks keep a small, sharp defect ahead of a
    broad, faint region). Strongest first."""
    score_map = anomaly_map if score_map is None else score_map
    inside = part_mask > 0
    binary = ((anomaly_map >= pixel_threshold) & inside).astype(np.uint8)
    grouped = binary
    if merge_gap > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * merge_gap + 1, 2 * merge_gap + 1))
        grouped = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel) & inside.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    defects = []
    for i in range(1, n):
        # Each region is looked at inside its own bounding box, not over the whole map.
        x0, y0, w0, h0 = (int(v) for v in stats[i, :4])
        box = (slice(y0, y0 + h0), slice(x0, x0 + w0))
        group = labels[box] == i
        hot = group & (binary[box] > 0)
        if int(hot.sum()) < min_area:
            continue
        contours, _ = cv2.findContours(group.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                       offset=(x0, y0))
        contour = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float32)
        poly = to_camera(contour, H)
        x, y, w, h = cv2.boundingRect(np.round(poly).astype(np.int32))
        area = float(cv2.contourArea(poly)) if len(poly) >= 3 else 0.0
        defects.append({"bbox": [int(x), int(y), int(w), int(h)], "area_px": round(max(area, 1.0), 1),
                        "score": round(float(score_map[box][hot].max()), 4),
                        "polygon": [[round(float(px), 1), round(float(py), 1)] for px, py in poly]})
    defects.sort(key=lambda d: -d["score"])
    return defects


# An NG part with no region at the pixel threshold is outlined where its map is at least this share
# of the map's peak on the part (strongest_region).
WEAK_REGION_SHARE = 0.5


def strongest_region(anomaly_map: np.ndarray, part_mask: np.ndarray, H: np.ndarray, merge_gap: int = 0,
                     score_map: np.ndarray | None = None, share: float = WEAK_REGION_SHARE) -> list[dict]:
    """For a part flagged NG on its score with no region at the pixel threshold (a small defect
    whose map stays faint): the strongest region where the map is at least ``share`` x its peak on
    the part, as one defect marked ``"below_pixel_threshold": True``, so that every NG part says
    where to look. Empty when the map is 0 over the part."""
    inside = part_mask > 0
    peak = float(anomaly_map[inside].max()) if inside.any() else 0.0
    if peak <= 0:
        return []
    regions = find_defects(anomaly_map, part_mask, H, share * peak, 1, merge_gap, score_map)
    return [{**regions[0], "below_pixel_threshold": True}] if regions else []


def box_iou(a: list[float], b: list[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0
