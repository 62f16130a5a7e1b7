#!/usr/bin/env bash
# Scores candidate coarse-map networks on the dev machine. Each checkpoint (a run of
# `train --image-scale 0.5 --width 8`, or a <run>.pt that research/gpu_train_sweep.sh brought back
# from runs with 0.5 as the eighth SPEC field, e.g. SPEC="h8s0:0:64:5::8:30:0.5") is exported, and its
# bare map is blended into the shipped folder's own map at the shipped weight, on the whole split
# and on its even / odd halves (python -m research.coarse_scale_map --bare --halves; about a minute each).
# Usage: bash research/coarse_map_eval.sh CKPT...   (results in runs/cme/<name>.txt)
# A candidate that beats the shipped one (the shipped folder gives pixel AUROC / AUPRO 0.953 / 0.867 with evaluate)
# on both halves is then added with
#   export_model --from-model engines/models/magnetic_tile --coarse-map CKPT --out NEW
# and NEW is evaluated with `evaluate --set-thresholds`.
set -eu
W=runs/cme
DATA=../shared/datasets/magnetic_tile
PY=${PY:-.venv/bin/python}
mkdir -p "$W"
for ckpt in "$@"; do
  n=$(basename "$(dirname "$ckpt")")_$(basename "$ckpt" .pt)
  $PY -m tools.export_model --checkpoint "$ckpt" --out "$W/m_$n" > "$W/$n.export.log" 2>&1
  $PY -m research.coarse_scale_map --fine engines/models/magnetic_tile --coarse "$W/m_$n" --bare --halves \
      --data "$DATA" > "$W/$n.txt"
  echo "$n: $(grep '^fine + 0.25 coarse' "$W/$n.txt" | tr -s ' ')"
done
