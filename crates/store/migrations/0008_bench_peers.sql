-- The peer a figure was measured against in the same suite run (`kiln bench suite --peers`:
-- PyTorch eager, transformers `generate`, the `datasets.map` path, `dvc repro`), its median
-- and spread, and the ratio: above 1 when kiln is better (faster, or less memory).
ALTER TABLE bench_results ADD COLUMN peer TEXT;
ALTER TABLE bench_results ADD COLUMN peer_value REAL;
ALTER TABLE bench_results ADD COLUMN peer_spread REAL;
ALTER TABLE bench_results ADD COLUMN ratio REAL;
