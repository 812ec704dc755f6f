//! `dhsa eval passkey`: a random 5-digit passkey hidden at a relative depth of a haystack (natural
//! text from the pydoc topics, or the classic repeated filler), for each length, depth and trial;
//! every mode prefills the same prompt and answers greedily; a cell succeeds when the exact
//! passkey appears in the answer. The plot is one heatmap (length x depth) per mode.

use super::{Cache, Common, ModeSpec};
use crate::text::Haystack;
use anyhow::{Result, bail, ensure};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// prompt lengths in tokens
    #[arg(long, value_delimiter = ',', default_value = "2048,4096,7680")]
    pub lengths: Vec<usize>,
    /// relative depths of the passkey (0 = start, 1 = end)
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.3,0.5,0.7,0.9")]
    pub depths: Vec<f64>,
    /// trials per (length, depth), each with its own key and haystack offset
    #[arg(long, default_value_t = 1)]
    pub trials: usize,
    /// natural (pydoc topics) or repeat (the classic filler)
    #[arg(long, default_value = "natural")]
    pub haystack: Haystack,
    /// seed of the keys and haystack offsets
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// tokens generated for the answer
    #[arg(short = 'n', long = "n-predict", default_value_t = 10)]
    pub n_predict: usize,
    /// write a PNG heatmap (length x depth, one panel per mode)
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    pub length: usize,
    pub depth: f64,
    pub trial: usize,
    pub key: String,
    pub prompt_tokens: usize,
    pub answer: String,
    pub success: bool,
    pub kept: f64,
    pub prefill_s: f64,
}

