//! The `kiln` command. Everything lives in the `kiln_cli` library.

// Training allocates and frees tensors of many megabytes every step; glibc's malloc hands
// those to mmap/munmap each time (page faults made a third of CPU training time), while
// mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (position 15 of `mi_option_e` in the bundled v3
/// header): how long freed memory waits before going back to the OS. Training frees and
/// reallocates the same large tensors every step, so it should never go back (-1): that made
/// CPU training about 15% faster than the default 10 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's `mi_option_allow_large_os_pages` (position 6 of the v3 `mi_option_e`): its
/// arenas ask for 2 MiB pages (`madvise`, where transparent huge pages are `madvise`, as on
/// Debian). Training and decoding stream hundreds of MB of weights and activations: fewer TLB
/// misses and page faults made GPT-2 124M training about 4% faster (149.5 / 149.6 -> 155.3 /
/// 157.3 tok/s interleaved, peak RSS unchanged).
const MI_OPTION_ALLOW_LARGE_OS_PAGES: libmimalloc_sys::mi_option_t = 6;

fn main() -> std::process::ExitCode {
    // SAFETY: sets process-wide allocator options; no allocation state is touched.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_LARGE_OS_PAGES, 1);
    }
    kiln_cli::main()
}
