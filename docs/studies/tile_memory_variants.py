"""Study: how the tile memory's embedding treatment and the second scale rank whole images.

Embeds every tile of ``train/good`` and ``test/`` at full and at half scale with a trained
Tiny-UNet's own bottleneck (what the memory stores), then scores each test image by the largest
calibrated nearest-neighbour distance of its tiles for several treatments, without thinning the
bank. Prints image AUROC, overall and per defect type. The README's study figures come from this.

    python docs/studies/tile_memory_variants.py --weights runs/mt_w16b/last.pt --data ../shared/datasets/magnetic_tile

``--weights`` takes a checkpoint (``train``'s last.pt) or a model folder's model.pt. About 3
minutes on 2 CPU cores for magnetic tile.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engines import metrics  # noqa: E402
from engines.artifact import ModelMeta  # noqa: E402
from engines.data import mvtec_test_set, read_image, training_images  # noqa: E402
from engines.tile_memory import CALIBRATION_QUANTILE, MEMORY_OVERLAP, WHITEN_SHRINK, collect_embeddings  # noqa: E402
from engines.tiny_unet import TinyUNet  # noqa: E402
from pipeline.vision.tiling import downscale, extract_tiles, tile_grid  # noqa: E402


def load_net(path: Path) -> TinyUNet:
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["model"] if "model" in state else state
    width = int(weights["inc.0.weight"].shape[0])
    net = TinyUNet(int(weights["inc.0.weight"].shape[1]), width)
    net.load_state_dict({k: v for k, v in weights.items() if "memory" not in k})
    return net.eval()


def embed(net, images, meta, scale):
    def tiles():
        for i, img in enumerate(images):
            img = img if scale == 1.0 else downscale(img, scale)
            yield extract_tiles(img, tile_grid(img.shape[0], img.shape[1], 128, MEMORY_OVERLAP)), i
    return collect_embeddings(net, tiles(), meta)


def treat(train, test, sqrt, whiten):
    if sqrt:
        train, test = np.sqrt(np.maximum(train, 0)), np.sqrt(np.maximum(test, 0))
    mu, sd = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mu) / sd, (test - mu) / sd
    if whiten:
        w, v = np.linalg.eigh(np.cov(train, rowvar=False))
        w = np.maximum((1 - WHITEN_SHRINK) * w + WHITEN_SHRINK * w.mean(), 1e-6)
        train, test = train @ (v / np.sqrt(w)), test @ (v / np.sqrt(w))
    return train.astype(np.float32), test.astype(np.float32)


def image_scores(train, train_ids, test, test_ids, n_images):
    sq = (train ** 2).sum(1)

    def nearest(q, exclude=None):
        d = sq[None] + (q ** 2).sum(1)[:, None] - 2 * q @ train.T
        if exclude is not None:
            d[exclude[:, None] == train_ids[None]] = np.inf
        return np.sqrt(np.maximum(d.min(1), 0))

    loo = np.concatenate([nearest(train[i:i + 1024], train_ids[i:i + 1024]) for i in range(0, len(train), 1024)])
    q50, qhi = np.quantile(loo, [0.5, CALIBRATION_QUANTILE])
    tile = 1 / (1 + np.exp(-(nearest(test) - qhi) / (qhi - q50)))
    return np.array([tile[test_ids == i].max() for i in range(n_images)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(2)
    net = load_net(a.weights)
    meta = ModelMeta("tiny_unet", net.width, net.in_channels)
    train = [read_image(f, net.in_channels) for f in training_images(a.data)]
    samples = list(mvtec_test_set(a.data))
    test = [read_image(s.image_path, net.in_channels) for s in samples]
    labels = np.array([s.defect_type != "good" for s in samples])
    types = np.array([s.defect_type for s in samples])
    emb = {sc: (embed(net, train, meta, sc), embed(net, test, meta, sc)) for sc in (1.0, 0.5)}
    for name, sqrt, whiten in (("z-normalised", False, False), ("sqrt + z", True, False),
                               ("z + whitened", False, True), ("sqrt + z + whitened", True, True)):
        per_scale = {}
        for sc, ((tr, tr_ids), (te, te_ids)) in emb.items():
            tr_t, te_t = treat(tr, te, sqrt, whiten)
            per_scale[sc] = image_scores(tr_t, tr_ids, te_t, te_ids, len(samples))
        for label, s in (("full scale", per_scale[1.0]), ("mean with half scale", (per_scale[1.0] + per_scale[0.5]) / 2)):
            per = " ".join(f"{t}={metrics.roc_auc(labels[np.isin(types, ['good', t])], s[np.isin(types, ['good', t])]):.3f}"
                           for t in sorted(set(types) - {"good"}))
            print(f"{name:22s} {label:22s} image AUROC {metrics.roc_auc(labels, s):.3f}  {per}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
