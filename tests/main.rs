//! kiln's cross-crate integration tests, compiled into one binary (see crates/cli/Cargo.toml).

mod support;

mod archs;
mod bench;
mod cli;
mod data;
mod eval;
mod executor;
mod gc;
mod golden;
mod instruct;
mod locks;
mod model;
mod robust;
mod slurm;
mod store;
mod sweep;
mod tokenizers;
mod train;
mod trust;
mod ui;
mod validate;
mod wgpu;
