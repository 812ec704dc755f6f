//! `dhsa`: run GGUF models with Dynamic Hierarchical Sparse Attention, and measure it.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use ggml_dhsa as dhsa;

#[derive(Parser)]
#[command(
    name = "dhsa",
    about = "Dynamic Hierarchical Sparse Attention for llama.cpp prefill",
    disable_version_flag = true
)]
struct Cli {
    /// print dhsa, ggml and llama.cpp versions
    #[arg(long = "version", short = 'V')]
    version: bool,
    /// show llama.cpp's log
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a GGUF model, prefill a prompt, generate greedily, print timings
    Run(Box<dhsa::run::Args>),
    /// List the ggml devices (name, type, memory)
    Devices,
    /// Fetch and list the models dhsa knows by name
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Long passkey prompt on SmolLM2, dense and DHSA side by side: both answers, prefill times, speedup
    Demo(Box<dhsa::demo::Args>),
    /// Benchmarks
    #[command(subcommand)]
    Bench(dhsa::bench::Cmd),
    /// Accuracy of the sparse modes: passkey grid, perplexity / KL divergence, attention recall
    #[command(subcommand)]
    Eval(dhsa::eval::Cmd),
    /// Look inside: kept keys over the dense attention map; capture real attention ops
    #[command(subcommand)]
    Inspect(dhsa::inspect::Cmd),
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Download a named model into the cache (verified by sha256) and print its path
    Fetch { name: String },
    /// Show the known models and whether each is cached
    List,
    /// Write a random-weight GGUF of a real model shape (for speed measurements only)
    Synth(dhsa::synth::Args),
}

/// llama.cpp spells some flags with one dash and several letters; clap wants them long.
fn llama_style_args() -> Vec<String> {
    std::env::args()
        .map(|a| {
            match a.as_str() {
                "-ub" => "--ubatch-size",
                "-ngl" => "--n-gpu-layers",
                "-fa" => "--flash-attn",
                "-ts" => "--tensor-split",
                "-dev" => "--device",
                _ => return a,
            }
            .to_string()
        })
        .collect()
}

fn main() {
    let cli = Cli::parse_from(llama_style_args());
    let _ = ctrlc::set_handler(|| {
        if dhsa::llama::INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130); // a second Ctrl-C: stop now
        }
        eprintln!("\ninterrupted: stopping after the current step (Ctrl-C again to quit at once)");
    });
    if let Err(e) = real_main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    if cli.version {
        dhsa::llama::init(cli.verbose);
        let (g, commit) = dhsa::ggml::ggml_version();
        println!("dhsa {}", env!("CARGO_PKG_VERSION"));
        println!("ggml {g} (commit {commit})");
        println!("llama.cpp {} (from {})", dhsa::ggml::llama_version(), env!("DHSA_UPSTREAM"));
        println!("cpu kernels: {}", dhsa::kernels::simd_name());
        return Ok(());
    }
    let Some(cmd) = cli.cmd else {
        bail!("no command given; try `dhsa --help`");
    };
    match cmd {
        Cmd::Models(ModelsCmd::Fetch { name }) => {
            let spec = dhsa::models::spec(&name)?;
            let path = dhsa::models::Store::default().fetch(spec, &mut |l| eprintln!("{l}"))?;
            println!("{}", path.display());
        }
        Cmd::Models(ModelsCmd::List) => {
            let store = dhsa::models::Store::default();
            println!("{:<10} {:<10} model / path", "name", "status");
            for m in dhsa::models::MODELS {
                let (st, what) = match store.status(m)? {
                    dhsa::models::Cached::Ok(p) => ("cached", p.display().to_string()),
                    dhsa::models::Cached::Corrupt(p) => ("corrupt", p.display().to_string()),
                    dhsa::models::Cached::Missing => ("missing", m.about.to_string()),
                };
                println!("{:<10} {:<10} {}", m.name, st, what);
            }
        }
        Cmd::Devices => {
            dhsa::session::start(&dhsa::config::Config::from_env()?, cli.verbose)?;
            println!("Available devices:");
            for d in dhsa::ggml::devices() {
                println!(
                    "  {}: {} ({}, {} MiB, {} MiB free)",
                    d.name,
                    d.description,
                    d.kind,
                    d.total_bytes / (1 << 20),
                    d.free_bytes / (1 << 20)
                );
            }
        }
        Cmd::Run(a) => dhsa::run::main(*a, cli.verbose)?,
        Cmd::Bench(c) => dhsa::bench::main(c, cli.verbose)?,
        Cmd::Models(ModelsCmd::Synth(a)) => dhsa::synth::main(a)?,
        Cmd::Demo(a) => dhsa::demo::main(*a, cli.verbose)?,
        Cmd::Eval(c) => dhsa::eval::main(c, cli.verbose)?,
        Cmd::Inspect(c) => dhsa::inspect::main(c, cli.verbose)?,
    }
    Ok(())
}
