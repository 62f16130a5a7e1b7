"""From a stitched anomaly map on the canonical part to defects in camera coordinates."""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from scipy import ndimage

from pipeline.vision.rectify import to_camera

# A region at the pixel threshold is reported at its defect's own extent: where the map is at
# least this share of the region's peak (its full width at half maximum). A map raised broadly
# over the part, with a sharp peak inside, then gives the peak's outline, not the part's.
CORE_SHARE = 0.5


def _close(binary: np.ndarray, inside: np.ndarray, gap: int) -> np.ndarray:
    """``binary`` with gaps under ``2 x gap`` px closed, kept inside the part."""
    if gap <= 0:
        return binary
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))
    return cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel) & inside.astype(np.uint8)


def _cores(anomaly_map: np.ndarray, binary: np.ndarray, inside: np.ndarray, min_area: int, merge_gap: int,
           core_share: float) -> np.ndarray:
    """Labels of the defects: each group of regions at the threshold (regions closer than
    ``merge_gap`` px are one group) with at least ``min_area`` px above it, cut to where the map
    is at least ``core_share`` x the group's peak; each connected piece of that core is a defect.
    A piece under ``min_area`` px is dropped unless it holds its group's peak. Pieces are not
    merged again: a blob a few px from a broad raised area is its own defect, at its own size."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(_close(binary, inside, merge_gap), connectivity=8)
    out = np.zeros(binary.shape, np.int32)
    count = 0
    for i in range(1, n):
        x0, y0, w0, h0 = (int(v) for v in stats[i, :4])
        box = (slice(y0, y0 + h0), slice(x0, x0 + w0))
        group = labels[box] == i
        hot = group & (binary[box] > 0)
        if int(hot.sum()) < min_area:
            continue
        values = np.where(hot, anomaly_map[box], -np.inf)
        peak_at = np.unravel_index(int(np.argmax(values)), values.shape)
        core = group if core_share <= 0 else hot & (values >= core_share * values[peak_at])
        m, core_labels = cv2.connectedComponents(core.astype(np.uint8), connectivity=8)
        for j in range(1, m):
            member = core_labels == j
            if int(member.sum()) < min_area and not member[peak_at]:
                continue
            count += 1
            out[box][member] = count
    return out


def find_defects(anomaly_map: np.ndarray, part_mask: np.ndarray, H: np.ndarray, pixel_threshold: float,
                 min_area: int, merge_gap: int = 0, score_map: np.ndarray | None = None,
                 core_share: float = CORE_SHARE,
                 part_score: Callable[[np.ndarray], float] | None = None) -> list[dict]:
    """Regions of ``anomaly_map >= pixel_threshold`` inside the part with at least ``min_area``
    canonical px above it, each reported at its own extent, as ``{"bbox": [x, y, w, h],
    "area_px", "score", "polygon"}`` in camera px. Regions less than ``merge_gap`` canonical px
    apart are one group (a morphological closing, kept inside the part; their pixels count
    together towards ``min_area``); a group's defects are the connected pieces where the map is at
    least ``core_share`` x the group's peak (its full width at half maximum by default; 0: the
    group's outline, gaps included). A defect's area is that of its outline, its score the peak of
    the map over it (of ``score_map`` there, when given: the map before smoothing, whose peaks keep
    a small, sharp defect ahead of a broad, faint region). With ``part_score`` (a canonical boolean
    mask -> the part's score from that region alone, ``MapRule.region_score``), each also gets
    ``"part_score"``. Strongest first."""
    score_map = anomaly_map if score_map is None else score_map
    inside = part_mask > 0
    binary = ((anomaly_map >= pixel_threshold) & inside).astype(np.uint8)
    labels = _cores(anomaly_map, binary, inside, min_area, merge_gap, core_share)
    defects = []
    for i, box in enumerate(ndimage.find_objects(labels), 1):  # each defect's bounding box, in one pass
        if box is None:
            continue
        y0, x0 = box[0].start, box[1].start
        member = labels[box] == i
        contours, _ = cv2.findContours(member.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                       offset=(x0, y0))
        contour = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float32)
        poly = to_camera(contour, H)
        x, y, w, h = cv2.boundingRect(np.round(poly).astype(np.int32))
        area = float(cv2.contourArea(poly)) if len(poly) >= 3 else 0.0
        defect = {"bbox": [int(x), int(y), int(w), int(h)], "area_px": round(max(area, 1.0), 1),
                  "score": round(float(score_map[box][member & (binary[box] > 0)].max()), 4),
                  "polygon": [[round(float(px), 1), round(float(py), 1)] for px, py in poly]}
        if part_score is not None:
            region = np.zeros(labels.shape, bool)
            region[box] = member
            defect["part_score"] = round(float(part_score(region)), 4)
        defects.append(defect)
    defects.sort(key=lambda d: -d["score"])
    return defects


# An NG part with no region at the pixel threshold is outlined where its map is at least this share
# of the map's peak on the part (strongest_region).
WEAK_REGION_SHARE = 0.5


def strongest_region(anomaly_map: np.ndarray, part_mask: np.ndarray, H: np.ndarray, merge_gap: int = 0,
                     score_map: np.ndarray | None = None, share: float = WEAK_REGION_SHARE,
                     part_score: Callable[[np.ndarray], float] | None = None) -> list[dict]:
    """For a part flagged NG on its score with no region at the pixel threshold (a small defect
    whose map stays faint): the region around the map's peak on the part, where the map is at
    least ``share`` x that peak, as one defect marked ``"below_pixel_threshold": True``, so that
    every NG part says where to look. The peak of ``anomaly_map`` (the smoothed map the score
    reads) picks the region, not a lone sharp pixel of ``score_map``. Empty when the map is 0 over
    the part."""
    inside = part_mask > 0
    if not inside.any():
        return []
    values = np.where(inside, anomaly_map, -np.inf)
    peak_at = np.unravel_index(int(np.argmax(values)), values.shape)
    peak = float(values[peak_at])
    if peak <= 0:
        return []
    above = (values >= share * peak).astype(np.uint8)
    labels = cv2.connectedComponents(_close(above, inside, merge_gap), connectivity=8)[1]
    around = labels == labels[peak_at]
    regions = find_defects(np.where(around, anomaly_map, 0.0), around.astype(np.uint8), H, share * peak, 1,
                           merge_gap, score_map, core_share=0.0, part_score=part_score)
    return [{**regions[0], "below_pixel_threshold": True}] if regions else []


def box_iou(a: list[float], b: list[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0
