"""Perspective rectification between the camera frame and the canonical part."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.vision.locate import order_corners


def canonical_corners(canonical_wh: tuple[int, int]) -> np.ndarray:
    w, h = canonical_wh
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)


def homography_to_canonical(corners: np.ndarray, canonical_wh: tuple[int, int]) -> np.ndarray:
    """3x3 H mapping camera pixels to canonical pixels."""
    return cv2.getPerspectiveTransform(np.asarray(corners, np.float32), canonical_corners(canonical_wh))


def rectify(frame: np.ndarray, H: np.ndarray, canonical_wh: tuple[int, int],
            interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    return cv2.warpPerspective(frame, H, tuple(canonical_wh), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)


def to_camera(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Canonical points ``(N, 2)`` -> camera points through H⁻¹."""
    pts = np.asarray(points, np.float32).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(pts, np.linalg.inv(H)).reshape(-1, 2)


def canonical_view(part_image: np.ndarray, canonical_wh: tuple[int, int]) -> np.ndarray:
    """An image that shows only the part (as training images do) -> the part as a line with this
    canonical size rectifies it: turned by the locator's rule (long side along the canonical long
    side, an about square part kept upright, ``order_corners``) and warped to ``canonical_wh``.
    This is the silhouette locator's turning rule; in template mode the template sets the
    orientation, and training images shown in another one would need turning first."""
    h, w = part_image.shape[:2]
    corners = order_corners(canonical_corners((w, h)), canonical_wh)
    return rectify(part_image, homography_to_canonical(corners, canonical_wh), canonical_wh)
