//! `dhsa bench prefill`: prompt processing at depth, the way `llama-bench -p P -d D` measures it,
//! for several attention modes in one process. Each mode has its own context on the same model;
//! at each depth the caches are filled to the depth (not timed: one context fills, the others
//! copy its cache), then each repetition times a prefill of P tokens at that depth in every mode,
//! the order of modes alternating between repetitions, and removes those tokens again. Reported:
//! the median tokens/s and its spread (min - max).

use crate::config::{Config, Mode};
use crate::llama::{ContextOptions, ModelOptions};
use crate::plot::{Series, line_chart};
use crate::runner::ModeContext;
use crate::session::DhsaFlags;
use anyhow::{Result, bail};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// model: a GGUF path or a known name (also a `dhsa models synth` file)
    #[arg(short = 'm', long = "model", default_value = "smollm2")]
    pub model: String,
    /// tokens already in the KV cache when the timed prefill starts (comma-separated)
    #[arg(short = 'd', long = "depth", value_delimiter = ',', default_value = "0,4096,7680")]
    pub depth: Vec<u32>,
    /// attention modes (comma-separated): dense, dhsa, block, streaming, oracle, and ggml
    /// (llama.cpp's own FA: DHSA takes no op)
    #[arg(long, value_delimiter = ',', default_value = "dense,dhsa")]
    pub modes: Vec<String>,
    /// prompt tokens per timed prefill
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: u32,
    /// physical batch size (-ub)
    #[arg(long = "ubatch-size", default_value_t = 512)]
    pub ubatch: u32,
    /// threads
    #[arg(short = 't', long = "threads")]
    pub threads: Option<i32>,
    /// repetitions per depth and mode
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub reps: usize,
    /// layers to offload to the GPU (-ngl)
    #[arg(long = "n-gpu-layers", default_value_t = 0)]
    pub ngl: i32,
    /// random token ids (as llama-bench) instead of natural text
    #[arg(long)]
    pub random: bool,
    /// print the results as JSON
    #[arg(long)]
    pub json: bool,
    /// write a PNG chart of tokens/s against depth, one line per mode
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// settings of the sparse modes (--mode is not used: see --modes)
    #[command(flatten)]
    pub dhsa: DhsaFlags,
}

/// One measured mode at one depth.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub mode: String,
    pub depth: u32,
    pub n_prompt: u32,
    pub times_s: Vec<f64>,
    pub tok_s_median: f64,
    pub tok_s_min: f64,
    pub tok_s_max: f64,
    /// fraction of visible keys attended (None: the plugin took no op)
    pub kept_fraction: Option<f64>,
    /// median tokens/s over the first mode's at this depth
    pub speedup: f64,
}

