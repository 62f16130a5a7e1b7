"""Study: a tile memory per grid position for a line whose parts all arrive rectified the same way.

The shipped memories score a tile against OK tiles from every position of every training image:
a tile at the top-left corner of a rectified part is compared with interior tiles, other corners
and tiles of images framed otherwise. On a line every part reaches the model in the same canonical
frame, so a tile can be compared with the OK tiles of its own grid position alone (as PaDiM keeps
statistics per position). Here each position of each scale gets its own bank: the tiles of OK line
frames (``--frames``, the frames the shipped folder pooled into its memories) at that position,
projected as the folder's memory projects them (its square root, z-normalisation and whitening),
with its own calibration (each frame's tile against the other frames' tiles at that position: the
0.99 quantile maps to 0.5, as ``tile_memory.calibrate`` does). The line's parts are then scored with
the tile scores replaced by the positional ones (``position``) or by the mean of the two
(``mean``), everything else as the line does (``decide`` with the folder's rule). Prints NG recall
at <= 5 % false alarms per sequence and the blowholes missed by their distance to the part's border.

    python -m research.position_memory --model engines/models/magnetic_tile --data ../shared/datasets/magnetic_tile \\
        --frames runs/demo_line_ok_frames --line SEQ [SEQ ...]

About 2 minutes for the frames and 15 s per 120-part sequence on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from research.border_blowholes import BANDS, border_distance
from engines.artifact import ModelMeta
from engines.backends.base import load_backend, map_coarse_tiles
from engines.data import mvtec_test_set, read_image, read_mask, training_images
from engines.export import load_model_folder
from engines.tile_memory import CALIBRATION_QUANTILE, k_center, nearest_distance, top_up_rows
from pipeline.benchmark import false_alarm_bar
from pipeline.config import load_config
from pipeline.vision.scoring import score_part
from pipeline.processing import Preprocessor
from pipeline.sim import sequence_parts
from pipeline.sources import decode_frame
from pipeline.vision.rectify import canonical_view
from pipeline.vision.tiling import downscale, extract_tiles



class PositionMemory:
    """Per-position banks of projected OK tile embeddings, one calibration per position, in several
    forms: every OK tile (``all``: each tile calibrated against the other parts' tiles), or ``rows``
    of them kept per position by greedy k-centre (``kcN``) or at random (``rndN``), calibrated against
    the kept rows; the forms ``shared`` and ``topN`` (``fit_shared``) are what a model folder keeps
    (``engines.tile_memory.top_up_rows``)."""

    def __init__(self, model: torch.nn.Module, forms: list[str]) -> None:
        self.model = model
        self.forms = forms
        self.banks: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, float, float]] = {}

    @torch.inference_mode()
    def project(self, tiles: np.ndarray, meta: ModelMeta, coarse: np.ndarray) -> np.ndarray:
        emb = self.model.embed(torch.from_numpy(meta.normalise(tiles)))
        fine = self.model.memory.project(emb).numpy()
        rough = self.model.coarse_memory.project(emb).numpy()
        return np.where(coarse[:, None], rough, fine)

    def fit(self, z: np.ndarray, positions: np.ndarray, parts: np.ndarray) -> None:
        """``parts``: which part each tile shows; a tile is calibrated against other parts' tiles."""
        rng = np.random.default_rng(0)
        for pos in np.unique(positions):
            at = positions == pos
            zp = z[at].astype(np.float64)
            pp = parts[at]
            for form in self.forms:
                if form == "shared" or form.startswith("top"):
                    continue
                if form.startswith(("gauss", "ppca")):
                    self.banks[(form, int(pos))] = self._gaussian(form, zp)
                    continue
                if form == "all":
                    keep = np.arange(len(zp))
                elif form.startswith("kc"):
                    keep = np.resize(k_center(zp.astype(np.float32), int(form[2:])), int(form[2:]))
                else:
                    keep = rng.choice(len(zp), min(int(form[3:]), len(zp)), replace=False)
                bank = zp[keep].astype(np.float16).astype(np.float64)
                sq = (bank ** 2).sum(1)
                d = nearest_distance(zp, bank, sq, pp[:, None] == pp[keep][None])
                d = d[np.isfinite(d)]
                q50, qhi = np.quantile(d, [0.5, CALIBRATION_QUANTILE])
                self.banks[(form, int(pos))] = (bank, sq, float(qhi), float(max(qhi - q50, 1e-3)))

    @staticmethod
    def _mahalanobis(model: tuple, x: np.ndarray) -> np.ndarray:
        mean, vecs, inv_vals, inv_rest = model
        c = x - mean
        proj = c @ vecs
        return np.sqrt(((proj ** 2) * inv_vals).sum(1) + inv_rest * ((c ** 2).sum(1) - (proj ** 2).sum(1)))

    def _gaussian(self, form: str, zp: np.ndarray) -> tuple:
        """A Gaussian of the position's OK tiles: full covariance shrunk 10 % towards its mean
        eigenvalue (``gauss``), or its ``r`` leading directions and one variance for the rest
        (``ppcaR``); calibrated on the same tiles' own distances."""
        mean = zp.mean(0)
        vals, vecs = np.linalg.eigh(np.cov(zp - mean, rowvar=False))
        vals = np.maximum(vals[::-1], 1e-6)
        vecs = vecs[:, ::-1]
        if form == "gauss":
            vals = 0.9 * vals + 0.1 * vals.mean()
            model = (mean, vecs, 1.0 / vals, 0.0)
        else:
            r = int(form[4:])
            rest = max(float(vals[r:].mean()), 1e-6)
            model = (mean, vecs[:, :r], 1.0 / vals[:r], 1.0 / rest)
        d = self._mahalanobis(model, zp)
        q50, qhi = np.quantile(d, [0.5, CALIBRATION_QUANTILE])
        return ("gauss", model, float(qhi), float(max(qhi - q50, 1e-3)))

    def fit_shared(self, npz: Path, n_fine: int) -> None:
        """Forms ``shared`` and ``topN``: each position's rows of the folder's own shared banks
        (``runs``-side replay of the fit: z, positions, parts and the kept rows per scale), alone or
        topped up to N, as ``engines.tile_memory.top_up_rows`` keeps and calibrates them."""
        data = np.load(npz)
        tops = [f for f in self.forms if f.startswith("top")]
        for tag, offset in (("fine", 0), ("coarse", n_fine)):
            z, pos, parts, keep = (data[f"{tag}_{k}"] for k in ("z", "pos", "parts", "keep"))
            shared_bank = z[keep].astype(np.float16).astype(np.float32)
            for form in ["shared"] + tops:
                rows = 0 if form == "shared" else int(form[3:])
                tags, extra, extra_tags, centres, scales = top_up_rows(z, pos, parts, keep, shared_bank,
                                                                       int(pos.max()) + 1, rows)
                for p in range(int(pos.max()) + 1):
                    bank = np.concatenate([shared_bank[tags == p], extra[extra_tags == p]]).astype(np.float64)
                    self.banks[(form, p + offset)] = (bank, (bank ** 2).sum(1), float(centres[p]), float(scales[p]))

    def score(self, form: str, z: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out = np.zeros(len(z))
        for i, pos in enumerate(positions):
            bank, sq, center, scale = self.banks[(form, int(pos))]
            if isinstance(bank, str):
                d = self._mahalanobis(sq, z[i:i + 1].astype(np.float64))[0]
                out[i] = 1.0 / (1.0 + np.exp(-(d - center) / scale))
                continue
            d = nearest_distance(z[i:i + 1].astype(np.float64), bank, sq)[0]
            out[i] = 1.0 / (1.0 + np.exp(-(d - center) / scale))
        return out


def border_distances(data: Path) -> dict[str, int]:
    return {Path(s.image_path).name: border_distance(read_mask(s.mask_path, read_image(s.image_path).shape[:2]))
            for s in mvtec_test_set(data) if s.defect_type == "blowhole"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="MVTec-style folder the sequences were made from")
    p.add_argument("--frames", type=Path, required=True, help="camera frames of OK parts on the line")
    p.add_argument("--line", type=Path, nargs="+", required=True, metavar="SEQ")
    p.add_argument("--config", type=Path, default=Path("configs/demo_line.yaml"))
    p.add_argument("--forms", nargs="+", default=["all"],
                   help="bank forms: all, kcN (N rows by k-centre), rndN (N rows at random), gauss, ppcaR, shared "
                        "(the shared banks' rows of each position), topN (those topped up to N by k-centre)")
    p.add_argument("--shared-npz", type=Path, help="for forms shared and topR: the replayed fit of the folder's "
                   "shared banks (z, positions, parts, kept rows per scale)")
    p.add_argument("--canonical", type=Path, help="OK part images (or an MVTec folder's train/good) whose "
                   "canonical views join the banks, as --memory-canonical joins them to the shipped memories")
    a = p.parse_args()
    meta = ModelMeta.load(a.model)
    cfg = load_config(a.config)
    prep = Preprocessor.for_model(cfg.preprocess, meta)
    backend = load_backend("onnxruntime", a.model)
    model, _ = load_model_folder(a.model)
    variants = ["shipped"] + a.forms + (["mean"] if "all" in a.forms else [])
    memory = PositionMemory(model, a.forms)

    truth = {}
    if (a.frames / "truth.jsonl").is_file():
        truth = {r["file"]: r.get("source_image", r["file"]) for r in map(json.loads, open(a.frames / "truth.jsonl"))}
    zs, poss, parts = [], [], []
    for path in training_images(a.frames):
        frame, _ = decode_frame(path)
        prepared = prep(frame)
        if prepared.verdict is None:
            zs.append(memory.project(prepared.tiles, meta, prepared.tile_index >= len(prepared.grid)))
            poss.append(prepared.tile_index)
            parts += [truth.get(path.name, path.name)] * len(prepared.tile_index)
    n_frames = len(zs)
    if a.canonical is not None:
        for path in training_images(a.canonical):
            view = canonical_view(read_image(path, meta.in_channels), prep.wh)
            tiles = [extract_tiles(view, prep.grid)]
            if prep.coarse_grid is not None:
                tiles.append(extract_tiles(downscale(view, meta.coarse_scale), prep.coarse_grid))
            n_fine = len(tiles[0])
            tiles = np.concatenate(tiles)
            index = np.arange(len(tiles))
            zs.append(memory.project(tiles, meta, index >= n_fine))
            poss.append(index)
            parts += [path.name] * len(tiles)
    memory.fit(np.concatenate(zs), np.concatenate(poss), np.array(parts))
    if any(f == "shared" or f.startswith("top") for f in a.forms):
        memory.fit_shared(a.shared_npz, len(prep.grid))
        print("shared rows per position: " + ", ".join(f"{k[1]}: {len(v[0])}" for k, v in sorted(memory.banks.items())
                                                       if k[0] == "shared"))
    print(f"{a.model}: positional banks from {n_frames} OK frames"
          + (f" and {len(zs) - n_frames} canonical views of {a.canonical}" if a.canonical else "") + ": "
          + ", ".join(f"{k}: {len(v[0])}" for k, v in sorted(memory.banks.items()) if k[0] == "all"))

    distance = border_distances(a.data)
    recalls = {v: [] for v in variants}
    missed = {v: {} for v in variants}
    total: dict[int, int] = {}
    for seq in a.line:
        parts = []
        for t, frame in sequence_parts(seq):
            prepared = prep(frame)
            scores = {v: None for v in variants}
            if prepared.verdict is None:
                coarse = prepared.tile_index >= len(prepared.grid)
                maps, tile_scores = backend.infer(meta.normalise(prepared.tiles))
                maps = map_coarse_tiles(backend, prepared.tiles, maps, coarse)
                z = memory.project(prepared.tiles, meta, coarse)
                positional = {f: memory.score(f, z, prepared.tile_index) for f in a.forms}
                for v in variants:
                    s = tile_scores[:, :2].copy()
                    if v != "shipped":
                        col = np.where(coarse, 1, 0)
                        rows = np.arange(len(s))
                        s[rows, col] = positional["all"] if v == "mean" else positional[v]
                        if v == "mean":
                            s[rows, col] = 0.5 * (tile_scores[rows, col] + positional["all"])
                    scores[v] = score_part(prepared.part(maps, s), meta.map_rule(),
                                           cfg.decision.part_erode_px).score
            parts.append((t, scores))
        for v in variants:
            bar = false_alarm_bar([s[v] for t, s in parts if t["verdict"] == "OK"])
            ng = [(t, s[v]) for t, s in parts if t["verdict"] == "NG"]
            recalls[v].append(sum(s is not None and s > bar for _, s in ng) / len(ng))
            for t, s in ng:
                if t["defect_type"] == "blowhole" and t.get("source_image") in distance:
                    lo = next(lo for lo, hi in BANDS if lo <= distance[t["source_image"]] <= hi)
                    if v == "shipped":
                        total[lo] = total.get(lo, 0) + 1
                    missed[v][lo] = missed[v].get(lo, 0) + int(s is None or s <= bar)
        print(f"{seq}: " + ", ".join(f"{v} {recalls[v][-1]:.3f}" for v in variants), flush=True)
    for v in variants:
        r = recalls[v]
        print(f"{v:<9} recall " + " ".join(f"{x:.2f}" for x in r) + f"  mean {np.mean(r):.4f}, last 8 "
              f"{np.mean(r[-8:]):.3f}; blowholes missed "
              + ", ".join(f"{lo}-{hi if hi < 10_000 else ''} px {missed[v].get(lo, 0)} of {total.get(lo, 0)}"
                          for lo, hi in BANDS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
