#!/usr/bin/env bash
# Kills the sinks stage (SIGKILL; STAGE=stitch for that one) once K records are written during an
# as-fast-as-possible replay, then checks that every frame still has exactly one record (README,
# "When a stage crashes").
# Usage: bash docs/bench/kill_sinks.sh SEQ K   e.g. SEQ from
#   simulate_line --data ../shared/datasets/magnetic_tile --out runs/line_seq7 --ok 60 --ng 60 --empty 6 --seed 7
set -u
SEQ=$1; K=${2:-30}
R=runs/kill_sinks; rm -rf "$R"; mkdir -p "$R"
.venv/bin/run_pipeline --config configs/demo_line.yaml --source "replay:$SEQ" --results "$R/r.jsonl" --run-dir "$R/run" \
    --quiet 2> "$R/err.txt" &
P=$!
for _ in $(seq 1 600); do
  n=$([ -f "$R/r.jsonl" ] && wc -l < "$R/r.jsonl" || echo 0)
  [ "$n" -ge "$K" ] && break
  sleep 0.05
done
pkill -9 -f "pipeline.stages.${STAGE:-sinks} .*$R/run"
wait $P; echo "run_pipeline exit $?"
python3 - "$R/r.jsonl" "$(ls "$SEQ" | grep -c -v '\.jsonl$')" <<'PY'
import json, sys
ids = [json.loads(line)["frame_id"] for line in open(sys.argv[1])]
print(f"{len(ids)} records for {sys.argv[2]} frames; one per frame, in order: {ids == list(range(int(sys.argv[2])))}")
PY
grep -E "restarting|again|resumed|no record" "$R/err.txt"
grep -c "stitch stage crashed" "$R/r.jsonl" | sed 's/^/records lost with the stitch stage: /'
