#!/usr/bin/env bash
# The whole GPU check in one call: the CUDA paths tested, then measured (torch CUDA, ONNX Runtime CUDA and
# TensorRT where installed, side by side). For a GPU machine with no network access:
# Needs, carried beside the tree: .whl/ (pyzmq and pymodbus wheels for cp312; the machine's image has
# the rest) and .gpudata/magnetic_tile/ (test/ and ground_truth/ of ../shared/datasets/magnetic_tile).
# Everything it prints and writes lands in $OUT. Steps are independent: one failing does not stop the rest.
# Prepared on the dev machine with (then carried as .whl and .gpudata, both git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl pyzmq==27.3.0 pymodbus==3.16.1
#   mkdir -p .gpudata/magnetic_tile && cp -r ../shared/datasets/magnetic_tile/{test,ground_truth} .gpudata/magnetic_tile/
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

step env
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, onnxruntime, cv2, zmq, pymodbus, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| ort', onnxruntime.__version__, '| cv2', cv2.__version__, '| numpy', numpy.__version__)"
  nproc; } 2>&1 | tee "$OUT/env.txt"

step "benchmark: shipped model, torch CUDA fp16, ONNX Runtime CUDA and TensorRT side by side, where each is installed"
if python3 -c "import tensorrt" 2>/dev/null; then
  for p in fp16 fp32; do timeout 300 python3 -m tools.build_engine --model engines/models/magnetic_tile --precision $p \
    --max-batch 1024 --out /tmp/trt_$p/model.engine 2>&1 | tail -3; done
  timeout 150 python3 -m tools.benchmark --model engines/models/magnetic_tile --backend tensorrt --engine /tmp/trt_fp16/model.engine \
    --batch 1,16,64,256,1024 --cuda-graph --no-peak --seconds 1 --json "$OUT/trt_fp16.json" 2>&1 | tail -8
else echo "TensorRT not installed: its rows are skipped"; fi
timeout 150 python3 -m tools.benchmark --model engines/models/magnetic_tile --backend torch,onnxruntime-cuda --device cuda \
  --batch 1,16,64,256,1024 --cuda-graph --no-peak --seconds 1 --json "$OUT/h100_w16_torch.json" 2>&1 | grep -v "ms/tile mean" | tail -14

step "benchmark: width-32 reference, random weights"
python3 -m tools.export_model --untrained --width 32 --out /tmp/w32 > /dev/null 2>&1
timeout 150 python3 -m tools.benchmark --model /tmp/w32 --backend torch --device cuda \
  --batch 1,16,64,256,1024 --cuda-graph --no-peak --seconds 1 --json "$OUT/h100_w32_torch.json" 2>&1 | grep -v "ms/tile mean" | tail -14

step "tests: the whole suite, on a machine where torch sees CUDA"
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests 2>&1 | tail -25 | tee "$OUT/pytest.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -s tests/test_gpu.py 2>&1 | grep -E "fp16 vs|passed|failed|Error" | tee -a "$OUT/pytest.txt"

step "evaluate: shipped model on the test split, torch CUDA fp16 vs onnxruntime fp32"
for b in torch onnxruntime; do
  timeout 180 python3 -m tools.evaluate --model engines/models/magnetic_tile --data .gpudata/magnetic_tile \
    --out /tmp/ev_$b --backend $b > /tmp/ev_$b.log 2>&1; cp /tmp/ev_$b/metrics.json "$OUT/eval_$b.json"
done
python3 - <<'PY'
import json
a, b = (json.load(open(f"/tmp/ev_{n}/metrics.json")) for n in ("torch", "onnxruntime"))
for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_f1", "ms_per_tile"):
    print(f"{k:<12} torch-cuda-fp16 {a[k]:.4f}  onnxruntime-cpu {b[k]:.4f}")
PY

step "fp16 study: scores, verdicts and pixels vs fp32 on the test split (shipped model; a 6-step model trained here)"
timeout 60 python3 -m tools.train --data tests/data/magnetic_tile_mini --out /tmp/fx --width 8 --epochs 2 \
  --steps-per-epoch 3 --batch-size 4 --device cuda --export /tmp/fx/model > /tmp/fx.log 2>&1 || tail -3 /tmp/fx.log
timeout 240 python3 -m research.fp16_scores --model engines/models/magnetic_tile /tmp/fx/model \
  --data .gpudata/magnetic_tile 2>&1 | tail -8 | tee "$OUT/fp16_study.txt"

step "pipeline: demo sequence with the torch backend on CUDA, against the golden file made with onnxruntime"
sed 's/^  backend: onnxruntime/  backend: torch/' configs/demo_line.yaml > configs/demo_line_cuda.yaml
grep -n "backend:" configs/demo_line_cuda.yaml
timeout 120 python3 -m tools.replay_check configs/demo/sequence --config configs/demo_line_cuda.yaml \
  --golden configs/demo/golden.jsonl 2>&1 | tail -8; echo "replay_check exit ${PIPESTATUS[0]}"
timeout 150 python3 -m tools.benchmark --model engines/models/magnetic_tile --backend torch --batch 32 --no-peak \
  --seconds 1 --pipeline configs/demo/sequence --config configs/demo_line_cuda.yaml \
  --json "$OUT/h100_pipeline_torch.json" 2>&1 | tail -4

step "training on CUDA: steps per second (data synthesis in 8 worker processes)"
timeout 150 python3 -m tools.train --data tests/data/magnetic_tile_mini --out /tmp/tr --width 16 --epochs 1 \
  --steps-per-epoch 200 --workers 8 --device cuda --no-memory 2>&1 | tr '\r' '\n' | grep -v "^\s*$" | tail -3
python3 - <<'PY'
import json
r = [json.loads(line) for line in open("/tmp/tr/train_log.jsonl")]
a, b = r[0], r[-1]
rate = (b["step"] - a["step"]) / (b["elapsed_s"] - a["elapsed_s"])
print(f"steps {a['step']}..{b['step']}: {rate:.1f} steps/s after warm-up; 7500 steps (the shipped recipe) would take {7500 / rate / 60:.1f} min")
PY
cp /tmp/tr/train_log.jsonl "$OUT/train_cuda_log.jsonl" 2>/dev/null
step done
