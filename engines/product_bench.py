"""The second-product check: train with the defaults on a product other than magnetic tiles
(Fashion-MNIST, one class as the OK part, :mod:`engines.fashion_mnist`), export, and measure image
AUROC on its test images, per seed. A change that helps magnetic tiles but hurts another product
shows here."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from engines.fashion_mnist import DEFAULT_ROOT, ProductSpec, write_product
from engines.train_config import TrainConfig, warmup_for


def run_seed(data: Path, out: Path, seed: int, epochs: int, steps_per_epoch: int, threads: int,
             progress: bool = True) -> dict:
    """Train (the defaults, but for ``epochs``/``steps_per_epoch``), export and evaluate one seed."""
    from engines.evaluate import evaluate
    from engines.export import export_model
    from engines.train import train

    cfg = TrainConfig(data=str(data), out=str(out / "train"), seed=seed, epochs=epochs,
                      steps_per_epoch=steps_per_epoch, threads=threads,
                      warmup_steps=warmup_for(epochs, steps_per_epoch), command=f"product_bench seed {seed}")
    t0 = time.perf_counter()
    run = train(cfg, progress=progress)
    train_s = time.perf_counter() - t0
    model = export_model(run / "last.pt", out / "model", progress=progress)
    r = evaluate(model, data, out / "eval", progress=progress)
    return {"seed": seed, "image_auroc": r["image_auroc"], "train_s": round(train_s, 1),
            "per_class": {k: v["image_auroc"] for k, v in r["per_type"].items()}}


def bench(out: str | Path, spec: ProductSpec = ProductSpec(), seeds: tuple[int, ...] = (0,),
          epochs: int | None = None, steps_per_epoch: int | None = None, threads: int = 2,
          root: str | Path = DEFAULT_ROOT, progress: bool = True) -> dict:
    """Write the product's folder under ``out/data``, run every seed, write ``out/product_bench.json``."""
    if not seeds:
        raise ValueError("product_bench: give at least one training seed")
    out = Path(out)
    defaults = TrainConfig(data="", out="")
    epochs = defaults.epochs if epochs is None else epochs
    steps_per_epoch = defaults.steps_per_epoch if steps_per_epoch is None else steps_per_epoch
    data = out / "data"
    counts = write_product(Path(root), data, spec)
    runs: list[dict] = []
    for s in seeds:  # the summary is rewritten after each seed: a long run that stops keeps what it measured
        runs.append(run_seed(data, out / f"seed{s}", s, epochs, steps_per_epoch, threads, progress))
        aurocs = np.array([r["image_auroc"] for r in runs])
        result = {
            "product": f"Fashion-MNIST, OK class {spec.ok_class}", "spec": asdict(spec), "images": counts,
            "epochs": epochs, "steps_per_epoch": steps_per_epoch,
            "training_defaults": epochs == defaults.epochs and steps_per_epoch == defaults.steps_per_epoch,
            "image_auroc_mean": float(aurocs.mean()), "image_auroc_min": float(aurocs.min()),
            "image_auroc_max": float(aurocs.max()), "runs": runs, "host": platform.node(),
        }
        (out / "product_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict) -> str:
    classes = list(result["runs"][0]["per_class"])
    head = f"{'seed':>4} {'img AUROC':>9} {'train min':>9}  " + " ".join(f"{c[:8]:>8}" for c in classes)
    rows = [result["product"], head, "-" * len(head)]
    for r in result["runs"]:
        rows.append(f"{r['seed']:>4} {r['image_auroc']:>9.3f} {r['train_s'] / 60:>9.1f}  "
                    + " ".join(f"{r['per_class'][c]:>8.3f}" for c in classes))
    rows.append(f"mean {result['image_auroc_mean']:.3f} (min {result['image_auroc_min']:.3f}, "
                f"max {result['image_auroc_max']:.3f}) over {len(result['runs'])} seed(s)"
                + ("" if result["training_defaults"] else
                   f"; NOT the default training: {result['epochs']} x {result['steps_per_epoch']} steps"))
    return "\n".join(rows)
