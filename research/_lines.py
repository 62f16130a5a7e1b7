"""What the part-outline studies share: their options, and a simulated line's belt model chosen as
calibration chooses it, at the scale the line locates parts at."""
from __future__ import annotations

import argparse

from calibration.bench import geometry_for
from calibration.line import choose_belt
from pipeline.config import PreprocessConfig
from pipeline.sim import LineGeometry, simulate
from pipeline.vision.belt import BeltModel

MIN_AREA = 2000  # camera px: the smallest blob taken for a part here (parts are 80,000 px and more)


def add_line_options(ap: argparse.ArgumentParser, lines: str) -> None:
    """--data, --lines (default ``lines``), --fit-frames, --ok, --ng and --set."""
    ap.add_argument("--data", required=True, help="MVTec-style folder (train/good and test/)")
    ap.add_argument("--lines", default=lines, help=f"line seeds, e.g. {lines} or 210,212")
    ap.add_argument("--fit-frames", type=int, default=12, help="recorded OK frames the belt is fitted on")
    ap.add_argument("--ok", type=int, default=20)
    ap.add_argument("--ng", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override one field of every line's geometry, as commission_bench --set (e.g. vignetting=0.25)")


def overrides(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in args.set)


def line_belt(data: str, seed: int, fit_frames: int, changes: dict[str, str] | None = None
              ) -> tuple[LineGeometry, BeltModel]:
    """Line ``seed``'s geometry (with ``changes``) and its belt model, chosen by ``choose_belt`` on
    ``fit_frames`` recorded frames of training parts."""
    g = geometry_for(seed, changes)
    fit = [f.frame for f in simulate(data, fit_frames, 0, 0, seed=seed + 5000, geometry=g, ok_from="train/good")]
    return g, choose_belt(fit, "mono" if g.mono else "colour", PreprocessConfig().downscale)[0]
