//! `dhsa bench`: measurements reported as ratios taken side by side in one process.

pub mod kernels;
pub mod prefill;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// FA op time per backend: ggml's own FA, dhsa's dense and sparse paths, side by side
    Kernels(Box<kernels::Args>),
    /// Prompt processing at depth (llama-bench style), every mode in one run, interleaved
    Prefill(Box<prefill::Args>),
}

pub fn main(cmd: Cmd, verbose: bool) -> anyhow::Result<()> {
    match cmd {
        Cmd::Kernels(a) => kernels::main(*a, verbose),
        Cmd::Prefill(a) => prefill::main(*a, verbose),
    }
}
