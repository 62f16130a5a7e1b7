"""Study: should a tile memory fitted on few OK tiles be whitened?

On Fashion-MNIST (one class as the OK part, one 128x128 tile per image, :mod:`engines.fashion_mnist`)
two networks are trained for three steps (on 40 and on 300 OK images; the memories carry the image
score), then the memories are refitted on the first N training images with the whitening's
eigenvalue shrink at 0.1 (``tile_memory.WHITEN_SHRINK``) and at 1.0 (no whitening), and image AUROC
is measured on the product's test images. Chosen on the class ``trouser``; the product benchmark
reports ``sneaker``.

    python -m research.small_memory_whitening --out runs/small_memory_whitening

About 5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engines.data import read_image, training_images
from engines.fashion_mnist import DEFAULT_ROOT, ProductSpec
from engines.product_bench import bench


def refit_auroc(run: Path, n_images: int, shrink: float, out: Path) -> float:
    from engines.artifact import ModelMeta
    from engines.evaluate import evaluate
    from engines.export import export_model
    from engines.tile_memory import attach_memories

    images = [read_image(f, 1) for f in training_images(run / "data")[:n_images]]

    def memories(model, cfg: dict) -> tuple[dict, dict]:
        attach_memories(model, images, ModelMeta(arch=cfg["arch"], width=cfg["width"], in_channels=1),
                        progress=False, whiten_shrink=shrink)
        return {}, {}

    model = export_model(run / "seed0" / "train" / "last.pt", out / "model", progress=False, memories=memories)
    return evaluate(model, run / "data", out / "eval", progress=False)["image_auroc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--ok-class", default="trouser")
    p.add_argument("--fashion-mnist", default=str(DEFAULT_ROOT))
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for trained_on, sizes in ((40, (40,)), (300, (20, 40, 60, 100, 200, 300))):
        run = out / f"net{trained_on}"
        bench(run, ProductSpec(ok_class=args.ok_class, n_train=trained_on), (0,), epochs=1, steps_per_epoch=3,
              threads=1, root=args.fashion_mnist, progress=False)
        for n in sizes:
            aurocs = {s: refit_auroc(run, n, s, out / f"net{trained_on}_n{n}_s{s}") for s in (0.1, 1.0)}
            rows.append({"network_trained_on": trained_on, "memory_images": n,
                         "whitened_0.1": aurocs[0.1], "plain_1.0": aurocs[1.0]})
            print(f"network of {trained_on:3d} images, memory of {n:3d}: image AUROC whitened {aurocs[0.1]:.3f}, "
                  f"plain {aurocs[1.0]:.3f}", flush=True)
    (out / "small_memory_whitening.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