/// The prompt of one grid cell: its key and haystack offset come from (seed, length, depth, trial).
pub fn cell_prompt(
    model: &crate::llama::Model,
    text: &str,
    haystack: Haystack,
    seed: u64,
    length: usize,
    depth: f64,
    trial: usize,
) -> Result<(String, Vec<i32>)> {
    let mut rng = crate::rng::Rng::new(
        seed.wrapping_mul(0x9e37_79b9)
            ^ (length as u64) << 20
            ^ ((depth * 1000.0).round() as u64) << 40
            ^ (trial as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
    );
    let key = crate::text::random_key(&mut rng);
    let offset = rng.below(text.len());
    let vocab = model.vocab();
    let prompt = crate::text::passkey_prompt_tokens(haystack, text, offset, length, depth, &key, &mut |p| {
        Ok(vocab.tokenize(p, true)?.len())
    })?;
    let toks = vocab.tokenize(&prompt, true)?;
    Ok((key, toks))
}

/// Prefills `toks` on a cleared context and answers greedily; returns (answer, kept, prefill s).
pub fn answer(ctx: &mut crate::llama::Context, toks: &[i32], n_predict: usize) -> Result<(String, f64, f64)> {
    ctx.clear();
    crate::stats::reset_total();
    let prefill_s = crate::runner::prefill(ctx, toks, 0, 0, &mut |_, _| {})?;
    let kept = crate::stats::total().kept();
    let (generated, _) = crate::runner::generate(ctx, toks.len() as i32, n_predict, &mut |_| {})?;
    Ok((crate::runner::detokenize(ctx, &generated), kept, prefill_s))
}

pub fn main(a: Args, verbose: bool) -> Result<()> {
    let (specs, cells, path) = run(&a, verbose)?;
    print_results(&a, &specs, &cells, &path)
}

/// Every mode on every grid cell (computed, or read from the cache): per mode, its cells.
pub fn run(a: &Args, verbose: bool) -> Result<(Vec<ModeSpec>, Vec<Vec<Cell>>, PathBuf)> {
    let c = &a.common;
    ensure!(!a.lengths.is_empty() && !a.depths.is_empty() && a.trials > 0, "empty grid");
    ensure!(a.depths.iter().all(|d| (0.0..=1.0).contains(d)), "depths are fractions in [0, 1]");
    ensure!(a.lengths.iter().all(|&l| l >= 256), "lengths below 256 tokens cannot hold the prompt");
    let specs = c.specs("dense,dhsa,block,streaming")?;
    let text = super::text(None, c.split)?;
    let (path, model_id, model) = super::load(c, &specs, verbose)?;
    let max_len = *a.lengths.iter().max().expect("non-empty");
    let n_ctx = (max_len + a.n_predict + 16).next_multiple_of(256);
    if n_ctx as u32 > model.n_ctx_train() {
        bail!("length {max_len} does not fit the model's context of {}", model.n_ctx_train());
    }
    let cache = Cache::new("passkey", c.fresh);
    let mut ctxs: Vec<Option<crate::llama::Context>> = specs.iter().map(|_| None).collect();
    let total = a.lengths.len() * a.depths.len() * a.trials * specs.len();
    let mut done = 0;
    let mut cells: Vec<Vec<Cell>> = vec![vec![]; specs.len()];
    for &length in &a.lengths {
        for &depth in &a.depths {
            for trial in 0..a.trials {
                let (key, toks) = cell_prompt(&model, &text, a.haystack, a.seed, length, depth, trial)?;
                for (i, s) in specs.iter().enumerate() {
                    done += 1;
                    let ck = serde_json::json!({ "model": model_id, "mode": super::config_key(&s.cfg),
                        "prompt": super::text_id(&format!("{toks:?}")), "n_predict": a.n_predict, "ubatch": c.ubatch,
                        "length": length, "depth": depth, "trial": trial, "haystack": a.haystack });
                    let cell = match cache.get::<Cell>(&ck) {
                        Some(cell) => cell,
                        None => {
                            if ctxs[i].is_none() {
                                ctxs[i] = Some(super::context(&model, &s.cfg, &c.context_options(n_ctx as u32))?);
                            }
                            let ctx = ctxs[i].as_mut().expect("created above");
                            let (ans, kept, prefill_s) = answer(ctx, &toks, a.n_predict)?;
                            let cell = Cell {
                                length,
                                depth,
                                trial,
                                success: ans.contains(&key),
                                key: key.clone(),
                                prompt_tokens: toks.len(),
                                answer: ans,
                                kept,
                                prefill_s,
                            };
                            cache.put(&ck, &cell)?;
                            cell
                        }
                    };
                    eprintln!(
                        "[{done}/{total}] length {length} depth {depth} trial {trial} {}: key {} answer {:?} {} ({:.0} s, kept {:.0}%)",
                        s.label,
                        cell.key,
                        cell.answer.trim(),
                        if cell.success { "ok" } else { "MISS" },
                        cell.prefill_s,
                        100.0 * cell.kept
                    );
                    cells[i].push(cell);
                }
            }
        }
    }
    drop(ctxs);
    Ok((specs, cells, path))
}

fn print_results(a: &Args, specs: &[ModeSpec], cells: &[Vec<Cell>], model: &std::path::Path) -> Result<()> {
    let c = &a.common;
    // success fraction per mode, length, depth
    let grid = |i: usize| -> Vec<Vec<f64>> {
        a.lengths
            .iter()
            .map(|&l| {
                a.depths
                    .iter()
                    .map(|&d| {
                        let cs: Vec<&Cell> = cells[i].iter().filter(|x| x.length == l && x.depth == d).collect();
                        cs.iter().filter(|x| x.success).count() as f64 / cs.len().max(1) as f64
                    })
                    .collect()
            })
            .collect()
    };
    let mut out = format!(
        "passkey retrieval: {}, {} haystack ({:?} split), {} trial(s) per cell\n\n",
        model.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        match a.haystack {
            Haystack::Natural => "natural-text",
            Haystack::Repeat => "repeated-filler",
        },
        c.split,
        a.trials
    );
    let mut header: Vec<String> = vec!["mode".into(), "successes".into()];
    header.extend(a.lengths.iter().map(|l| format!("len {l}")));
    header.push("keys kept".into());
    let rows: Vec<Vec<String>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ok = cells[i].iter().filter(|x| x.success).count();
            let mut r = vec![s.label.clone(), format!("{ok}/{}", cells[i].len())];
            for &l in &a.lengths {
                let cs: Vec<&Cell> = cells[i].iter().filter(|x| x.length == l).collect();
                r.push(format!("{}/{}", cs.iter().filter(|x| x.success).count(), cs.len()));
            }
            let kept = cells[i].iter().map(|x| x.kept).sum::<f64>() / cells[i].len().max(1) as f64;
            r.push(format!("{:.0}%", 100.0 * kept));
            r
        })
        .collect();
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    out.push_str(&super::table(&h, &rows));
    // per mode: rows = lengths, columns = depths
    for (i, s) in specs.iter().enumerate() {
        let mut hdr: Vec<String> = vec![format!("{} length", s.label)];
        hdr.extend(a.depths.iter().map(|d| format!("depth {d}")));
        let g = grid(i);
        let rows: Vec<Vec<String>> = a
            .lengths
            .iter()
            .zip(&g)
            .map(|(l, r)| std::iter::once(l.to_string()).chain(r.iter().map(|v| format!("{v:.2}"))).collect())
            .collect();
        let h: Vec<&str> = hdr.iter().map(String::as_str).collect();
        out.push_str("\n\n");
        out.push_str(&super::table(&h, &rows));
    }
    super::report(c.json, &out);
    if c.json {
        let res: Vec<serde_json::Value> = specs
            .iter()
            .zip(cells)
            .map(|(s, cs)| serde_json::json!({ "mode": s.label, "config": s.cfg, "cells": cs }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "model": model, "haystack": a.haystack, "split": c.split, "lengths": a.lengths,
                "depths": a.depths, "trials": a.trials, "results": res })
        );
    }
    if let Some(p) = &a.plot {
        let panels: Vec<crate::plot::Panel> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let ok = cells[i].iter().filter(|x| x.success).count();
                crate::plot::Panel { title: format!("{} ({ok}/{})", s.label, cells[i].len()), values: grid(i) }
            })
            .collect();
        crate::plot::heatmaps(
            p,
            &format!("passkey success (rows: length, columns: depth; green = found in all {} trial(s))", a.trials),
            &a.lengths.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
            &a.depths.iter().map(|d| format!("{d}")).collect::<Vec<_>>(),
            &panels,
        )?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
