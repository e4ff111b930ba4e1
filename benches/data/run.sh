#!/usr/bin/env bash
# Data benchmark: rows/s turning sentiment140's training sample into tokenized shards, kiln
# against the research code's Python path, same machine, same run.
#   benches/data/run.sh [DATA_DIR]     (default: ../shared/data, or $KILN_SHARED_DATA)
# Sets up its own virtual environment in .venv-bench (pandas, datasets, transformers; no torch).
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${1:-${KILN_SHARED_DATA:-../shared/data}}"
csv="$data/sentiment140/training.sample.csv"
tok="$data/gpt2-tokenizer"
[ -f "$csv" ] || { echo "no $csv: give the shared data directory" >&2; exit 2; }

if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q pandas datasets transformers
fi
cargo build --release -q

repeat=5
echo "kiln (release build, whole process: read, clean, tokenize, split, write zstd Arrow shards):"
work=$(mktemp -d)
for i in $(seq $repeat); do
  start=$(date +%s.%N)
  ./target/release/kiln --quiet --store "$work/s.sqlite" --results "$work/results" run benches/data/sentiment140.yaml \
    --set source="$(realpath "$csv")" --set tokenizer="$(realpath "$tok")" --force tweets 2>/dev/null
  end=$(date +%s.%N)
  rows=$(./target/release/kiln --store "$work/s.sqlite" query --format csv \
    "SELECT sum(value) FROM last_metrics WHERE run_id = (SELECT max(id) FROM runs) AND metric LIKE '%_rows'" | tail -1)
  python3 -c "s=$end-$start; print(f'  run $i: {int(float($rows))} rows in {s:.3f} s = {float($rows)/s:,.0f} rows/s')"
done
echo "python (tokenizer load, pandas read_csv, datasets.map with the fast GPT-2 tokenizer, save_to_disk;"
echo "        in brackets: read + tokenize + split alone, without the tokenizer load and the writing):"
for i in $(seq $repeat); do
  .venv-bench/bin/python benches/data/python_path.py "$csv" "$tok" 2>/dev/null | python3 -c "
import json,sys; r=json.loads(sys.stdin.read()); print(f\"  run $i: {r['rows']} rows in {r['seconds']:.3f} s = {r['rows_per_s']:,.0f} rows/s  [{r['seconds_core']:.3f} s = {r['rows_per_s_core']:,.0f} rows/s]\")"
done
rm -rf "$work"
