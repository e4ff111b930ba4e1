"""PyTorch eager's side of the training benchmarks (`kiln bench suite --peers`): transformers
training steps on the CPU with AdamW, random token batches, dropout off. Prints one JSON line
with tokens/s (at the median step) and the process's peak resident memory (MiB).

  python torch_train.py --vocab 8192 --layers 4 --dims 256 --heads 4 --seq 64 --batch 32
  python torch_train.py --model gpt2 --seq 128 --batch 4          # GPT-2 124M
  python torch_train.py --model smollm2-135m --seq 128 --batch 4  # SmolLM2-135M's shape
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--vocab", type=int, default=8192)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--dims", type=int, default=256)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--seq", type=int, default=64)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--model", default="small", choices=["small", "gpt2", "smollm2-135m"])
a = p.parse_args()

torch.manual_seed(0)
if a.model == "gpt2":
    config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).train()
    a.vocab = config.vocab_size
elif a.model == "smollm2-135m":
    # As kiln_model::named::config("smollm2-135m").
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).train()
    a.vocab = config.vocab_size
else:
    config = GPT2Config(vocab_size=a.vocab, n_positions=a.seq, n_embd=a.dims, n_layer=a.layers,
                        n_head=a.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-8, weight_decay=0.0)
ids = torch.randint(0, a.vocab, (a.batch, a.seq))


def step():
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


for _ in range(a.warmup):
    step()
times = []
for _ in range(a.steps):
    start = time.perf_counter()
    step()  # .item() waits for the step's work
    times.append(time.perf_counter() - start)
seconds = sum(times)
# Tokens/s at the median step's time, as kiln's side (kiln_train::bench::run_model).
median = statistics.median(times)
# ru_maxrss is in KiB on Linux.
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"path": "pytorch-eager", "threads": torch.get_num_threads(), "steps": a.steps,
                  "seconds": seconds, "tokens_per_s": a.batch * a.seq / median, "peak_rss_mib": peak_mib}))
