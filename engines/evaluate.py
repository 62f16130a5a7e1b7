"""Evaluate a model folder on an MVTec-AD style test split: metrics.json, ROC/PR plots, overlays."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from engines import metrics
from engines.backends import load_backend
from engines.data import mvtec_test_set, read_image, read_mask
from engines.detector import Detector

N_WORST = 8


def _type_metrics(labels, scores, masks, maps, pixel_threshold, fpr_limit) -> dict:
    """Image and pixel metrics; the pixel ones are None without masks (image-level labels only)."""
    pixel = masks is not None
    return {
        "n_images": int(len(labels)),
        "n_defective": int(np.sum(labels)),
        "image_auroc": metrics.roc_auc(labels, scores),
        # the operating point lines are judged at: recall at the best threshold for 5 % false alarms
        f"image_recall_at_fa_{metrics.FALSE_ALARM_BUDGET:g}": metrics.recall_at_false_alarms(labels, scores),
        "pixel_auroc": metrics.pixel_auroc(masks, maps) if pixel else None,
        "aupro": metrics.aupro(masks, maps, fpr_limit) if pixel else None,
        "pixel_f1": metrics.f1_at(masks, maps, pixel_threshold) if pixel else None,
    }


def outline_overlay(image: np.ndarray, gt: np.ndarray | None, anomaly_map: np.ndarray, threshold: float,
                    title: str) -> np.ndarray:
    """One row: input | ground truth outline (green) + predicted outline (red) | heat map."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    outlined = base.copy()
    if gt is not None:
        contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outlined, contours, -1, (0, 200, 0), 1)
    contours, _ = cv2.findContours((anomaly_map >= threshold).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(outlined, contours, -1, (0, 0, 255), 1)
    heat = cv2.applyColorMap((np.clip(anomaly_map, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.addWeighted(base, 0.5, heat, 0.5, 0)
    row = np.hstack([base, outlined, heat])
    cv2.putText(row, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return row


def _plots(out: Path, labels: np.ndarray, scores: np.ndarray, types: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for t in ["all"] + sorted(set(types) - {"good"}):
        sel = np.ones(len(labels), bool) if t == "all" else np.isin(types, ["good", t])
        fpr, tpr, _ = metrics.roc_curve(labels[sel], scores[sel])
        recall, precision = metrics.pr_curve(labels[sel], scores[sel])
        auc = metrics.roc_auc(labels[sel], scores[sel])
        axes[0].plot(fpr, tpr, lw=2 if t == "all" else 1, label=f"{t} (AUROC {auc:.3f})")
        axes[1].plot(recall, precision, lw=2 if t == "all" else 1, label=t)
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.5)
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="image-level ROC")
    axes[1].set(xlabel="recall", ylabel="precision", title="image-level precision-recall", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc_pr.png", dpi=110)
    plt.close(fig)


def evaluate(model: str | Path, data: str | Path, out: str | Path, backend: str = "onnxruntime",
             overlap: float = 0.25, flip_tta: str = "none", fpr_limit: float = 0.3,
             set_thresholds: bool = False, progress: bool = True, limit: int = 0, split: str = "all") -> dict:
    """Metrics of ``model`` on the test images of ``data`` (``split``: all of them, or one side of
    the fixed ``val`` / ``test`` split, ``engines.data.split_of``). ``set_thresholds`` chooses the
    pixel and image thresholds on the ``val`` images only and writes them to the model folder:
    thresholds are a choice, and a choice is never made on ``test``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if set_thresholds and split == "test":
        raise ValueError("--set-thresholds chooses on the val images; evaluate --split val (or all) to set them, "
                         "then --split test to report")
    samples = mvtec_test_set(data, require_masks=False, split=split)
    # With a defective image lacking its mask, the split has image-level labels only: image metrics
    # and the image threshold, no pixel metrics (a mask of zeros would call the whole defect a miss).
    with_masks = all(s.mask_path is not None for s in samples if s.defect_type != "good")
    if not with_masks and progress:
        print(f"evaluate: {data}: some defective images have no ground-truth mask; image-level metrics only",
              flush=True)
    if limit:
        samples = samples[::max(1, len(samples) // limit)][:limit]
    engine = load_backend(backend, model)
    detector = Detector(engine, overlap=overlap, flip_tta=flip_tta)
    meta = engine.meta
    images, masks, maps, scores, types = [], [], [], [], []
    infer_s, n_tiles = 0.0, 0
    for s in tqdm(samples, desc="evaluate", unit="img", disable=not progress):
        img = read_image(s.image_path, meta.in_channels)
        mask = read_mask(s.mask_path, img.shape[:2]) if s.mask_path else np.zeros(img.shape[:2], bool)
        t0 = time.perf_counter()
        pred = detector.predict(img)
        infer_s += time.perf_counter() - t0
        n_coarse = 0 if pred.coarse_scores is None else len(pred.coarse_scores)
        n_tiles += len(pred.tile_scores) * detector.views + n_coarse
        images.append(img)
        masks.append(mask)
        maps.append(pred.anomaly_map)
        scores.append(pred.score)
        types.append(s.defect_type)
    labels = np.array([t != "good" for t in types])
    scores_arr = np.array(scores)

    pixel_t, image_t = meta.pixel_threshold, meta.image_threshold
    if set_thresholds:
        chosen = [i for i, s in enumerate(samples) if s.side == "val"]
        if not chosen or labels[chosen].all() or not labels[chosen].any():
            raise ValueError(f"{data}: the val images hold no OK or no defective image to set thresholds on")
        if with_masks:
            pixel_t, _ = metrics.best_f1_threshold([masks[i] for i in chosen], [maps[i] for i in chosen])
        image_t = metrics.youden_threshold(labels[chosen], scores_arr[chosen])
        meta = replace(meta, pixel_threshold=pixel_t, image_threshold=image_t)
        meta.save(Path(model))

    result = {
        "model": str(model), "data": str(data), "split": split, "backend": backend, "overlap": overlap,
        "flip_tta": flip_tta,
        "pixel_threshold": pixel_t, "image_threshold": image_t, "aupro_fpr_limit": fpr_limit,
        "pixel_labels": with_masks,
        **_type_metrics(labels, scores_arr, masks if with_masks else None, maps, pixel_t, fpr_limit),
        "image_recall_at_threshold": float((scores_arr[labels] >= image_t).mean()) if labels.any() else float("nan"),
        "image_false_alarm_rate_at_threshold": float((scores_arr[~labels] >= image_t).mean()) if (~labels).any() else float("nan"),
        "ms_per_tile": 1000.0 * infer_s / max(1, n_tiles),
        "backend_device": engine.device,
        "per_type": {},
    }

    def subset(sel: list[int]) -> dict:
        return _type_metrics(labels[sel], scores_arr[sel], [masks[i] for i in sel] if with_masks else None,
                             [maps[i] for i in sel], pixel_t, fpr_limit)

    for t in sorted(set(types) - {"good"}):
        result["per_type"][t] = subset([i for i, ty in enumerate(types) if ty in ("good", t)])
    # The same on the even- and odd-numbered images (the split's order): a choice made on the split
    # should gain on both halves, not on one.
    result["halves"] = {name: subset(list(range(start, len(types), 2))) for name, start in (("even", 0), ("odd", 1))}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    _plots(out, labels, scores_arr, types)

    # Worst cases: defective parts scored lowest, good parts scored highest.
    overlay_dir = out / "overlays"
    overlay_dir.mkdir(exist_ok=True)
    for stale in overlay_dir.glob("[0-9][0-9]_*.png"):  # an earlier run's worst cases would mislead
        stale.unlink()
    defective = np.where(labels)[0][np.argsort(scores_arr[labels])][:N_WORST]
    good = np.where(~labels)[0][np.argsort(-scores_arr[~labels])][: N_WORST // 2]
    for rank, i in enumerate(list(defective) + list(good)):
        kind = "missed" if labels[i] else "false_alarm"
        name = samples[i].image_path.stem
        title = f"{types[i]} {name} score {scores_arr[i]:.3f} (thr {image_t:.3f})"
        row = outline_overlay(images[i], masks[i] if labels[i] and with_masks else None, maps[i], pixel_t, title)
        cv2.imwrite(str(overlay_dir / f"{rank:02d}_{kind}_{types[i]}_{name}.png"), row)
    return result


def format_table(result: dict) -> str:
    head = f"{'type':<10} {'n':>4} {'img AUROC':>10} {'px AUROC':>9} {'AUPRO':>7} {'px F1':>7}"
    rows = [head, "-" * len(head)]

    def num(v, width: int) -> str:
        return f"{v:>{width}.3f}" if v is not None else f"{'-':>{width}}"

    def fmt(name: str, r: dict) -> str:
        return (f"{name:<10} {r['n_images']:>4} {num(r['image_auroc'], 10)} {num(r['pixel_auroc'], 9)} "
                f"{num(r['aupro'], 7)} {num(r['pixel_f1'], 7)}")

    for t, r in result["per_type"].items():
        rows.append(fmt(t, r))
    rows.append(fmt("all", result))
    for name, r in result.get("halves", {}).items():
        rows.append(fmt(f"all, {name}", r))
    return "\n".join(rows)
