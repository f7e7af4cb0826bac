//! The `ignite` binary: runs a node or talks to one.
use clap::Parser;

fn main() {
    let cli = node::cli::Cli::parse();
    std::process::exit(cli.run());
}
