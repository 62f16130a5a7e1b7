"""Finding the part in a camera frame: silhouette (belt mask -> largest blob -> quadrilateral) or
multi-scale template matching against a golden template, refined with ECC.

Each locator returns the four part corners in camera pixels, ordered top-left, top-right,
bottom-right, bottom-left in the canonical orientation, or None when no part is in view.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.vision.belt import MONO_EDGE_PX, BeltModel, belt_mask, unlike_belt


# Sides within this fraction of each other: the part is about square, which of its sides is the
# longer is down to noise, and a quarter turn chosen on it turned such parts' texture sideways. On
# the simulated line the three parts turned that way (sides within 2 %) were the three
# highest-scoring parts, two of them OK (docs/benchmarks.md, "Line accuracy against truth").
SQUARE_TOLERANCE = 0.1


def order_corners(pts: np.ndarray, canonical_wh: tuple[int, int]) -> np.ndarray:
    """Order 4 corners TL, TR, BR, BL so the long side maps to the canonical long side; an about
    square part (sides within ``SQUARE_TOLERANCE``) keeps the orientation nearest the camera's."""
    pts = np.asarray(pts, np.float32).reshape(4, 2)
    center = pts.mean(axis=0)
    angles = np.arctan2(pts[:, 1] - center[1], pts[:, 0] - center[0])
    pts = pts[np.argsort(angles)]  # clockwise in image coordinates (y down), starting near -pi
    start = int(np.argmin(pts.sum(axis=1)))  # top-left-most
    pts = np.roll(pts, -start, axis=0)
    side01 = np.linalg.norm(pts[1] - pts[0])
    side12 = np.linalg.norm(pts[2] - pts[1])
    cw, ch = canonical_wh
    square = abs(side01 - side12) <= SQUARE_TOLERANCE * max(side01, side12)
    if (side01 >= side12) != (cw >= ch) and not square:
        pts = np.roll(pts, -1, axis=0)
    return pts


def _largest_blob(mask: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(the largest 8-connected component of ``mask`` as 0/1 uint8, its area), or None if it is empty."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.uint8), int(stats[best, cv2.CC_STAT_AREA])


def _fill_holes(blob: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(blob)
    cv2.drawContours(filled, contours, -1, 1, cv2.FILLED)
    return filled


def shrink(frame: np.ndarray, downscale: float) -> np.ndarray:
    """The frame resized by ``downscale`` (area-averaged), as parts are located on it."""
    if downscale == 1.0:
        return frame
    return cv2.resize(frame, None, fx=downscale, fy=downscale, interpolation=cv2.INTER_AREA)


# A disc, not a square: the neighbourhoods' reach fades out towards their corners, and a square took
# the part's corners 1.7-2.3 px further in (research/results/mono_outlines.txt).
MONO_EDGE_DISC = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * MONO_EDGE_PX + 1,) * 2)


def _silhouette(frame_bgr: np.ndarray, belt: BeltModel) -> tuple[np.ndarray, int] | None:
    """(the largest non-belt component, holes filled, as a 0/1 uint8 mask; its area before the last
    fill, the one a minimum is held against), or None when everything is belt.

    Holes are filled before anything thins the blob: a part as bright as a light belt looks like
    belt inside, and only the step at its outline (a rim a few px wide) tells it apart. Filling
    the region that rim encloses keeps the whole part; eroding first broke the rim, the inside
    leaked out to the belt, and up to half of such a part went uninspected and misaligned."""
    part = _largest_blob((~belt_mask(frame_bgr, belt)).astype(np.uint8))
    if part is None:
        return None
    # Fill holes: dark defects on the part can look like belt, but they are part of the part.
    part = _fill_holes(part[0])
    if belt.features == "mono":  # its neighbourhood features reach MONO_EDGE_PX onto the belt
        part = cv2.erode(part, MONO_EDGE_DISC)
    part = _largest_blob(cv2.morphologyEx(part, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)))
    if part is None:
        return None
    return _fill_holes(part[0]), part[1]


def part_silhouette(frame_bgr: np.ndarray, belt: BeltModel, min_area: int) -> np.ndarray | None:
    """uint8 mask of the largest non-belt component, or None if it is smaller than ``min_area``."""
    found = _silhouette(frame_bgr, belt)
    return None if found is None or found[1] < min_area else found[0]


def silhouette_in_view(frame_bgr: np.ndarray, belt: BeltModel, downscale: float = 1.0
                       ) -> tuple[np.ndarray, int] | None:
    """What is in view that is not belt, on the frame resized by ``downscale``: (its silhouette at
    that size, its area in those px), or None for an empty belt. :func:`part_at` says whether it
    is a part; for a frame where it is not, it says whether something was there at all."""
    return _silhouette(shrink(frame_bgr, downscale), belt)


