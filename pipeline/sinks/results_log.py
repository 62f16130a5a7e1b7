"""results.jsonl: one JSON object per frame, flushed as it is written."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.sinks.base import Sink

PUBLIC_FIELDS = ("frame_id", "source_name", "verdict", "reason", "score", "defects", "latency_ms", "stage_ms")


class ResultsLog(Sink):
    name = "results"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w")
        self.count = 0

    def handle(self, record, arrays, H) -> None:
        self.file.write(json.dumps({k: record.get(k) for k in PUBLIC_FIELDS}) + "\n")
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        self.file.close()
