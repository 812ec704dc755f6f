//! `dhsa eval ppl`: perplexity over long text windows for every mode, and against dense in the
//! same run the KL divergence of the next-token distributions (mean and 99th percentile) and the
//! top-1 agreement, as `llama-perplexity --kl-divergence` reports them.
//!
//! Each window is prefilled in every mode; only its later part is scored (by default the second
//! half: tokens that attend over at least half a window, where a sparse mode keeps a small share of
//! the keys). Modes run in lockstep one ubatch at a time, so the dense distributions are compared
//! while they are in memory and never stored.

use super::{Cache, Common, ModeSpec};
use crate::config::Mode;
use crate::llama::{Context, Decoded};
use anyhow::{Result, bail, ensure};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// context: tokens per text window
    #[arg(short = 'c', long = "ctx-size", default_value_t = 8192)]
    pub ctx: usize,
    /// text windows (spread evenly over the text)
    #[arg(long, default_value_t = 2)]
    pub windows: usize,
    /// score the tokens from this fraction of each window on (rounded up to a ubatch)
    #[arg(long, default_value_t = 0.5)]
    pub from: f64,
    /// read the text from this file instead of the pydoc topics
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
}

/// One mode on one window: per scored token.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    /// -log p(next token)
    pub nll: Vec<f32>,
    /// KL(dense || mode) of the next-token distribution
    pub kl: Vec<f32>,
    /// the most likely next token is the same as dense's
    pub top1: Vec<bool>,
    pub keys_visible: u64,
    pub keys_attended: u64,
    pub seconds: f64,
}

/// A mode's summary over every window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub mode: String,
    pub tokens: usize,
    pub ppl: f64,
    /// PPL(mode) / PPL(dense) - 1, and its standard error (paired over tokens)
    pub ppl_change: f64,
    pub ppl_change_se: f64,
    pub kl_mean: f64,
    pub kl_mean_se: f64,
    pub kl_p99: f64,
    pub top1: f64,
    /// share of the visible keys attended during the whole prefill
    pub kept: f64,
    pub seconds: f64,
}

/// log-softmax of `x` into `out`; returns the index of the largest logit.
fn log_softmax(x: &[f32], out: &mut [f32]) -> usize {
    let (mut mx, mut arg) = (f32::NEG_INFINITY, 0);
    for (i, &v) in x.iter().enumerate() {
        if v > mx {
            mx = v;
            arg = i;
        }
    }
    let sum: f64 = x.iter().map(|&v| ((v - mx) as f64).exp()).sum();
    let lse = mx as f64 + sum.ln();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v as f64 - lse) as f32;
    }
    arg
}

/// KL(p || q) from log-probabilities.
fn kl(lp: &[f32], lq: &[f32]) -> f64 {
    lp.iter().zip(lq).map(|(&a, &b)| if a > -80.0 { (a as f64).exp() * (a as f64 - b as f64) } else { 0.0 }).sum()
}

fn decode(ctx: &mut Context, toks: &[i32], pos: usize, all: bool) -> Result<(u64, u64)> {
    crate::stats::reset_total();
    if ctx.decode(toks, pos as i32, all)? == Decoded::Interrupted {
        bail!("interrupted");
    }
    let s = crate::stats::total();
    Ok((s.keys_visible, s.keys_attended))
}

/// What `run` measured.
pub struct Report {
    /// one per mode listed (the dense reference included only when listed)
    pub summaries: Vec<Summary>,
    pub first_scored: usize,
    pub model: PathBuf,
    pub specs: Vec<ModeSpec>,
}

pub fn main(a: Args, verbose: bool) -> Result<()> {
    let rep = run(&a, verbose)?;
    print_report(&a, &rep);
    Ok(())
}

