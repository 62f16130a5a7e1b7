"""Frames made from simulated ones for tests."""
import cv2
import numpy as np


def shifted(frame: np.ndarray, empty: np.ndarray, dx: float) -> np.ndarray:
    """``frame`` moved ``dx`` px along x, the belt of ``empty`` where the move uncovered the view."""
    M = np.float32([[1, 0, dx], [0, 1, 0]])
    h, w = frame.shape[:2]
    moved = cv2.warpAffine(frame, M, (w, h), flags=cv2.INTER_LINEAR)
    seen = cv2.warpAffine(np.full((h, w), 255, np.uint8), M, (w, h), flags=cv2.INTER_NEAREST)
    return np.where((seen[..., None] if frame.ndim == 3 else seen) > 0, moved, empty)
