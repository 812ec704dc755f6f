//! Prefill and greedy generation on a llama.cpp context, with per-ubatch progress and timings.

use crate::config::{self, Config};
use crate::llama::{Context, ContextOptions, Decoded, INTERRUPTED, Model, argmax};
use crate::stats::{self, Stats};
use anyhow::{Result, bail};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prefill_s: f64,
    pub prefill_tok_s: f64,
    pub generated_tokens: usize,
    pub generate_s: f64,
    pub generate_tok_s: f64,
}

impl Timings {
    pub fn new(prompt_tokens: usize, prefill_s: f64, generated_tokens: usize, generate_s: f64) -> Timings {
        Timings {
            prompt_tokens,
            prefill_s,
            prefill_tok_s: prompt_tokens as f64 / prefill_s.max(1e-9),
            generated_tokens,
            generate_s,
            generate_tok_s: generated_tokens as f64 / generate_s.max(1e-9),
        }
    }

    /// The table `dhsa run` prints after the text.
    pub fn table(&self, mode: &str, s: &crate::stats::Stats) -> String {
        let kept =
            if s.ops > 0 { format!("{:.1}% of visible keys", 100.0 * s.kept()) } else { "- (no op taken)".into() };
        format!(
            "| mode | prompt tokens | prefill s | prefill t/s | generated | gen t/s | FA ops taken | kept |\n\
             |------|--------------:|----------:|------------:|----------:|--------:|-------------:|------|\n\
             | {mode} | {} | {:.2} | {:.1} | {} | {:.1} | {} | {kept} |",
            self.prompt_tokens, self.prefill_s, self.prefill_tok_s, self.generated_tokens, self.generate_tok_s, s.ops
        )
    }
}

/// A per-ubatch progress bar on stderr; hidden when `show` is false.
pub fn progress_bar(total: usize, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("prefill {bar:40} {pos}/{len} tokens {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// How many final prompt tokens to decode on their own so that they attend densely: a decode
/// call with fewer queries than `min_queries` is left to llama.cpp's exact attention. The paper
/// keeps the final prompt tokens dense; at the end of a long prompt they are usually the question.
pub fn dense_tail(cfg: &Config) -> usize {
    if cfg.mode.is_sparse() { cfg.min_queries.saturating_sub(1) } else { 0 }
}

/// The decode calls of a prefill of `n` tokens as ranges: `ubatch`-sized pieces, then the last
/// `tail` tokens (if the prompt is longer than that) as a piece of their own.
pub fn pieces(n: usize, ubatch: usize, tail: usize) -> Vec<std::ops::Range<usize>> {
    let tail = if n > tail { tail } else { 0 };
    let head = n - tail;
    let step = ubatch.max(1);
    let mut out: Vec<_> = (0..head).step_by(step).map(|s| s..(s + step).min(head)).collect();
    if tail > 0 {
        out.push(head..n);
    }
    out
}

/// Decodes `tokens` starting at `pos0` in the pieces `pieces` gives, the last `dense_tail` on their
/// own; `progress(done, total)` after each. Returns the seconds it took. Ctrl-C (or anything that
/// sets INTERRUPTED) stops it with an error.
pub fn prefill(
    ctx: &mut Context,
    tokens: &[i32],
    pos0: i32,
    dense_tail: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<f64> {
    let t0 = Instant::now();
    for r in pieces(tokens.len(), ctx.n_ubatch() as usize, dense_tail) {
        if ctx.decode(&tokens[r.clone()], pos0 + r.start as i32, false)? == Decoded::Interrupted {
            bail!("interrupted");
        }
        progress(r.end, tokens.len());
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Greedy continuation after a prefill whose last logits are in `ctx`. `emit` receives the bytes
/// of each token as it is produced; generation stops at end-of-generation or after `n` tokens.
pub fn generate(ctx: &mut Context, pos0: i32, n: usize, emit: &mut dyn FnMut(&[u8])) -> Result<(Vec<i32>, f64)> {
    let model = ctx.model();
    let vocab = model.vocab();
    let mut out = vec![];
    let t0 = Instant::now();
    for pos in pos0..pos0 + n as i32 {
        let tok = argmax(ctx.logits(-1));
        if vocab.is_eog(tok) {
            break;
        }
        out.push(tok);
        emit(&vocab.piece(tok));
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if pos as u32 >= ctx.n_ctx() {
            break;
        }
        if ctx.decode(&[tok], pos, false)? == Decoded::Interrupted {
            bail!("interrupted");
        }
    }
    Ok((out, t0.elapsed().as_secs_f64()))
}

/// Bytes of tokens to text; pieces that split a UTF-8 character are joined first.
pub fn detokenize(ctx: &Context, toks: &[i32]) -> String {
    let vocab = ctx.model().vocab();
    let bytes: Vec<u8> = toks.iter().flat_map(|&t| vocab.piece(t)).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Streams token bytes to stdout, holding back an incomplete UTF-8 tail.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8], out: &mut impl Write) {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let _ = out.write_all(&self.pending[..valid]);
        let _ = out.flush();
        self.pending.drain(..valid);
    }
}

/// A context whose DHSA backend runs `cfg`: several of these on one model measure modes side by
/// side in one process. The plugin's backend takes the configuration current when the context is
/// created, and its `supports_op` reads the current one, so each call installs `cfg` first.
pub struct ModeContext<'m> {
    pub label: String,
    pub cfg: Config,
    pub ctx: Context<'m>,
    /// what the plugin did during `decode` calls (not `fill`)
    pub stats: Stats,
}

impl<'m> ModeContext<'m> {
    pub fn new(label: &str, model: &'m Model, cfg: Config, opts: &ContextOptions) -> Result<ModeContext<'m>> {
        config::install(cfg.clone());
        let ctx = Context::new(model, opts)?;
        Ok(ModeContext { label: label.to_string(), cfg, ctx, stats: Stats::default() })
    }

    /// Decodes `tokens` (at most n_batch) at `pos0`, waits for the result and returns the seconds
    /// it took; the plugin's counters for it go to `self.stats`.
    pub fn decode(&mut self, tokens: &[i32], pos0: i32) -> Result<f64> {
        config::install(self.cfg.clone());
        stats::reset_total();
        let t0 = Instant::now();
        let r = self.ctx.decode(tokens, pos0, false)?;
        self.ctx.synchronize();
        let dt = t0.elapsed().as_secs_f64();
        if r == Decoded::Interrupted {
            bail!("interrupted");
        }
        self.stats.add(&stats::total());
        Ok(dt)
    }

    /// Untimed prefill (per ubatch) of `tokens` at `pos0`, e.g. to fill the cache to a depth.
    pub fn fill(&mut self, tokens: &[i32], pos0: i32, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
        config::install(self.cfg.clone());
        prefill(&mut self.ctx, tokens, pos0, 0, progress)?;
        Ok(())
    }
}
