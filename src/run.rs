//! `dhsa run`: load a model, prefill a prompt (progress per ubatch), generate greedily, print the
//! text and a timing table (or JSON).

use crate::session::DhsaFlags;
use anyhow::{Context as _, Result, bail};
use clap::Args as ClapArgs;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(ClapArgs)]
pub struct Args {
    /// model: a GGUF path or a known name (smollm2, gemma3)
    #[arg(short = 'm', long = "model")]
    pub model: String,
    /// prompt text
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    pub prompt: Option<String>,
    /// read the prompt from a file
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// tokens to generate
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    pub n_predict: usize,
    /// context size (0: prompt + n_predict, at most the model's)
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx_size: u32,
    /// threads
    #[arg(short = 't', long = "threads")]
    pub threads: Option<i32>,
    /// physical batch size (-ub)
    #[arg(long = "ubatch-size", default_value_t = 512)]
    pub ubatch: u32,
    /// layers to offload to the GPU (-ngl)
    #[arg(long = "n-gpu-layers", default_value_t = 0)]
    pub ngl: i32,
    /// wrap the prompt in the model's chat template
    #[arg(long)]
    pub chat: bool,
    /// print the result as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dhsa: DhsaFlags,
}

pub fn main(a: Args, verbose: bool) -> Result<()> {
    let cfg = a.dhsa.config()?;
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read prompt file {}", f.display()))?
        }
        (None, None) => bail!("give a prompt with -p TEXT or -f FILE"),
    };
    crate::session::start(&cfg, verbose)?;
    let (path, model) = crate::session::load_model(&a.model, &crate::session::model_options(a.ngl))?;
    let prompt = if a.chat { model.chat_prompt(&prompt)? } else { prompt };
    let tokens = model.vocab().tokenize(&prompt, true)?;
    let train = model.n_ctx_train();
    let n_ctx = if a.ctx_size == 0 { ((tokens.len() + a.n_predict) as u32).min(train).max(64) } else { a.ctx_size };
    if n_ctx > train {
        bail!("context {n_ctx} is larger than the model allows ({train})");
    }
    if tokens.len() as u32 >= n_ctx {
        bail!("the prompt has {} tokens, which does not fit the context of {n_ctx}", tokens.len());
    }
    let opts = crate::llama::ContextOptions {
        n_ctx,
        n_ubatch: a.ubatch,
        n_threads: a.threads.unwrap_or_else(crate::llama::default_threads),
        ..Default::default()
    };
    let mut stdout = std::io::stdout();
    let show = stdout.is_terminal() && !a.json;
    let bar = crate::runner::progress_bar(tokens.len(), show);
    crate::stats::reset_total();
    let (generated, t) = {
        let mut ctx = crate::llama::Context::new(&model, &opts)?;
        let tail = crate::runner::dense_tail(&cfg);
        let prefill_s =
            crate::runner::prefill(&mut ctx, &tokens, 0, tail, &mut |done, _| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        let mut stream = crate::runner::Utf8Stream::default();
        let (generated, gen_s) = crate::runner::generate(&mut ctx, tokens.len() as i32, a.n_predict, &mut |b| {
            if !a.json {
                stream.push(b, &mut stdout);
            }
        })?;
        let text = crate::runner::detokenize(&ctx, &generated);
        (text, crate::runner::Timings::new(tokens.len(), prefill_s, generated.len(), gen_s))
    }; // the context (and its DHSA backend) ends here, so the stats are complete
    let s = crate::stats::total();
    if a.json {
        let out = serde_json::json!({
            "model": path, "mode": cfg.mode, "text": generated, "timings": t,
            "kept_fraction": s.kept(), "stats": s, "config": cfg,
        });
        println!("{out}");
    } else {
        println!();
        eprintln!("{}", t.table(cfg.mode.name(), &s));
    }
    Ok(())
}