/// Computes (or reads from the cache) every mode on every window.
pub fn run(a: &Args, verbose: bool) -> Result<Report> {
    let c = &a.common;
    ensure!((0.0..1.0).contains(&a.from), "--from must be in [0, 1)");
    let mut specs = c.specs("dense,dhsa,block,streaming")?;
    // the reference: the first dense mode listed, else one added (not reported)
    let listed_ref = specs.iter().position(|s| s.cfg.mode == Mode::Dense);
    let r = match listed_ref {
        Some(i) => i,
        None => {
            let cfg = crate::config::Config { mode: Mode::Dense, ..specs[0].cfg.clone() };
            specs.push(ModeSpec { label: "dense".into(), cfg });
            specs.len() - 1
        }
    };
    let text = super::text(a.file.as_deref(), c.split)?;
    let (path, model_id, model) = super::load(c, &specs, verbose)?;
    let wins = super::windows(&model, &text, a.ctx, a.windows)?;
    let ub = c.ubatch as usize;
    let first = (((a.from * a.ctx as f64) as usize).div_ceil(ub) * ub).min(a.ctx - 1);
    let n_vocab = model.vocab().n_tokens() as usize;
    let cache = Cache::new("ppl", c.fresh);
    let mut ctxs: Vec<Option<Context>> = specs.iter().map(|_| None).collect();
    let mut cells: Vec<Vec<Cell>> = vec![vec![]; specs.len()];
    let t_all = std::time::Instant::now();
    for (w, toks) in wins.iter().enumerate() {
        let key = |s: &ModeSpec| {
            serde_json::json!({ "model": model_id, "window": super::text_id(&format!("{toks:?}")), "first": first,
                "ubatch": ub, "mode": super::config_key(&s.cfg) })
        };
        let mut have: Vec<Option<Cell>> = specs.iter().map(|s| cache.get(&key(s))).collect();
        let missing: Vec<usize> = (0..specs.len()).filter(|&i| have[i].is_none()).collect();
        if !missing.is_empty() {
            // the reference always runs (its distributions are needed), then the missing modes
            let run: Vec<usize> = std::iter::once(r).chain(missing.iter().copied().filter(|&i| i != r)).collect();
            let labels: Vec<&str> = run.iter().map(|&i| specs[i].label.as_str()).collect();
            eprintln!(
                "window {}/{} ({} tokens, scoring {}..{}): {}",
                w + 1,
                wins.len(),
                toks.len(),
                first,
                toks.len() - 1,
                labels.join(", ")
            );
            let mut out: Vec<Cell> = run.iter().map(|_| Cell::default()).collect();
            for (k, &i) in run.iter().enumerate() {
                if ctxs[i].is_none() {
                    ctxs[i] = Some(super::context(&model, &specs[i].cfg, &c.context_options(a.ctx as u32))?);
                }
                let ctx = ctxs[i].as_mut().expect("created above");
                ctx.clear();
                let t0 = std::time::Instant::now();
                for p in (0..first).step_by(ub) {
                    let (v, at) = decode(ctx, &toks[p..(p + ub).min(first)], p, false)?;
                    out[k].keys_visible += v;
                    out[k].keys_attended += at;
                }
                out[k].seconds += t0.elapsed().as_secs_f64();
                eprintln!("  {}: prefilled {first} tokens in {:.0} s", specs[i].label, t0.elapsed().as_secs_f64());
            }
            let mut lp_ref = vec![0f32; ub * n_vocab];
            let mut lp = vec![0f32; n_vocab];
            let mut arg_ref = vec![0usize; ub];
            for p in (first..toks.len()).step_by(ub) {
                let piece = &toks[p..(p + ub).min(toks.len())];
                // scored: tokens with a next token in the window
                let n_scored = piece.len().min(toks.len() - 1 - p);
                for (k, &i) in run.iter().enumerate() {
                    let ctx = ctxs[i].as_mut().expect("created above");
                    let t0 = std::time::Instant::now();
                    let (v, at) = decode(ctx, piece, p, true)?;
                    out[k].keys_visible += v;
                    out[k].keys_attended += at;
                    out[k].seconds += t0.elapsed().as_secs_f64();
                    for t in 0..n_scored {
                        let target = toks[p + t + 1] as usize;
                        let logits = ctx.logits(t as i32);
                        ensure!(logits.len() == n_vocab, "no logits for token {}", p + t);
                        if k == 0 {
                            let row = &mut lp_ref[t * n_vocab..(t + 1) * n_vocab];
                            arg_ref[t] = log_softmax(logits, row);
                            out[k].nll.push(-row[target]);
                            out[k].kl.push(0.0);
                            out[k].top1.push(true);
                        } else {
                            let arg = log_softmax(logits, &mut lp);
                            out[k].nll.push(-lp[target]);
                            out[k].kl.push(kl(&lp_ref[t * n_vocab..(t + 1) * n_vocab], &lp).max(0.0) as f32);
                            out[k].top1.push(arg == arg_ref[t]);
                        }
                    }
                }
                eprintln!("  scored tokens {}..{} ({:.0} s so far)", p, p + n_scored, t_all.elapsed().as_secs_f64());
            }
            for (k, &i) in run.iter().enumerate() {
                cache.put(&key(&specs[i]), &out[k])?;
                have[i] = Some(std::mem::take(&mut out[k]));
            }
        }
        for (i, h) in have.into_iter().enumerate() {
            cells[i].push(h.expect("every cell is cached or computed"));
        }
    }
    drop(ctxs);
    let sums: Vec<Summary> = specs.iter().zip(&cells).map(|(s, cs)| summarize(&s.label, cs, &cells[r])).collect();
    let keep = |i: usize| listed_ref.is_some() || i != r;
    Ok(Report {
        summaries: sums.into_iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, s)| s).collect(),
        first_scored: first,
        model: path,
        specs: specs.into_iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, s)| s).collect(),
    })
}

