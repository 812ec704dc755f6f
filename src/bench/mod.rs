//! `dhsa bench`: benchmarks run from the command line.

pub mod kernels;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// FA op time per backend: ggml's own FA, dhsa's dense and sparse paths, side by side
    Kernels(Box<kernels::Args>),
}

pub fn main(cmd: Cmd, verbose: bool) -> anyhow::Result<()> {
    match cmd {
        Cmd::Kernels(a) => kernels::main(*a, verbose),
    }
}
