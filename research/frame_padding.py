"""Study: does mirroring a margin around each image before tiling let the tile memories see
blowholes at the part's border (README, "Blowholes at the border")?

Every tile of the demo line's 224 x 296 canonical part touches the part's border, and a blowhole
2-15 px from that border lies in its tile's outermost pixels, where the network's zero padding
meets it. Here every image is reflect-padded by ``--pad`` px on each side (by half that on the
half-scale pass, which is the padded image downscaled) before it is tiled: at fitting time (the
training images, their canonical views and the OK line frames, as the shipped folder's memories
were fitted) and at scoring time (the development split through the detector, the line's parts
through the line's preprocessing and ``decide``). The memories are refitted into ``--out``; the
network is the folder's. Prints the split's image AUROC, the line's NG recall at <= 5 % false
alarms per sequence and the blowholes missed by distance to the border, with and without the pad.

    python -m research.frame_padding --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile \\
        --frames runs/demo_line_ok_frames --pad 16 --out runs/pad16 --line SEQ [SEQ ...]

About 4 minutes for the refit and 10 s per 120-part sequence on 2 CPU cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import engines.tile_memory as tile_memory
import pipeline.processing as processing
from engines import metrics
from engines.artifact import ModelMeta
from research.border_blowholes import BANDS, border_distance, line_part_scores
from engines.backends.base import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector
from pipeline.benchmark import false_alarm_bar
from pipeline.config import load_config
from pipeline.vision.tiling import extract_tiles, scaled_shape, tile_grid

_plain_tiles_at_scale = tile_memory.tiles_at_scale


def mirror(image: np.ndarray, pad: int) -> np.ndarray:
    if pad <= 0:
        return image
    widths = ((pad, pad), (pad, pad)) + (((0, 0),) if image.ndim == 3 else ())
    return np.pad(image, widths, mode="reflect")


def padded_preprocessor(pad: int) -> type:
    """The line's preprocessing with the canonical part (and its mask) mirrored by ``pad`` px (by
    ``pad`` x the coarse scale on the coarse pass) before tiling; grids cover the padded part."""
    base = processing.Preprocessor

    class Padded(base):
        def __init__(self, cfg, tile=128, channels=1, coarse_scale=0.0):
            super().__init__(cfg, tile, channels, coarse_scale)
            w, h = self.wh
            self.grid = tile_grid(h + 2 * pad, w + 2 * pad, tile, cfg.tile_overlap)
            if self.coarse_grid is not None:
                ch, cw = scaled_shape(h, w, coarse_scale)
                cp = int(round(pad * coarse_scale))
                self.coarse_grid = tile_grid(ch + 2 * cp, cw + 2 * cp, tile, cfg.tile_overlap)

        def _tiles(self, image, part_mask, grid):
            p = pad if grid is self.grid else int(round(pad * self.coarse_scale))
            image, part_mask = mirror(image, p), mirror(part_mask, p)
            fractions = extract_tiles(part_mask, grid).reshape(len(grid), -1).mean(axis=1) / 255.0
            keep = np.nonzero(fractions >= self.cfg.min_tile_part_fraction)[0].astype(np.int32)
            return extract_tiles(image, grid)[keep], keep

        def __call__(self, frame):
            p = super().__call__(frame)
            if p.verdict is None:
                p.part_mask = mirror(p.part_mask, pad)
            return p

    return Padded


def install(pad: int) -> None:
    """Every tiling the memories' fit and the line's scoring do, padded."""
    if pad <= 0:
        return
    tile_memory.tiles_at_scale = lambda img, tile, overlap, scale=1.0: _plain_tiles_at_scale(
        mirror(img, pad), tile, overlap, scale)
    processing.Preprocessor = padded_preprocessor(pad)


def split_report(model: Path, data: Path, pad: int) -> dict[str, int]:
    det = Detector(load_backend("onnxruntime", model))
    samples = mvtec_test_set(data)
    scores = np.array([det.predict(mirror(read_image(s.image_path, det.meta.in_channels), pad)).score
                       for s in samples])
    labels = np.array([s.defect_type != "good" for s in samples])
    distance = {Path(s.image_path).name: border_distance(read_mask(s.mask_path, read_image(s.image_path).shape[:2]))
                for s in samples if s.defect_type == "blowhole"}
    bar = false_alarm_bar(scores[~labels].tolist())
    recall = float((scores[labels] > bar).mean())
    print(f"split (pad {pad}): image AUROC {metrics.roc_auc(labels, scores):.4f}, recall at <= 5 % false alarms "
          f"{recall:.3f}")
    return distance


def line_report(model: Path, config: Path, seqs: list[Path], distance: dict[str, int], pad: int) -> None:
    meta = ModelMeta.load(model)
    cfg = load_config(config)
    prep = processing.Preprocessor.for_model(cfg.preprocess, meta)
    backend = load_backend("onnxruntime", model)
    recalls, missed, total = [], {}, {}
    for seq in seqs:
        parts = line_part_scores(backend, meta, cfg, prep, seq)
        bar = false_alarm_bar([s for t, s in parts if t["verdict"] == "OK"])
        ng = [(t, s) for t, s in parts if t["verdict"] == "NG"]
        recalls.append(sum(s is not None and s > bar for _, s in ng) / len(ng))
        for t, s in ng:
            if t["defect_type"] == "blowhole" and t.get("source_image") in distance:
                d = distance[t["source_image"]]
                lo = next(lo for lo, hi in BANDS if lo <= d <= hi)
                total[lo] = total.get(lo, 0) + 1
                missed[lo] = missed.get(lo, 0) + int(s is None or s <= bar)
    print(f"line (pad {pad}): recall " + " ".join(f"{r:.2f}" for r in recalls)
          + f"  mean {np.mean(recalls):.3f}, last 8 {np.mean(recalls[-8:]):.3f}")
    print("  blowholes missed by distance to border: "
          + ", ".join(f"{lo}-{hi if hi < 10_000 else ''} px {missed.get(lo, 0)} of {total.get(lo, 0)}"
                      for lo, hi in BANDS))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--frames", type=Path, required=True, help="the OK line frames the folder's memories pooled")
    p.add_argument("--pad", type=int, required=True, help="px mirrored on each side (even)")
    p.add_argument("--out", type=Path, required=True, help="folder for the refitted memories")
    p.add_argument("--line", type=Path, nargs="*", default=[], metavar="SEQ")
    p.add_argument("--config", type=Path, default=Path("configs/demo_line.yaml"))
    p.add_argument("--skip-refit", action="store_true", help="--out already holds the refit")
    a = p.parse_args()
    if a.pad % 2:
        p.error("--pad must be even (the half-scale pass pads by half of it)")
    install(a.pad)
    if not a.skip_refit:
        import engines.export as export
        export.export_model(a.model, a.out, memory_data=a.data, memory_canonical=a.config,
                            memory_frames=a.frames, progress=False)
    distance = split_report(a.out, a.data, a.pad)
    if a.line:
        line_report(a.out, a.config, a.line, distance, a.pad)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
