//! The `ignite` binary: runs a node or talks to one.
use clap::Parser;

/// mimalloc instead of the system allocator: a node allocates and frees small buffers on
/// every message and write from many threads, where glibc's malloc spends a quarter of the
/// CPU under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = node::cli::Cli::parse();
    std::process::exit(cli.run());
}
