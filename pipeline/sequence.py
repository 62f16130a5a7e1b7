"""Recorded sequences: a folder of PNG frames plus ``sequence.jsonl`` (file, capture time in ns)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

INDEX = "sequence.jsonl"


class SequenceWriter:
    def __init__(self, folder: str | Path, ext: str = ".png", jpeg_quality: int = 95) -> None:
        if ext not in (".png", ".jpg"):
            raise ValueError(f"sequence frame format {ext!r}; expected .png or .jpg")
        self.ext, self.params = ext, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext == ".jpg" else []
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = (self.folder / INDEX).open("w")
        self.count = 0

    def add(self, frame: np.ndarray, capture_ns: int) -> str:
        name = f"{self.count:06d}{self.ext}"
        if not cv2.imwrite(str(self.folder / name), frame, self.params):
            raise OSError(f"{self.folder / name}: could not write frame")
        self.index.write(json.dumps({"file": name, "capture_ns": int(capture_ns)}) + "\n")
        self.index.flush()
        self.count += 1
        return name

    def close(self) -> None:
        self.index.close()


def read_index(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    index = folder / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{index}: not a recorded sequence (record one with record_sequence)")
    entries = []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            entries.append({"file": str(e["file"]), "capture_ns": int(e["capture_ns"])})
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}:{n}: bad entry ({exc}); expected {{\"file\": ..., \"capture_ns\": ...}}") from exc
    return entries


def iter_sequence(folder: str | Path) -> Iterator[tuple[str, int, Path]]:
    folder = Path(folder)
    for e in read_index(folder):
        yield e["file"], e["capture_ns"], folder / e["file"]
