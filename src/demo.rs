//! `dhsa demo`: the first thing to run. A long prompt (several thousand tokens of Python's own
//! documentation with a pass key hidden in it) is prefilled by two contexts on one model, dense
//! and DHSA, interleaved ubatch by ubatch so that a busy machine slows both alike; then both
//! answer. Prints both answers, whether each holds the key, both prefill times and the speedup.

use crate::config::Mode;
use crate::llama::{ContextOptions, ModelOptions};
use crate::runner::ModeContext;
use crate::session::DhsaFlags;
use crate::text::{self, Haystack};
use anyhow::{Result, bail};
use std::io::IsTerminal;

#[derive(clap::Args)]
pub struct Args {
    /// model: a GGUF path or a known name
    #[arg(short = 'm', long = "model", default_value = "smollm2")]
    pub model: String,
    /// prompt length in tokens
    #[arg(long, default_value_t = 7000)]
    pub tokens: usize,
    /// where the key is hidden, from 0 (start) to 1 (end)
    #[arg(long = "key-depth", default_value_t = 0.4)]
    pub key_depth: f64,
    /// the pass key (default: a random 5-digit number)
    #[arg(long)]
    pub key: Option<String>,
    /// tokens each answer may take
    #[arg(short = 'n', long = "n-predict", default_value_t = 12)]
    pub n_predict: usize,
    /// threads
    #[arg(short = 't', long = "threads")]
    pub threads: Option<i32>,
    /// physical batch size (-ub)
    #[arg(long = "ubatch-size", default_value_t = 512)]
    pub ubatch: u32,
    /// let the sparse side attend sparsely up to the last prompt token (by default the last
    /// DHSA_MIN_QUERIES - 1 tokens, the question, are decoded on their own and attend densely)
    #[arg(long)]
    pub no_dense_tail: bool,
    /// print the result as JSON
    #[arg(long)]
    pub json: bool,
    /// the sparse side's settings (default: DHSA with its default budget)
    #[command(flatten)]
    pub dhsa: DhsaFlags,
}

#[derive(serde::Serialize)]
struct Side {
    mode: String,
    prefill_s: f64,
    prefill_tok_s: f64,
    kept_fraction: Option<f64>,
    answer: String,
    has_key: bool,
}

pub fn main(a: Args, verbose: bool) -> Result<()> {
    let sparse_cfg = a.dhsa.config()?;
    if sparse_cfg.mode == Mode::Dense {
        bail!("the demo compares dense with a sparse mode; pick one of dhsa, block, streaming, oracle");
    }
    let dense_cfg = crate::config::Config { mode: Mode::Dense, ..sparse_cfg.clone() };
    crate::session::start(&sparse_cfg, verbose)?;
    let natural = text::natural_text()?;
    let (_, model) = crate::session::load_model(&a.model, &ModelOptions::default())?;
    let vocab = model.vocab();
    let key = a.key.clone().unwrap_or_else(|| text::random_key(&mut crate::rng::Rng::fresh()));
    let prompt = text::passkey_prompt_tokens(Haystack::Natural, &natural, 0, a.tokens, a.key_depth, &key, &mut |p| {
        Ok(vocab.tokenize(p, true)?.len())
    })?;
    let tokens = vocab.tokenize(&prompt, true)?;
    let n_ctx = (tokens.len() + a.n_predict + 1) as u32;
    if n_ctx > model.n_ctx_train() {
        bail!(
            "the prompt ({} tokens) and answer do not fit the model's context of {}; use a smaller --tokens",
            tokens.len(),
            model.n_ctx_train()
        );
    }
    let threads = a.threads.unwrap_or_else(crate::llama::default_threads);
    let opts = ContextOptions { n_ctx, n_ubatch: a.ubatch, n_threads: threads, ..Default::default() };
    let sparse_name = sparse_cfg.mode.name();
    let mut sides = [
        ModeContext::new("dense", &model, dense_cfg, &opts)?,
        ModeContext::new(sparse_name, &model, sparse_cfg.clone(), &opts)?,
    ];
    if !a.json {
        let about = crate::models::spec(&a.model).map_or_else(|_| model.desc(), |m| m.about.to_string());
        println!("dhsa demo: {about}, {threads} threads");
        println!(
            "prompt: {} tokens of Python's documentation, pass key {key} hidden at {:.0}% depth",
            tokens.len(),
            a.key_depth * 100.0
        );
        println!("prefilling dense and {sparse_name} side by side, alternating every ubatch of {} tokens", a.ubatch);
    }

    let show = std::io::stdout().is_terminal() && !a.json;
    let multi = indicatif::MultiProgress::with_draw_target(if show {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    });
    let bars: Vec<_> = sides
        .iter()
        .map(|s| {
            let b = multi.add(indicatif::ProgressBar::new(tokens.len() as u64));
            b.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>9} {bar:40} {pos}/{len} tokens {per_sec}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(s.label.clone());
            b
        })
        .collect();
    let mut secs = [0f64; 2];
    // both sides cut the prompt alike (the sparse side's dense tail included), so the times compare
    let tail = if a.no_dense_tail { 0 } else { crate::runner::dense_tail(&sparse_cfg) };
    for (k, r) in crate::runner::pieces(tokens.len(), a.ubatch as usize, tail).into_iter().enumerate() {
        // alternate who goes first, so neither always runs on a cache the other just warmed
        for i in [k % 2, 1 - k % 2] {
            secs[i] += sides[i].decode(&tokens[r.clone()], r.start as i32)?;
            bars[i].set_position(r.end as u64);
        }
    }
    for b in &bars {
        b.finish_and_clear();
    }

    let mut out = vec![];
    for (i, s) in sides.iter_mut().enumerate() {
        let (generated, _) = crate::runner::generate(&mut s.ctx, tokens.len() as i32, a.n_predict, &mut |_| {})?;
        let answer = crate::runner::detokenize(&s.ctx, &generated);
        out.push(Side {
            mode: s.label.clone(),
            prefill_s: secs[i],
            prefill_tok_s: tokens.len() as f64 / secs[i].max(1e-9),
            kept_fraction: (s.stats.ops > 0).then(|| s.stats.kept()),
            has_key: answer.contains(&key),
            answer,
        });
    }
    let speedup = secs[0] / secs[1].max(1e-9);
    if a.json {
        let j = serde_json::json!({
            "model": a.model, "model_desc": model.desc(), "threads": threads, "prompt_tokens": tokens.len(),
            "key": key, "key_depth": a.key_depth, "sides": out, "speedup": speedup, "config": sparse_cfg,
        });
        println!("{j}");
        return Ok(());
    }
    println!();
    println!("| mode | prefill s | prefill t/s | keys kept | answer | has the key |");
    println!("|------|----------:|------------:|----------:|--------|-------------|");
    for s in &out {
        let kept = s.kept_fraction.map_or("-".to_string(), |k| format!("{:.1}%", 100.0 * k));
        let answer = s.answer.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        let yes = if s.has_key { "yes" } else { "no" };
        println!("| {} | {:.1} | {:.1} | {kept} | {answer:?} | {yes} |", s.mode, s.prefill_s, s.prefill_tok_s);
    }
    println!();
    println!(
        "{sparse_name} prefill speedup: {speedup:.2}x ({:.1} s dense vs {:.1} s {sparse_name}, measured side by side)",
        secs[0], secs[1]
    );
    Ok(())
}
