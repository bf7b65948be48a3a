#!/usr/bin/env bash
# The sentiment example end to end on this machine (README.md beside this file): a teacher job
# (the simulator answering from labelled.jsonl) over 160 Yelp sentences, reduced to a training
# file; a LoRA student trained on it; the student and the untrained base served by llama.cpp
# and measured against the labels of 100 held-out sentences. Needs the train and llama extras
# (make .venv/.installed-train .venv/.installed-llama). About 10 minutes on 2 cores.
# The working files go to $WORK (default: a new temporary directory); MAX_STEPS=N stops the
# training after N steps (a quick check of the whole chain; the measurements need all 40).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK" && cd "$WORK"
cp "$HERE/sentiment.toml" distillery.toml
export DISTILLERY_CONFIG="$WORK/distillery.toml"
unset REDIS_URL   # embedded: every step runs in this process
echo "working in $WORK"

wait_for() { until curl -sf "http://127.0.0.1:$1/v1/models" > /dev/null; do sleep 1; done; }
PIDS=()
trap 'kill "${PIDS[@]}" 2> /dev/null || true' EXIT

# 1. The teacher answers; the reducer writes output/job-1/train.jsonl.
distillery sim --config "$HERE/teacher-sim.toml" --port 8917 > teacher.log 2>&1 &
PIDS+=($!)
wait_for 8917
distillery submit "$HERE/prompts.jsonl" --mode teacher --wait

# 2. Train the student on it, and add it as a tier (written into distillery.toml here).
distillery finetune submit output/job-1/train.jsonl --backend local --epochs 2 \
    --max-steps "${MAX_STEPS:-0}" --wait
distillery finetune status 1 --add-tier student

# 3. Serve the student and the untrained base; measure both on the held-out sentences.
distillery student serve 1 --port 8910 > student.log 2>&1 &
PIDS+=($!)
GGUF=$(python -c "from workers.training.base import default_gguf; print(default_gguf())")
python -m llama_cpp.server --model "$GGUF" --model_alias smollm2 --port 8912 \
    --n_threads 2 --n_threads_batch 2 > base.log 2>&1 &
PIDS+=($!)
wait_for 8910
wait_for 8912
distillery eval agreement --tier base --reference "$HERE/heldout.jsonl" --max-tokens 4
distillery eval agreement --tier student --reference "$HERE/heldout.jsonl" --max-tokens 4
