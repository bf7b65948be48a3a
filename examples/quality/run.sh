#!/usr/bin/env bash
# Training data worth learning from, end to end on this machine (README.md beside this
# file): a teacher job on the simulator, a judge run, then reduce with every filter on and
# Parquet out. Needs only the base install; about a minute.
set -euo pipefail
cd "$(dirname "$0")"
export DISTILLERY_CONFIG="$PWD/distillery.toml"
unset REDIS_URL DATABASE_URL  # embedded: the work happens in this process
rm -rf quality.db output data
python make_prompts.py
distillery sim --port 8931 --config sim.toml > sim.log 2>&1 &
SIM=$!
trap 'kill $SIM' EXIT
until curl -sf http://127.0.0.1:8931/v1/models > /dev/null; do sleep 0.2; done

distillery submit prompts.jsonl --wait
distillery judge 1 --tier frontier --wait
distillery reduce 1 --min-score 7 --near-duplicates 0.85 --near-duplicate-field prompt \
    --stratify-by topic --format parquet --out data/
distillery results 1 --rejected --reason near_duplicate | python -c '
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    print(row["idx"], "duplicates", row["duplicate_of"], "|", row["prompt"])'
distillery report 1 | tail -1
