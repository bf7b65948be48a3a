#!/usr/bin/env bash
# The sentiment example end to end on this machine (README.md beside this file): train the
# student on 160 labelled Yelp sentences, serve it and the untrained base with llama.cpp,
# and measure both against the labels of 100 held-out sentences. Needs the train and llama
# extras (make .venv/.installed-train .venv/.installed-llama). About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
export DISTILLERY_CONFIG="$PWD/distillery.toml"
unset REDIS_URL   # embedded: the run happens in this process
rm -f sentiment.db

distillery finetune submit train.jsonl --backend local --epochs 2
GGUF=$(python -c "from workers.training.base import default_gguf; print(default_gguf())")
distillery student serve 1 --port 8910 > student.log 2>&1 &
STUDENT=$!
python -m llama_cpp.server --model "$GGUF" --model_alias smollm2 --port 8912 \
    --n_threads 2 --n_threads_batch 2 > base.log 2>&1 &
BASE=$!
trap 'kill $STUDENT $BASE' EXIT
for port in 8910 8912; do
    until curl -sf "http://127.0.0.1:$port/v1/models" > /dev/null; do sleep 1; done
done
distillery eval agreement --tier base --reference heldout.jsonl --max-tokens 4
distillery eval agreement --tier student --reference heldout.jsonl --max-tokens 4
