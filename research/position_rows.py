"""Study: does the per-position memory's row cap hold a line back once many frames are recorded?

``commission_line`` fits a memory per tile position (``engines.tile_memory.PositionMemory``) on the
part images as the line rectifies them and the fit frames, thinned to ``POSITION_MEMORY_ROWS`` rows
per position by greedy k-centre. That cap was chosen on the demo line; on a line commissioned from
500 recorded frames each position holds about 900 OK tiles (on the bench, 548 part images as the line
rectifies them and about 350 fit frames), and greedy k-centre keeps the most
unusual of them first. This study takes lines that ``commission_bench`` left behind (each
``LINE/`` folder: ``line.yaml``, ``line_model/``, ``ok_frames/``, ``product/A``, ``test/`` with its
truth), refits the line's memories with each row cap on the same fit frames (``export_model``, as
``commission_line`` does), and scores the held-out OK frames and the test parts as the line does
(``calibration.line.part_scores``): part-score AUROC, NG recall at the best threshold for 5 % false
alarms, and NG recall and false alarms at the threshold the held-out frames give for the target.

    python -m research.position_rows runs/cb_frames500/line290 ... --rows 480,1200

The cap the bench used is read from its ``line_model`` (no refit); every other cap is refitted into
``LINE/position_rows_N/``: about 3 minutes per line and cap on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from research.commission_target import at_targets, line_scores

TARGET = 0.03


def refit(line: Path, rows: int, base_model: str | Path) -> Path:
    """The line's memories refitted as ``commission_line`` fits them, with ``rows`` per position."""
    from calibration.commission import _link_frames, split_frames
    from calibration.memories import export_model
    from pipeline.sources import image_files

    out = line / f"position_rows_{rows}"
    fit = split_frames(image_files(line / "ok_frames"))[0]
    fit_dir = _link_frames(fit, line / f"position_rows_{rows}_fit")
    export_model(base_model, out, memory_data=line / "product" / "A", memory_canonical=line / "line.yaml",
                 memory_frames=fit_dir, memory_positions=True, memory_position_rows=rows, progress=False)
    return out


def summary(scores: dict[str, list[float]]) -> tuple[float, float, float, float]:
    """(AUROC, best recall at 5 %, NG recall and false alarms at the held-out threshold for TARGET)."""
    from pipeline.benchmark import score_ranking

    rank = score_ranking(scores["ng"], scores["ok"])
    (_, recall, false_alarms), = at_targets(scores, (TARGET,))
    return rank["score_auroc"], rank["ng_recall_at_fa_0.05"], recall, false_alarms


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("lines", nargs="+", type=Path, help="LINE folders written by commission_bench")
    p.add_argument("--rows", default="480,1200", help="row caps per position, comma-separated")
    p.add_argument("--model", default="engines/models/magnetic_tile", help="the model the bench commissioned")
    args = p.parse_args()
    caps = [int(r) for r in args.rows.split(",")]
    rows_out = {c: [] for c in caps}
    for line in args.lines:
        used = json.loads((line / "line_model" / "model.json").read_text())["extra"]["memory_positions_rows"]
        cells = []
        for cap in caps:
            model = line / "line_model" if cap == used else refit(line, cap, args.model)
            r = summary(line_scores(line, model))  # held-out frames scored again with each fit
            rows_out[cap].append(r)
            cells.append(f"{cap}: {r[0]:.3f} {r[1]:.3f} {r[2]:.3f}/{r[3]:.3f}")
        print(f"{line.name:>8}  " + "  ".join(cells), flush=True)
    print(f"rows per position: mean AUROC, best recall at 5 %, NG recall / false alarms at the {TARGET:g} threshold")
    for cap, v in rows_out.items():
        a = np.array(v)
        print(f"  {cap:>5}: {a[:, 0].mean():.3f}  {a[:, 1].mean():.3f}  {a[:, 2].mean():.3f}/{a[:, 3].mean():.3f} "
              f"(max false alarms {a[:, 3].max():.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
