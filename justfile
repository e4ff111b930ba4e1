# kiln's everyday commands. `just` is optional: each recipe is one cargo command.

# Run every test (the same command CI runs).
test:
    cargo test --workspace

# Run an experiment's sweep (default: the quickstart on the sample tweets).
sweep EXP="experiments/quickstart.yaml":
    cargo run -- sweep {{EXP}}

# Browse the results store in a local web page (the same build as `just sweep`).
ui *ARGS:
    cargo run -- ui {{ARGS}}

# Format the code.
fmt:
    cargo fmt --all

# Lint like CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# kiln's own benchmarks.
bench:
    cargo run --release -- bench

# Every benchmark, recorded with this machine's fingerprint and compared with its history
# (exit 1 on a regression): run it nightly.
nightly:
    cargo run --release -- bench suite

# The nightly suite with each benchmark's peer in the same rounds (PyTorch eager, transformers
# `generate`, the `datasets.map` path, `dvc repro`; pinned in .venv-bench, made here).
bench-peers:
    benches/peers/setup.sh
    cargo run --release -- bench suite --peers
