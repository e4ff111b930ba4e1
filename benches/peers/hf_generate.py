"""The decoding benchmark's peer (`kiln bench suite --peers`): transformers `generate`, greedy,
on the DistilGPT-2 shape with random weights (the weights do not change the work), the same
prompt ids as kiln's benchmark (row r: ((i + r) * 7919) % vocab, PROMPT - r of them, left-padded
with an attention mask as kiln's batch), exactly NEW tokens per row (no early stop at
end-of-text). One untimed call first. Prints one JSON line; tokens_per_s counts every row's.

  python hf_generate.py --prompt=32 --new=64 --cache=1 --batch=1
"""
import argparse
import json
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

p = argparse.ArgumentParser()
p.add_argument("--prompt", type=int, default=32)
p.add_argument("--new", type=int, default=64)
p.add_argument("--cache", type=int, default=1)
p.add_argument("--batch", type=int, default=1)
a = p.parse_args()
assert 1 <= a.batch <= a.prompt

torch.manual_seed(0)
config = GPT2Config(n_layer=6, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
model = GPT2LMHeadModel(config).eval()
rows = [[((i + r) * 7919) % config.vocab_size for i in range(a.prompt - r)] for r in range(a.batch)]
# Left padding: the pad id is masked out (transformers then shifts each row's positions).
ids = torch.tensor([[0] * (a.prompt - len(row)) + row for row in rows])
mask = torch.tensor([[0] * (a.prompt - len(row)) + [1] * len(row) for row in rows])


def generate():
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=a.new,
                             min_new_tokens=a.new, use_cache=bool(a.cache),
                             pad_token_id=config.eos_token_id)
    assert out.shape[1] == a.prompt + a.new, out.shape
    return out


generate()
start = time.perf_counter()
generate()
seconds = time.perf_counter() - start
print(json.dumps({"path": "transformers-generate", "threads": torch.get_num_threads(),
                  "cache": bool(a.cache), "batch": a.batch, "new_tokens": a.new,
                  "seconds": seconds, "tokens_per_s": a.batch * a.new / seconds}))
