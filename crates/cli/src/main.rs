//! The `kiln` command. Everything lives in the `kiln_cli` library.

// Training allocates and frees tensors of many megabytes every step; glibc's malloc hands
// those to mmap/munmap each time (page faults made a third of CPU training time), while
// mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kiln_cli::main()
}
