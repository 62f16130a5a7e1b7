#!/usr/bin/env bash
# How the shipped model engines/models/magnetic_tile was made, step by step (docs/model_card.md).
# DATA is an MVTec-style folder; only DATA/train/good trains anything. Steps marked GPU ran on a
# CUDA GPU (a few minutes each on an H100); on 2 CPU cores they take hours (drop --device cuda).
# Training is reproducible per seed on one device; GPU and CPU runs differ in the last digits.
set -euo pipefail
DATA=${DATA:-../shared/datasets/magnetic_tile}
OUT=${OUT:-runs/recipe}
MIX=bezier_blob,bezier_scratch,elastic,gradient,point_cloud,perlin,cutpaste,edge_chip,uneven,uneven,uneven
mkdir -p "$OUT"

# 1. GPU: the width-16 network, 30 epochs of batch 64, uneven finish drawn three times as often.
train --data "$DATA" --out "$OUT/w64s0" --width 16 --epochs 30 --steps-per-epoch 250 --batch-size 64 \
      --ema 0.999 --no-memory --device cuda --workers 5 --threads 1 --seed 0 --generators "$MIX"

# 2. GPU: decoder and heads fine-tuned with grain_crack added, encoder frozen, two seeds.
for seed in 2 3; do
  train --data "$DATA" --out "$OUT/fl$seed" --init "$OUT/w64s0/last.pt" --freeze-encoder \
        --epochs 30 --steps-per-epoch 250 --batch-size 64 --lr 5e-4 --ema 0.999 --seed $seed --no-memory \
        --device cuda --generators "$MIX,grain_crack"
done

# 3. GPU: the coarse-map network (width 8, half scale), with straight-edged uneven bands.
train --data "$DATA" --image-scale 0.5 --width 8 --epochs 30 --steps-per-epoch 250 --batch-size 64 \
      --ema 0.999 --no-memory --device cuda --workers 4 --threads 1 --seed 0 --out "$OUT/coarse" \
      --generators bezier_blob,bezier_scratch,elastic,gradient,point_cloud,perlin,cutpaste,edge_chip,uneven,uneven_step,uneven_step

# 4. OK frames of training parts on the demo line, for the memories.
simulate_line --data "$DATA" --out "$OUT/demo_line_ok_frames" --ok 703 --ng 0 --empty 0 --ok-from train/good --seed 100

# 5. The two fine-tunes averaged weight by weight, exported with the memories and the coarse map.
export_model --checkpoint "$OUT/fl2/last.pt" "$OUT/fl3/last.pt" --memory-data "$DATA" \
      --memory-canonical configs/demo_line.yaml --memory-frames "$OUT/demo_line_ok_frames" \
      --coarse-map "$OUT/coarse/last.pt" --out "$OUT/m_avg"

# 6. CPU (about 10 minutes): a short fine-tune with blobs at the part's border, encoder frozen.
train --data "$DATA" --out "$OUT/ft_border" --init "$OUT/m_avg" --freeze-encoder --batch-size 64 --epochs 2 \
      --lr 2e-4 --ema 0.999 --seed 5 --no-memory --generators "$MIX,grain_crack,border_blob,border_blob,border_blob"

# 7. Export with every memory, the demo line's per-position memory included; set the thresholds.
export_model --checkpoint "$OUT/ft_border/last.pt" --memory-data "$DATA" --memory-canonical configs/demo_line.yaml \
      --memory-frames "$OUT/demo_line_ok_frames" --memory-positions --coarse-map "$OUT/coarse/last.pt" \
      --out "$OUT/magnetic_tile"
evaluate --model "$OUT/magnetic_tile" --data "$DATA" --out "$OUT/eval" --set-thresholds

# 8. The demo line's threshold and golden file for that folder.
make_demo --data "$DATA" --model "$OUT/magnetic_tile"