fn print_report(a: &Args, rep: &Report) {
    let c = &a.common;
    let rows: Vec<Vec<String>> = rep
        .summaries
        .iter()
        .map(|s| {
            vec![
                s.mode.clone(),
                format!("{:.4}", s.ppl),
                format!("{:+.2}% ± {:.2}", 100.0 * s.ppl_change, 100.0 * s.ppl_change_se),
                format!("{:.5} ± {:.5}", s.kl_mean, s.kl_mean_se),
                format!("{:.4}", s.kl_p99),
                format!("{:.2}%", 100.0 * s.top1),
                format!("{:.1}%", 100.0 * s.kept),
                format!("{:.0}", s.seconds),
            ]
        })
        .collect();
    let name = rep.model.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let first = rep.first_scored;
    super::report(
        c.json,
        &format!(
            "perplexity and KL divergence vs dense: {name}, {} window(s) of {} tokens from the {:?} split, scoring tokens {first}..{} of each ({} tokens in all)\n\n{}",
            a.windows,
            a.ctx,
            c.split,
            a.ctx - 1,
            rep.summaries.first().map_or(0, |s| s.tokens),
            super::table(
                &["mode", "PPL", "PPL vs dense", "mean KL", "KL p99", "top-1 same", "keys kept", "seconds"],
                &rows
            )
        ),
    );
    if c.json {
        println!(
            "{}",
            serde_json::json!({ "model": rep.model, "ctx": a.ctx, "windows": a.windows, "first_scored": first,
                "split": c.split, "results": rep.summaries,
                "configs": rep.specs.iter().map(|s| serde_json::json!({"mode": s.label, "config": s.cfg})).collect::<Vec<_>>() })
        );
    }
}

fn mean_se(x: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = x.clone().count().max(1) as f64;
    let m = x.clone().sum::<f64>() / n;
    let var = x.map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, (var / n).sqrt())
}

pub fn summarize(label: &str, cells: &[Cell], reference: &[Cell]) -> Summary {
    let nll = cells.iter().flat_map(|c| c.nll.iter().map(|&v| v as f64));
    let diff =
        cells.iter().zip(reference).flat_map(|(c, r)| c.nll.iter().zip(&r.nll).map(|(&a, &b)| a as f64 - b as f64));
    let (mnll, _) = mean_se(nll);
    let (md, sd) = mean_se(diff);
    let (mkl, skl) = mean_se(cells.iter().flat_map(|c| c.kl.iter().map(|&v| v as f64)));
    let mut kls: Vec<f32> = cells.iter().flat_map(|c| c.kl.iter().copied()).collect();
    kls.sort_by(f32::total_cmp);
    let p99 = kls.get(((kls.len() as f64 * 0.99) as usize).min(kls.len().saturating_sub(1))).copied().unwrap_or(0.0);
    let n = kls.len();
    let same = cells.iter().flat_map(|c| c.top1.iter()).filter(|&&b| b).count();
    let (vis, att) = cells.iter().fold((0u64, 0u64), |a, c| (a.0 + c.keys_visible, a.1 + c.keys_attended));
    Summary {
        mode: label.to_string(),
        tokens: n,
        ppl: mnll.exp(),
        ppl_change: md.exp() - 1.0,
        ppl_change_se: md.exp() * sd,
        kl_mean: mkl,
        kl_mean_se: skl,
        kl_p99: p99 as f64,
        top1: same as f64 / n.max(1) as f64,
        kept: if vis > 0 { att as f64 / vis as f64 } else { 1.0 },
        seconds: cells.iter().map(|c| c.seconds).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_identical_distributions_is_zero_and_positive_otherwise() {
        let x = [1.0f32, 2.0, 3.0, -1.0];
        let y = [1.0f32, 2.5, 2.0, -1.0];
        let (mut a, mut b) = ([0f32; 4], [0f32; 4]);
        assert_eq!(log_softmax(&x, &mut a), 2);
        assert_eq!(log_softmax(&y, &mut b), 1);
        assert!(kl(&a, &a).abs() < 1e-9);
        // KL by the definition, in f64
        let p: Vec<f64> = a.iter().map(|&v| (v as f64).exp()).collect();
        let q: Vec<f64> = b.iter().map(|&v| (v as f64).exp()).collect();
        let want: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        assert!((kl(&a, &b) - want).abs() < 1e-6 && want > 0.01);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    }
}
