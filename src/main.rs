//! `dhsa`: run GGUF models with Dynamic Hierarchical Sparse Attention, and measure it.

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use ggml_dhsa as dhsa;
use std::io::IsTerminal;
use std::path::PathBuf;

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
    Run(RunArgs),
    /// List the ggml devices (name, type, memory)
    Devices,
    /// Fetch and list the models dhsa knows by name
    #[command(subcommand)]
    Models(ModelsCmd),
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Download a named model into the cache (verified by sha256) and print its path
    Fetch { name: String },
    /// Show the known models and whether each is cached
    List,
}

#[derive(Args)]
struct RunArgs {
    /// model: a GGUF path or a known name (smollm2, gemma3)
    #[arg(short = 'm', long = "model")]
    model: String,
    /// prompt text
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    prompt: Option<String>,
    /// read the prompt from a file
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// tokens to generate
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    n_predict: usize,
    /// context size (0: prompt + n_predict, at most the model's)
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx_size: u32,
    /// threads
    #[arg(short = 't', long = "threads")]
    threads: Option<i32>,
    /// physical batch size (-ub)
    #[arg(long = "ubatch-size", default_value_t = 512)]
    ubatch: u32,
    /// layers to offload to the GPU (-ngl)
    #[arg(long = "n-gpu-layers", default_value_t = 0)]
    ngl: i32,
    /// wrap the prompt in the model's chat template
    #[arg(long)]
    chat: bool,
    /// print the result as JSON
    #[arg(long)]
    json: bool,
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
        println!(
            "llama.cpp {} (from {})",
            dhsa::ggml::llama_version(),
            env!("DHSA_UPSTREAM")
        );
        println!("cpu kernels: {}", env!("DHSA_CPU_SIMD_BUILT"));
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
            println!("{:<10} {:<10} {}", "name", "status", "model / path");
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
            dhsa::llama::init(cli.verbose);
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
        Cmd::Run(a) => run(a, cli.verbose)?,
    }
    Ok(())
}

fn run(a: RunArgs, verbose: bool) -> Result<()> {
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read prompt file {}", f.display()))?,
        (None, None) => bail!("give a prompt with -p TEXT or -f FILE"),
    };
    let path = dhsa::models::resolve(&a.model, &mut |l| eprintln!("{l}"))?;
    dhsa::llama::init(verbose);
    let model = dhsa::llama::Model::load(
        &path,
        &dhsa::llama::ModelOptions {
            n_gpu_layers: a.ngl,
            ..Default::default()
        },
    )?;
    let prompt = if a.chat {
        model.chat_prompt(&prompt)?
    } else {
        prompt
    };
    let tokens = model.vocab().tokenize(&prompt, true)?;
    let train = model.n_ctx_train();
    let n_ctx = if a.ctx_size == 0 {
        ((tokens.len() + a.n_predict) as u32).min(train).max(64)
    } else {
        a.ctx_size
    };
    if n_ctx > train {
        bail!("context {n_ctx} is larger than the model allows ({train})");
    }
    if tokens.len() as u32 >= n_ctx {
        bail!(
            "the prompt has {} tokens, which does not fit the context of {n_ctx}",
            tokens.len()
        );
    }
    let opts = dhsa::llama::ContextOptions {
        n_ctx,
        n_ubatch: a.ubatch,
        n_threads: a.threads.unwrap_or_else(dhsa::llama::default_threads),
        ..Default::default()
    };
    let mut ctx = dhsa::llama::Context::new(&model, &opts)?;
    let prefill_s = dhsa::runner::prefill(&mut ctx, &tokens, 0, &mut |_, _| {})?;
    let mut stdout = std::io::stdout();
    let mut stream = dhsa::runner::Utf8Stream::default();
    let tty = stdout.is_terminal();
    let (generated, gen_s) =
        dhsa::runner::generate(&mut ctx, tokens.len() as i32, a.n_predict, &mut |b| {
            if !a.json {
                stream.push(b, &mut stdout);
            }
        })?;
    let t = dhsa::runner::Timings {
        prompt_tokens: tokens.len(),
        prefill_s,
        prefill_tok_s: tokens.len() as f64 / prefill_s.max(1e-9),
        generated_tokens: generated.len(),
        generate_s: gen_s,
        generate_tok_s: generated.len() as f64 / gen_s.max(1e-9),
    };
    if a.json {
        let text = dhsa::runner::detokenize(&ctx, &generated);
        println!(
            "{}",
            serde_json::json!({ "model": path, "text": text, "timings": t })
        );
    } else {
        println!();
        let _ = tty;
        eprintln!(
            "prompt {} tokens | prefill {:.2} s ({:.1} t/s) | generated {} tokens ({:.1} t/s)",
            t.prompt_tokens, t.prefill_s, t.prefill_tok_s, t.generated_tokens, t.generate_tok_s
        );
    }
    Ok(())
}