def edge_contact(silhouette: np.ndarray, unlike: np.ndarray | None = None) -> tuple[float, list[str]]:
    """How much of a part's own surface lies on the frame's outermost rows and columns: the
    silhouette's pixels there that ``unlike`` (bool, the silhouette's size: ``unlike_belt``) marks
    as unlike the belt by their own value, as a fraction of the silhouette's outline, and the edges
    they lie on. A part cut by the frame's edge shows its surface there. One wholly in view but near
    the edge can reach it only with the few px of belt around it that a mono belt model's
    neighbourhoods take into the silhouette, and those look like belt. Without ``unlike`` every
    silhouette pixel on the edge counts.

    On 40 simulated tuning lines (seeds 100-119, 250-269) the 21 parts wholly in view whose
    silhouette touched the edge reached at most 0.0016; of the 23 parts 2 px or more out of view, 21
    reached 0.0064 or more. On 20 fresh lines (270-289), 1 of 21 parts in view (1.4 px inside)
    reached 0.0048 and 1 of 22 cut parts 0 (research/results/edge_contact.txt)."""
    counts = _on_edges(silhouette if unlike is None else (silhouette > 0) & unlike)
    if not any(counts.values()):
        return 0.0, []
    contours, _ = cv2.findContours(silhouette, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    length = max(cv2.arcLength(c, True) for c in contours)
    return sum(counts.values()) / max(length, 1.0), [edge for edge, n in counts.items() if n]


def _on_edges(mask: np.ndarray) -> dict[str, int]:
    """The mask's set pixels on each of the frame's outermost rows and columns."""
    return {edge: int(np.count_nonzero(px))
            for edge, px in (("top", mask[0]), ("bottom", mask[-1]), ("left", mask[:, 0]), ("right", mask[:, -1]))}


def touches_edge(silhouette: np.ndarray) -> bool:
    """Whether a silhouette reaches the frame's outermost rows or columns at all."""
    return any(_on_edges(silhouette).values())


def cut_by_edge(frame_bgr: np.ndarray, silhouette: np.ndarray, belt: BeltModel, downscale: float = 1.0
                ) -> tuple[float, list[str]]:
    """:func:`edge_contact` of a silhouette that :func:`silhouette_in_view` found on ``frame_bgr``
    resized by ``downscale``; (0, []) at once for one that does not reach the frame's edge."""
    if not touches_edge(silhouette):
        return 0.0, []
    return edge_contact(silhouette, unlike_belt(shrink(frame_bgr, downscale), belt))


def corners_outside(corners: np.ndarray, shape: tuple[int, ...], tolerance: float = 2.0) -> list[str]:
    """The frame edges (of a frame of ``shape``) that corners (4, 2) in camera px lie beyond by more
    than ``tolerance`` px."""
    h, w = shape[:2]
    x, y = corners[:, 0], corners[:, 1]
    beyond = {"top": y.min() < -tolerance, "bottom": y.max() > h - 1 + tolerance,
              "left": x.min() < -tolerance, "right": x.max() > w - 1 + tolerance}
    return [edge for edge, out in beyond.items() if out]


def small_to_full(downscale: float) -> np.ndarray:
    """3x3 map from pixel coordinates of a frame resized by ``downscale`` to the full frame's."""
    k = 1.0 / downscale
    return np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]], np.float64)


def part_at(seen: tuple[np.ndarray, int] | None, min_area: int, canonical_wh: tuple[int, int],
            downscale: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """(corners (4, 2) in full-frame px, silhouette mask) of what :func:`silhouette_in_view` saw, or
    None when it is smaller than ``min_area`` camera px."""
    if seen is None or seen[1] < int(min_area * downscale**2):
        return None
    sil = seen[0]
    contours, _ = cv2.findContours(sil, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=cv2.contourArea)
    hull = cv2.convexHull(contour)
    quad = cv2.approxPolyDP(hull, 0.02 * cv2.arcLength(hull, True), True)
    if len(quad) != 4:
        quad = cv2.boxPoints(cv2.minAreaRect(contour))  # chipped corners: fall back to the min-area box
    quad = np.asarray(quad, np.float64).reshape(4, 2)
    if downscale != 1.0:
        quad = cv2.perspectiveTransform(quad[None], small_to_full(downscale))[0]
    return order_corners(quad, canonical_wh), sil


def locate_silhouette(frame_bgr: np.ndarray, belt: BeltModel, min_area: int, canonical_wh: tuple[int, int],
                      downscale: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """(corners (4, 2) in full-frame px, silhouette mask) or None. With ``downscale`` < 1 the belt
    mask and blob work run on a resized frame (the silhouette is returned at that size; map it with
    :func:`small_to_full`): a part edge a pixel off costs nothing, the time saved is most of the stage."""
    return part_at(silhouette_in_view(frame_bgr, belt, downscale), min_area, canonical_wh, downscale)


def locate_template(frame_bgr: np.ndarray, template_gray: np.ndarray, scales: list[float], downscale: float,
                    min_score: float) -> tuple[np.ndarray, float] | None:
    """Best multi-scale match on a downscaled frame: (corners (4, 2) in camera px, score) or None."""
    gray = frame_bgr if frame_bgr.ndim == 2 else cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, None, fx=downscale, fy=downscale, interpolation=cv2.INTER_AREA)
    best = (-1.0, None, None)
    th, tw = template_gray.shape[:2]
    for s in scales:
        tpl = cv2.resize(template_gray, None, fx=s * downscale, fy=s * downscale, interpolation=cv2.INTER_AREA)
        if tpl.shape[0] >= small.shape[0] or tpl.shape[1] >= small.shape[1]:
            continue
        res = cv2.matchTemplate(small, tpl, cv2.TM_CCOEFF_NORMED)
        _, score, _, loc = cv2.minMaxLoc(res)
        if score > best[0]:
            best = (score, loc, s)
    score, loc, s = best
    if loc is None or score < min_score:
        return None
    x, y = loc[0] / downscale, loc[1] / downscale
    w, h = tw * s, th * s
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)
    return corners, float(score)


def refine_ecc(frame_gray: np.ndarray, template_gray: np.ndarray, H: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Refine a frame->template homography with ECC; returns the input H if ECC does not converge."""
    warp = H.astype(np.float32)
    try:
        _, warp = cv2.findTransformECC(template_gray.astype(np.float32), frame_gray.astype(np.float32),
                                       np.linalg.inv(warp).astype(np.float32), cv2.MOTION_HOMOGRAPHY,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-4), None, 5)
        return np.linalg.inv(warp)
    except cv2.error:
        return H
