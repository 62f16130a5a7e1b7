"""Study: how much the image score depends on how an image is framed.

Every development image is cropped by N px at its top and left before the detector sees it, so the
tile grid falls on other parts of the surface than in training; prints image AUROC per crop. With
``--refit-shrink X`` the folder's memories are first refitted (into ``--out``) the way the shipped
folder's were (training images, the demo line's canonical views and its OK frames), but with the
whitening's eigenvalue shrink at X instead of ``tile_memory.WHITEN_SHRINK``: 1.0 turns the
whitening into a plain scaling, which tells whether the whitening makes the memories sensitive to
framing.

    python -m research.framing_crop --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile
    python -m research.framing_crop --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile \\
        --refit-shrink 1.0 --out runs/framing_shrink1 --frames runs/demo_line_ok_frames

About 3 minutes per folder on 2 CPU cores, plus 3 for a refit.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engines import metrics
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image
from engines.detector import Detector


def refit(model: str, out: str, data: str, shrink: float, line: str, frames: str) -> str:
    from functools import partial

    from calibration.memories import check_memory_options, fit_memories
    from engines.export import export_model

    check_memory_options(data, None, line, frames, False, None)
    export_model(model, out, progress=False, memories=partial(fit_memories, memory_data=data, memory_canonical=line,
                                                             memory_frames=frames, progress=False,
                                                             whiten_shrink=shrink))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--crops", type=int, nargs="+", default=[0, 2, 8, 16])
    p.add_argument("--refit-shrink", type=float, help="refit the memories with this whitening shrink first")
    p.add_argument("--out", help="folder for the refitted model")
    p.add_argument("--line", default="configs/demo_line.yaml", help="with --refit-shrink: canonical views of this line")
    p.add_argument("--frames", help="with --refit-shrink: OK line frames pooled into the memories, as shipped")
    a = p.parse_args()
    model = a.model
    if a.refit_shrink is not None:
        if not a.out:
            p.error("--refit-shrink needs --out")
        model = refit(a.model, a.out, a.data, a.refit_shrink, a.line, a.frames)
    det = Detector(load_backend("onnxruntime", model))
    samples = mvtec_test_set(Path(a.data))
    images = [read_image(s.image_path, det.meta.in_channels) for s in samples]
    labels = np.array([s.defect_type != "good" for s in samples])
    print(f"{model}" + (f" (memories refitted, whitening shrink {a.refit_shrink})" if a.refit_shrink is not None else ""))
    for crop in a.crops:
        scores = np.array([det.predict(im[crop:, crop:]).score for im in images])
        print(f"  crop {crop:>2} px: image AUROC {metrics.roc_auc(labels, scores):.4f}", flush=True)


if __name__ == "__main__":
    main()
