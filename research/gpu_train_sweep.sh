#!/usr/bin/env bash
# One call on a GPU machine: several width-16 trainings at once (four by default),
# 30 epochs x 250 steps each, each keeping an exponential moving average of its weights (--ema 0.999),
# so one run yields both the raw and the averaged weights of the same trajectory:
#   sN    batch 16 (the default batch), seed N
#   b32sN batch 32 (twice the synthetic samples), seed N;  b64sN batch 64 (the shipped model: b64s0);  b128sN batch 128
#   u64sN batch 64 with the uneven-finish generator added to the default eight (a fifth SPEC field)
# The GPU image has torch, numpy, cv2, tqdm; the data comes beside the tree as .gpudata (git-ignored):
#   mkdir -p .gpudata/magnetic_tile/train && cp -r ../shared/datasets/magnetic_tile/train/good .gpudata/magnetic_tile/train/
# Memories are not fitted there: each run comes back as one slim checkpoint ($OUT/<run>.pt: "model" = the
# average, "raw_model" = the last weights), and export_model --memory-data fits them on the dev machine.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_train}
RUNS=/tmp/runs
DATA=.gpudata/magnetic_tile
EPOCHS=${EPOCHS:-30} STEPS=${STEPS:-250} DEVICE=${DEVICE:-cuda}  # small values and cpu: a dry run
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=$PWD
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; nproc; } 2>&1 | tee "$OUT/env.txt"

launch() {  # name, workers, width, epochs, extra train args
  local name=$1 workers=$2 width=$3 epochs=$4; shift 4
  timeout "${LIMIT:-460}" python3 -m tools.train --data "$DATA" --out "$RUNS/$name" --width "$width" --epochs "$epochs" \
    --steps-per-epoch "$STEPS" --ema 0.999 --no-memory --device "$DEVICE" --threads 1 --workers "$workers" "$@" \
    > "$RUNS/$name.log" 2>&1 &
}
# Runs as name:seed:batch:workers[:generators[:width[:epochs[:scale[:extra]]]]] (extra: more train arguments, comma-separated,
# each as --name=value, e.g. --init=.gpudata/m_gpu,--freeze-encoder,--lr=5e-4 with the starting weights carried beside the
# data: a model folder's model.json and its model.pt without the memories; generators as for train --generators, empty for
# train's default; width 16 and $EPOCHS unless given; scale: train --image-scale, e.g. 0.5 for the map at
# half scale: SPEC="h64s0:0:64:5:::30:0.5 h64s1:1:64:5:::30:0.5"). Examples:
#   SPEC="b128s0:0:128:9 b64s1:1:64:6" LIMIT=480   (batch 128 and 64)
#   SPEC="x64s0:0:64:5::32 x64s1:1:64:5::32" LIMIT=440 GPU_TESTS=0   (width 32; two such runs shared an H100 at 18 steps/s each)
#   SPEC="cA0:0:64:4:$CSTEP:8:30:0.5" LIMIT=430   (the shipped coarse-map network's recipe; CSTEP=$EIGHT,uneven,uneven_step,uneven_step
#   with EIGHT the first eight generators)
# A run cut by LIMIT keeps its weight average.
NINE=bezier_blob,bezier_scratch,elastic,gradient,point_cloud,perlin,cutpaste,edge_chip,uneven
SEEDS=${SEEDS:-0 1}
SPEC=${SPEC:-$(for s in $SEEDS; do echo "s$s:$s:16:3 b32s$s:$s:32:5"; done)}
NAMES=""
for run in $SPEC; do
  IFS=: read -r name seed batch workers generators width epochs scale extra <<< "$run"
  # shellcheck disable=SC2046  # extra splits into its arguments on purpose
  launch "$name" "$workers" "${width:-16}" "${epochs:-$EPOCHS}" --seed "$seed" --batch-size "$batch" \
    ${generators:+--generators "$generators"} ${scale:+--image-scale "$scale"} $(tr , ' ' <<< "$extra")
  NAMES="$NAMES $name"
done

# The GPU tests on the final code (the fp16 memory fix of c0deebb was checked on the CPU only), at low priority.
[ "${GPU_TESTS:-1}" = 1 ] && (sleep 15; nice -n 10 timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py \
  > "$RUNS/test_gpu.txt" 2>&1) &

while pgrep -f "tools.train" > /dev/null; do
  sleep 30
  line="$(date -u +%H:%M:%S)"
  for r in $NAMES; do
    line="$line  $r $(tail -n 1 "$RUNS/$r/train_log.jsonl" 2>/dev/null | python3 -c 'import json,sys; r=json.loads(sys.stdin.read() or "{}"); print(r.get("step","-"), r.get("elapsed_s","-"), sep="@")' 2>/dev/null)"
  done
  echo "$line"
done
wait

# BENCH=1: the shipped folder (coarse-map network and memories included) timed with the torch CUDA backend, fp16
[ "${BENCH:-0}" = 1 ] && timeout 120 python3 -m tools.benchmark --model engines/models/magnetic_tile --backend torch \
  --device "$DEVICE" --batch 16,64,256 --cuda-graph --no-peak --seconds 1 --json "$OUT/shipped_torch.json" 2>&1 | tail -n 6

python3 - "$RUNS" "$OUT" $NAMES <<'PY'
import sys, torch
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
for run in sys.argv[3:]:
    p = runs / run / "last.pt"
    if not p.is_file():
        print(run, "no checkpoint"); continue
    st = torch.load(p, map_location="cpu", weights_only=True)
    keep = {k: st[k] for k in ("model", "raw_model", "step", "config", "training_data_hash", "training_files") if k in st}
    if "raw_model" not in st and "ema" in st:  # cut at LIMIT: the checkpoint's "model" is the raw weights, the average is "ema"
        keep.update(model=st["ema"], raw_model=st["model"], cut=True)
    nbytes = sum(t.numel() * t.element_size() for t in keep["model"].values())
    if nbytes > 7 << 20:  # a file comes back only under 16 MiB: a width-32 run keeps its average alone, in fp16
        keep.pop("raw_model", None)
        keep["model"] = {k: t.half() if t.is_floating_point() else t for k, t in keep["model"].items()}
        keep["model_fp16"] = True
    torch.save(keep, out / f"{run}.pt")
    print(run, "step", st["step"], "raw_model" in st, "kept in fp16" if keep.get("model_fp16") else "")
PY
tr '\r' '\n' < "$RUNS/$(echo $NAMES | cut -d' ' -f1).log" | grep -E "step/s" | tail -n 1
grep -H -E "checkpoint:|rror" "$RUNS"/*.log
cat "$RUNS/test_gpu.txt"
(cd "$RUNS" && tar -czf "$OUT/logs.tgz" */train_log.jsonl */train_config.json test_gpu.txt 2>/dev/null)
ls -la "$OUT"
