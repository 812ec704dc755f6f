//! `dhsa bench`: measurements reported as ratios taken side by side in one process.

pub mod prefill;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Prompt processing at depth (llama-bench style), every mode in one run, interleaved
    Prefill(prefill::Args),
}
