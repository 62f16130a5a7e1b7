"""Overlay images (and optional masks) for NG frames, in camera coordinates."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from pipeline.sinks.base import Sink


DEFECT_BGR = (0, 0, 255)  # red: a region at the pixel threshold
WEAK_BGR = (0, 165, 255)  # orange: an NG part's strongest region below it (pipeline.vision.defects.strongest_region)


def draw_overlay(frame: np.ndarray, record: dict, anomaly_map: np.ndarray | None, H: np.ndarray | None) -> np.ndarray:
    out = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if anomaly_map is not None and H is not None:
        heat_canon = (np.clip(anomaly_map.astype(np.float32), 0, 1) * 255).astype(np.uint8)
        heat = cv2.warpPerspective(heat_canon, np.linalg.inv(H), (out.shape[1], out.shape[0]))
        colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
        on = heat > 25
        out[on] = (0.55 * out[on] + 0.45 * colour[on]).astype(np.uint8)
    for d in record.get("defects", []):
        weak = bool(d.get("below_pixel_threshold"))
        colour = WEAK_BGR if weak else DEFECT_BGR
        poly = np.round(np.asarray(d["polygon"])).astype(np.int32)
        cv2.polylines(out, [poly], True, colour, 2)
        x, y, w, h = d["bbox"]
        label = f"{d['score']:.2f}" + (" weak" if weak else "")
        cv2.putText(out, label, (x, max(10, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    cv2.putText(out, f"{record['verdict']} {record.get('score') or 0:.3f} {record.get('source_name')}", (8, 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
    return out


class OverlaySink(Sink):
    """An image that cannot be written (disk full, folder gone) is counted and reported, not raised:
    overlays are for people, and the verdict must still reach the PLC, the MES and the results."""
    name = "overlays"
    blocking = True  # PNG encoding and a slow or network disk: on its own thread

    def __init__(self, folder: str | Path, save_masks: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.save_masks = save_masks
        self.failures = 0

    def _write(self, path: Path, image: np.ndarray) -> None:
        try:
            ok = cv2.imwrite(str(path), image)
        except cv2.error:
            ok = False
        if not ok:
            self.failures += 1
            if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                print(f"overlays sink: cannot write {path} (disk full, or the folder gone?); {self.failures} image(s) "
                      "not written so far", file=sys.stderr)

    def handle(self, record, arrays, H) -> None:
        if record["verdict"] != "NG" or "frame" not in arrays:
            return
        stem = f"{record['frame_id']:06d}_{Path(str(record['source_name'])).stem}"
        frame = arrays["frame"]
        self._write(self.folder / f"{stem}_overlay.png", draw_overlay(frame, record, arrays.get("anomaly_map"), H))
        if self.save_masks:
            mask = np.zeros(frame.shape[:2], np.uint8)
            for d in record.get("defects", []):
                cv2.fillPoly(mask, [np.round(np.asarray(d["polygon"])).astype(np.int32)], 255)
            self._write(self.folder / f"{stem}_mask.png", mask)
