#!/usr/bin/env bash
# Training benchmark: tokens/s of GPT-2 training steps on the CPU (vocab 8192, 4 layers,
# 256 dims, 4 heads, seq 64, batch 32, AdamW), kiln (burn) against PyTorch eager on the same
# config, same machine, same run.
#   benches/train/run.sh [STEPS]        (default 20 timed steps after 3 warm-up steps;
#   then GPT-2 124M and SmolLM2-135M at seq 128 x batch 4, MODEL_STEPS timed steps, default 3)
# Sets up its own virtual environment in .venv-fixtures (torch + transformers, as the
# numerical fixtures use; PyPI's torch is a large CUDA build that runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-20}"
if [ ! -x .venv-fixtures/bin/python ]; then
  python3 -m venv .venv-fixtures
  .venv-fixtures/bin/pip install -q torch transformers safetensors
fi
cargo build --release -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repeat=3
for i in $(seq $repeat); do
  ./target/release/kiln --store "$work/bench.sqlite" bench train --steps "$steps" 2>&1 | grep -v '^recorded'
  .venv-fixtures/bin/python benches/train/torch_train.py --steps "$steps" | python3 -c "
import json,sys; r=json.loads(sys.stdin.read()); print(f\"pytorch eager ({r['threads']} threads): {r['steps']} steps in {r['seconds']:.2f} s = {r['tokens_per_s']:,.0f} tok/s\")"
done
# GPT-2 124M and SmolLM2-135M's shape at seq 128, batch 4: kiln against PyTorch eager.
model_steps="${MODEL_STEPS:-3}"
for model in gpt2 smollm2-135m; do
  ./target/release/kiln --store "$work/bench.sqlite" bench train --model "$model" --seq 128 --batch 4 --steps "$model_steps" 2>&1 | grep -v '^recorded'
  .venv-fixtures/bin/python benches/train/torch_train.py --model "$model" --seq 128 --batch 4 --steps "$model_steps" --warmup 1 | python3 -c "
import json,sys; r=json.loads(sys.stdin.read()); print(f\"pytorch eager $model ({r['threads']} threads): {r['steps']} steps in {r['seconds']:.2f} s = {r['tokens_per_s']:,.0f} tok/s\")"
done
