"""Study: how the tile memory's embedding treatment and the second scale rank whole images.

Embeds every tile of ``train/good`` and ``test/`` at full and at half scale with a trained
Tiny-UNet's own bottleneck (what the memory stores), then scores each test image by the largest
calibrated nearest-neighbour distance of its tiles for several treatments, without thinning the
bank. Prints image AUROC, overall and per defect type. The index research/README.md gives its result.

    python -m research.tile_memory_variants --weights runs/mt_w16b/last.pt --data ../shared/datasets/magnetic_tile

``--weights`` takes a checkpoint (``train``'s last.pt) or a model folder's model.pt. About 3
minutes on 2 CPU cores for magnetic tile.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from engines import metrics
from engines.artifact import ModelMeta
from engines.data import mvtec_test_set, read_image, training_images
from engines.tile_memory import (MEMORY_OVERLAP, nearest_distance, calibrate, collect_embeddings,
                                 fit_projection)
from engines.tiny_unet import TinyUNet
from pipeline.vision.tiling import tiles_at_scale


def load_net(path: Path) -> TinyUNet:
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["model"] if "model" in state else state
    net = TinyUNet(int(weights["inc.0.weight"].shape[1]), int(weights["inc.0.weight"].shape[0]))
    net.load_state_dict({k: v for k, v in weights.items() if "memory" not in k})
    return net.eval()


def embed(net, images, meta, scale):
    return collect_embeddings(net, ((tiles_at_scale(img, 128, MEMORY_OVERLAP, scale), i)
                                    for i, img in enumerate(images)), meta)


def image_scores(train, train_ids, test, test_ids, n_images, sqrt, whiten):
    """Each test image's largest calibrated nearest-neighbour score, for one treatment, no thinning."""
    mean, std, matrix, bank = fit_projection(train, sqrt, whiten)
    center, scale = calibrate(bank, train_ids)
    q = np.sqrt(np.maximum(test, 0)) if sqrt else test
    q = (((q - mean) / std) @ matrix).astype(np.float32)
    tile = 1 / (1 + np.exp(-(nearest_distance(q, bank, (bank ** 2).sum(1)) - center) / scale))
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
            per_scale[sc] = image_scores(tr, tr_ids, te, te_ids, len(samples), sqrt, whiten)
        for label, s in (("full scale", per_scale[1.0]), ("mean with half scale", (per_scale[1.0] + per_scale[0.5]) / 2)):
            per = " ".join(f"{t}={metrics.roc_auc(labels[np.isin(types, ['good', t])], s[np.isin(types, ['good', t])]):.3f}"
                           for t in sorted(set(types) - {"good"}))
            print(f"{name:22s} {label:22s} image AUROC {metrics.roc_auc(labels, s):.3f}  {per}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
