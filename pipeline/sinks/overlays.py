"""Overlay images (and optional masks) for NG frames, in camera coordinates."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.log import get
from pipeline.sinks.base import Sink


DEFECT_BGR = (0, 0, 255)  # red: a region at the pixel threshold
WEAK_BGR = (0, 165, 255)  # orange: an NG part's strongest region below it (pipeline.vision.defects.strongest_region)


LEGEND_BG = (40, 40, 40)
LEGEND_FG = (235, 235, 235)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_overlay(frame: np.ndarray, record: dict, anomaly_map: np.ndarray | None, H: np.ndarray | None,
                 image_threshold: float | None = None) -> np.ndarray:
    """The frame with the defect map as heat, each defect outlined and numbered, and a legend strip
    below it: the verdict and part score against the image threshold, what an outline's number is
    (the part score from that region alone, ``MapRule.region_score``: on the part score's scale,
    read against the same threshold; the map's peak for records that lack it), and the colours."""
    out = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if anomaly_map is not None and H is not None:
        heat_canon = (np.clip(anomaly_map.astype(np.float32), 0, 1) * 255).astype(np.uint8)
        heat = cv2.warpPerspective(heat_canon, np.linalg.inv(H), (out.shape[1], out.shape[0]))
        colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
        on = heat > 25
        out[on] = (0.55 * out[on] + 0.45 * colour[on]).astype(np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    for i, d in enumerate(record.get("defects", []), 1):
        weak = bool(d.get("below_pixel_threshold"))
        colour = WEAK_BGR if weak else DEFECT_BGR
        poly = np.round(np.asarray(d["polygon"])).astype(np.int32)
        cv2.polylines(out, [poly], True, colour, 2)
        x, y, w, h = d["bbox"]
        value = d.get("part_score", d["score"])
        _label(out, f"{i}: {value:.2f}", (x, max(12, y - 4)), colour, placed)
    return np.vstack([out, legend(out.shape[1], record, image_threshold)])


def _label(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int],
           placed: list[tuple[int, int, int, int]]) -> None:
    """``text`` on a dark box, readable over the heat; moved down past the boxes already ``placed``
    so that two defects' labels never cover each other."""
    (w, h), base = cv2.getTextSize(text, _FONT, 0.45, 1)
    x, y = origin
    while any(x - 1 < bx1 and bx0 < x + w + 1 and y - h - 2 < by1 and by0 < y + base for bx0, by0, bx1, by1 in placed):
        y += h + base + 3
    placed.append((x - 1, y - h - 2, x + w + 1, y + base))
    cv2.rectangle(image, (x - 1, y - h - 2), (x + w + 1, y + base), LEGEND_BG, -1)
    cv2.putText(image, text, (x, y), _FONT, 0.45, colour, 1)


def legend(width: int, record: dict, image_threshold: float | None) -> np.ndarray:
    """The strip under an overlay that says what its colours and numbers mean."""
    strip = np.full((78, width, 3), LEGEND_BG, np.uint8)
    score = record.get("score")
    verdict = str(record.get("verdict"))
    line = f"{verdict}  part score {score:.3f}" if score is not None else f"{verdict}  no score"
    if image_threshold is not None:
        line += f" (NG at >= {image_threshold:.3f})"
    line += f"  {record.get('source_name', '')}"
    cv2.putText(strip, line, (6, 18), _FONT, 0.5, DEFECT_BGR if verdict == "NG" else LEGEND_FG, 1)
    cv2.putText(strip, "outline label  n: s  = defect n; s = part score from that region alone",
                (6, 40), _FONT, 0.4, LEGEND_FG, 1)
    x = 6
    for colour, text in ((DEFECT_BGR, "map at pixel threshold"), (WEAK_BGR, "strongest, below it")):
        cv2.rectangle(strip, (x, 52), (x + 14, 66), colour, 2)
        cv2.putText(strip, text, (x + 20, 64), _FONT, 0.4, LEGEND_FG, 1)
        x += 26 + 8 * len(text)
    bar_w = max(0, min(120, width - x - 60))
    if bar_w > 10:  # the heat's scale: the defect map from 0 to 1
        ramp = cv2.applyColorMap(np.linspace(0, 255, bar_w).astype(np.uint8)[None, :], cv2.COLORMAP_JET)
        cv2.putText(strip, "map 0", (x, 64), _FONT, 0.4, LEGEND_FG, 1)
        strip[54:66, x + 44:x + 44 + bar_w] = ramp
        cv2.putText(strip, "1", (x + 48 + bar_w, 64), _FONT, 0.4, LEGEND_FG, 1)
    return strip


class OverlaySink(Sink):
    """An image that cannot be written (disk full, folder gone) is counted and reported, not raised:
    overlays are for people, and the verdict must still reach the PLC, the MES and the results."""
    name = "overlays"
    blocking = True  # PNG encoding and a slow or network disk: on its own thread

    def __init__(self, folder: str | Path, save_masks: bool = False, image_threshold: float | None = None) -> None:
        self.folder = Path(folder)
        self.image_threshold = image_threshold
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
                get("overlays sink").warning(f"cannot write {path} (disk full, or the folder gone?); {self.failures} image(s) "
                      "not written so far")

    def handle(self, record, arrays, H) -> None:
        if record["verdict"] != "NG" or "frame" not in arrays:
            return
        stem = f"{record['frame_id']:06d}_{Path(str(record['source_name'])).stem}"
        frame = arrays["frame"]
        self._write(self.folder / f"{stem}_overlay.png", draw_overlay(frame, record, arrays.get("anomaly_map"), H,
                                                                          self.image_threshold))
        if self.save_masks:
            mask = np.zeros(frame.shape[:2], np.uint8)
            for d in record.get("defects", []):
                cv2.fillPoly(mask, [np.round(np.asarray(d["polygon"])).astype(np.int32)], 255)
            self._write(self.folder / f"{stem}_mask.png", mask)
