"""The data benchmark's peer (`kiln bench suite --peers`): the research code's data path, timed: pandas read_csv + datasets.map with the fast GPT-2
tokenizer built from the same vocab.json/merges.txt, the splits saved as Arrow files
(datasets' save_to_disk). Prints one JSON line with two timings:
  seconds       tokenizer load + read + clean + tokenize + split + save: the work kiln's
                stage does (kiln additionally hashes the source and records into its store)
  seconds_core  read + clean + tokenize + split only (no tokenizer load, nothing written)
"""
import json
import sys
import tempfile
import time

import pandas as pd
from datasets import Dataset, disable_caching, disable_progress_bars
from transformers import GPT2TokenizerFast

csv_path, tokenizer_dir = sys.argv[1], sys.argv[2]
disable_caching()
disable_progress_bars()

start = time.perf_counter()
# transformers 5 builds an EMPTY tokenizer from GPT2TokenizerFast(vocab_file=…, merges_file=…);
# from_pretrained(dir) is the way that works.
tok = GPT2TokenizerFast.from_pretrained(tokenizer_dir)
assert len(tok) == 50257, f"tokenizer has {len(tok)} entries"

core_start = time.perf_counter()
df = pd.read_csv(csv_path, encoding="latin-1", header=None,
                 names=["polarity", "id", "date", "query", "user", "text"])
df = df[df.polarity != 2]
df["label"] = (df.polarity == 4).astype(int)
ds = Dataset.from_pandas(df[["text", "label"]], preserve_index=False)
ds = ds.map(lambda b: tok(b["text"]), batched=True)
ds = ds.train_test_split(test_size=0.1, seed=33)
core = time.perf_counter() - core_start
with tempfile.TemporaryDirectory() as out:
    ds.save_to_disk(out)
elapsed = time.perf_counter() - start
rows = len(ds["train"]) + len(ds["test"])
print(json.dumps({"path": "python", "rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed,
                  "seconds_core": core, "rows_per_s_core": rows / core}))
