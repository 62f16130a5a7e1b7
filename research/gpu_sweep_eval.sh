#!/usr/bin/env bash
# Scores the checkpoints that research/gpu_train_sweep.sh brought back, on the dev machine:
# for each run, its averaged weights ("model") and its last raw weights ("raw_model") are fitted with
# tile memories on train/good (export_model --memory-data) and evaluated on the test split.
# Usage: bash research/gpu_sweep_eval.sh DIR...   (folders holding the <run>.pt files; results in runs/gsw)
# Then research/results/gpu_sweep_metrics.json is written from every runs/gsw/ev_*/metrics.json.
set -eu
W=runs/gsw
DATA=../shared/datasets/magnetic_tile
PY=${PY:-.venv/bin/python}
mkdir -p "$W"
for dir in "$@"; do
  for ckpt in "$dir"/*.pt; do
    run=$(basename "$ckpt" .pt)
    for v in ${VARIANTS:-ema raw}; do
      n=${run}_$v
      [ -f "$W/ev_$n/metrics.json" ] && continue
      $PY - "$ckpt" "$W/$n.pt" "$v" <<'PY'
import sys, torch
src, dst, which = sys.argv[1:]
st = torch.load(src, map_location="cpu", weights_only=True)
keep = {k: v for k, v in st.items() if k not in ("model", "raw_model")}
torch.save({**keep, "model": st["model" if which == "ema" else "raw_model"]}, dst)
PY
      $PY -m tools.export_model --checkpoint "$W/$n.pt" --memory-data "$DATA" --out "$W/m_$n" > "$W/$n.export.log" 2>&1
      $PY -m tools.evaluate --model "$W/m_$n" --data "$DATA" --out "$W/ev_$n" > "$W/$n.eval.log" 2>&1
      echo "$n done"
    done
  done
done
$PY - "$W" <<'PY'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
rows = {}
for m in sorted(w.glob("ev_*/metrics.json")):
    r = json.loads(m.read_text())
    meta = json.loads((w / ("m_" + m.parent.name[3:]) / "model.json").read_text())
    rows[m.parent.name[3:]] = {
        "training_command": meta["training_command"],
        # Which map the row was scored with: 0.0 = 0.02 of the full-scale novelty (before 1a01769),
        # 0.01 = 0.01 of it plus 0.01 of the half-scale novelty (all rows since 2026-11-26 20:26 UTC).
        "coarse_map_share": meta.get("coarse_map_share", 0.0),
        **{k: round(r[k], 4) for k in ("image_auroc", "pixel_auroc", "aupro")},
        "image_auroc_per_type": {t: round(v["image_auroc"], 4) for t, v in r["per_type"].items()},
    }
out = Path("research/results/gpu_sweep_metrics.json")
out.write_text(json.dumps(rows, indent=1) + "\n")
print(f"wrote {out}: {len(rows)} weight sets")
PY