/// `ggml` runs llama.cpp's own FA: the plugin declines every op when no op has enough keys.
fn mode_config(base: &Config, name: &str) -> Result<Config> {
    if name == "ggml" {
        return Ok(Config { min_keys: usize::MAX, ..base.clone() });
    }
    let mode: Mode = name.parse().map_err(|e| anyhow::anyhow!("unknown mode {name:?}: {e}, ggml"))?;
    Ok(Config { mode, ..base.clone() })
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn main(a: Args, verbose: bool) -> Result<()> {
    if a.dhsa.mode.is_some() {
        bail!("bench prefill measures every mode named in --modes; --mode is not used here");
    }
    if a.modes.is_empty() || a.depth.is_empty() || a.reps == 0 || a.n_prompt == 0 {
        bail!("give at least one mode, one depth, one repetition and one prompt token");
    }
    let base = a.dhsa.config()?;
    let cfgs: Vec<(String, Config)> =
        a.modes.iter().map(|m| Ok((m.trim().to_string(), mode_config(&base, m.trim())?))).collect::<Result<_>>()?;
    let mut depths = a.depth.clone();
    depths.sort_unstable();
    depths.dedup();
    let max_depth = *depths.last().unwrap_or(&0);

    crate::session::start(&base, verbose)?;
    let (path, model) =
        crate::session::load_model(&a.model, &ModelOptions { n_gpu_layers: a.ngl, ..Default::default() })?;
    let n_ctx = max_depth + a.n_prompt;
    if n_ctx > model.n_ctx_train() {
        bail!(
            "context {n_ctx} (depth {max_depth} + {} prompt tokens) is larger than the model allows ({})",
            a.n_prompt,
            model.n_ctx_train()
        );
    }
    let tokens = bench_tokens(&model, n_ctx as usize, a.random)?;
    let threads = a.threads.unwrap_or_else(crate::llama::default_threads);
    let opts = ContextOptions {
        n_ctx,
        n_batch: a.n_prompt.max(a.ubatch),
        n_ubatch: a.ubatch,
        n_threads: threads,
        ..Default::default()
    };
    let mut ctxs: Vec<ModeContext> =
        cfgs.iter().map(|(name, c)| ModeContext::new(name, &model, c.clone(), &opts)).collect::<Result<_>>()?;

    let show = std::io::stdout().is_terminal() && !a.json;
    let n = ctxs.len() as u64;
    let bar = crate::runner::progress_bar(0, show);
    bar.set_length(max_depth as u64 + n * (depths.len() * a.reps + 1) as u64 * a.n_prompt as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} {bar:40} {percent:>3}% eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let p = a.n_prompt as usize;
    // one untimed prefill per context first: page in the weights, allocate the graphs
    for c in ctxs.iter_mut() {
        bar.set_message(format!("warm-up {}", c.label));
        c.fill(&tokens[..p], 0, &mut |_, _| {})?;
        c.ctx.clear();
        bar.inc(p as u64);
    }
    // One context fills the cache (with exact attention where dense is measured) and the others
    // get a copy: the fill is not what is measured, and doing it once saves most of the run.
    let filler = cfgs.iter().position(|(name, _)| name == "dense").unwrap_or(0);
    let mut filled = 0usize;
    let mut records = vec![];
    for &d in &depths {
        let du = d as usize;
        bar.set_message(format!("filling to depth {d}"));
        let before = bar.position();
        ctxs[filler].fill(&tokens[filled..du], filled as i32, &mut |done, _| bar.set_position(before + done as u64))?;
        filled = du;
        let state = ctxs[filler].ctx.seq_state()?;
        for (i, c) in ctxs.iter_mut().enumerate() {
            if i != filler {
                c.ctx.set_seq_state(&state)?;
            }
            c.stats = Default::default();
        }
        let mut times = vec![vec![]; ctxs.len()];
        for r in 0..a.reps {
            let order: Vec<usize> =
                if r % 2 == 0 { (0..ctxs.len()).collect() } else { (0..ctxs.len()).rev().collect() };
            for i in order {
                let c = &mut ctxs[i];
                bar.set_message(format!("pp{p} @ d{d} {}", c.label));
                times[i].push(c.decode(&tokens[du..du + p], d as i32)?);
                if !c.ctx.truncate(d as i32) {
                    c.ctx.set_seq_state(&state)?;
                }
                bar.inc(p as u64);
            }
        }
        let first = p as f64 / median(&times[0]);
        for (i, c) in ctxs.iter().enumerate() {
            let tps: Vec<f64> = times[i].iter().map(|t| p as f64 / t.max(1e-12)).collect();
            let med = p as f64 / median(&times[i]).max(1e-12);
            records.push(Record {
                mode: c.label.clone(),
                depth: d,
                n_prompt: a.n_prompt,
                times_s: times[i].clone(),
                tok_s_median: med,
                tok_s_min: tps.iter().copied().fold(f64::INFINITY, f64::min),
                tok_s_max: tps.iter().copied().fold(0.0, f64::max),
                kept_fraction: (c.stats.ops > 0).then(|| c.stats.kept()),
                speedup: med / first,
            });
        }
    }
    bar.finish_and_clear();
    drop(ctxs);

    let desc = model.desc();
    if let Some(png) = &a.plot {
        let series: Vec<Series> = cfgs
            .iter()
            .map(|(name, _)| Series {
                name: name.clone(),
                points: records.iter().filter(|r| &r.mode == name).map(|r| (r.depth as f64, r.tok_s_median)).collect(),
            })
            .collect();
        let title = format!("pp{p} at depth: {desc}, {threads} threads");
        line_chart(png, &title, "depth (tokens in the KV cache)", "prompt tokens / s (median)", &series)?;
    }
    if a.json {
        let j = serde_json::json!({
            "model": path, "model_desc": desc, "threads": threads, "n_ubatch": a.ubatch, "n_prompt": a.n_prompt,
            "repetitions": a.reps, "tokens": if a.random { "random" } else { "natural" },
            "config": base, "results": records,
        });
        println!("{j}");
    } else {
        println!("{}", table(&desc, threads, a.ubatch, &records, &cfgs[0].0));
    }
    Ok(())
}

/// The prompt: natural text (Python's documentation) tokenized, or random ids; `n` tokens.
fn bench_tokens(model: &crate::llama::Model, n: usize, random: bool) -> Result<Vec<i32>> {
    let vocab = model.vocab();
    let mut toks = if random || !vocab.has_tokenizer() {
        let mut rng = crate::rng::Rng::fresh();
        (0..n).map(|_| rng.below(vocab.n_tokens().max(1) as usize) as i32).collect()
    } else {
        let text = crate::text::natural_text()?;
        // every tokenizer here takes at most one token per byte: n * 8 bytes is plenty, or all
        let mut cut = (n * 8).min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        vocab.tokenize(&text[..cut], true)?
    };
    if toks.is_empty() {
        bail!("the model's tokenizer gave no tokens");
    }
    while toks.len() < n {
        let more: Vec<i32> = toks.iter().copied().take(n - toks.len()).collect();
        toks.extend(more);
    }
    toks.truncate(n);
    Ok(toks)
}

/// A markdown table in the manner of llama-bench's.
pub fn table(desc: &str, threads: i32, ubatch: u32, records: &[Record], first: &str) -> String {
    let mut s = format!(
        "| model | threads | n_ubatch | mode | test | t/s (median) | min - max | keys kept | vs {first} |\n\
         | ----- | ------: | -------: | ---- | ---: | -----------: | --------: | --------: | ------: |\n"
    );
    for r in records {
        let kept = r.kept_fraction.map_or("-".to_string(), |k| format!("{:.1}%", 100.0 * k));
        s += &format!(
            "| {desc} | {threads} | {ubatch} | {} | pp{} @ d{} | {:.2} | {:.2} - {:.2} | {kept} | {:.2}x |\n",
            r.mode, r.n_prompt, r.depth, r.tok_s_median, r.tok_s_min, r.tok_s_max, r.speedup
        );
    }
    s
}
