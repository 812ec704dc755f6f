//! Prefill and greedy generation on a llama.cpp context, with per-ubatch progress and timings.

use crate::llama::{Context, Decoded, INTERRUPTED, argmax};
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

/// Decodes `tokens` in ubatch-sized pieces starting at `pos0`; `progress(done, total)` after each.
/// Returns the seconds it took. Ctrl-C (or anything that sets INTERRUPTED) stops it with an error.
pub fn prefill(ctx: &mut Context, tokens: &[i32], pos0: i32, progress: &mut dyn FnMut(usize, usize)) -> Result<f64> {
    let step = ctx.n_ubatch().max(1) as usize;
    let t0 = Instant::now();
    let mut done = 0;
    while done < tokens.len() {
        let end = (done + step).min(tokens.len());
        if ctx.decode(&tokens[done..end], pos0 + done as i32, false)? == Decoded::Interrupted {
            bail!("interrupted");
        }
        done = end;
        progress(done, tokens.len());
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
