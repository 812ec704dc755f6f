//! `dhsa inspect`: look at what the selection does on a real model.
//!
//! `mask` draws, for one layer and head, which keys each query block kept, over the exact dense
//! attention map of a dense prefill (the selection is asked of the same ops dense computed).
//! `capture` saves real FA ops for tests and benchmarks (see `capture`).

use crate::capture::set_hook;
use crate::eval::ModeSpec;
use crate::select::Selector;
use anyhow::{Result, anyhow, bail, ensure};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Draw the keys each query block kept over the dense attention map of one layer and head
    Mask(Box<MaskArgs>),
    /// Save real attention ops (q, k, v, mask, output) of a dense prefill to files
    Capture(CaptureArgs),
}

pub fn main(cmd: Cmd, verbose: bool) -> Result<()> {
    match cmd {
        Cmd::Mask(a) => mask(*a, verbose),
        Cmd::Capture(a) => capture(a, verbose),
    }
}

#[derive(clap::Args)]
pub struct CaptureArgs {
    /// model: a GGUF path or a known name (smollm2, gemma3)
    #[arg(short = 'm', long = "model")]
    pub model: String,
    /// context: tokens per text window
    #[arg(short = 'c', long = "ctx-size", default_value_t = 8192)]
    pub ctx: usize,
    /// layers to capture: a list, or `all`
    #[arg(long, default_value = "0,10,20,29")]
    pub layers: String,
    /// capture the ops of the last N ubatches of each window
    #[arg(long, default_value_t = 1)]
    pub last: usize,
    /// which part of the text (all: windows from the start of the pydoc topics)
    #[arg(long, default_value = "all")]
    pub split: crate::eval::Split,
    /// text windows (spread over the text)
    #[arg(long, default_value_t = 1)]
    pub windows: usize,
    /// folder for the files [default: $DHSA_CACHE/captures]
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
}

fn capture(a: CaptureArgs, verbose: bool) -> Result<()> {
    let layers: Option<Vec<u32>> = match a.layers.trim() {
        "all" => None,
        l => Some(
            l.split(',')
                .map(|x| x.trim().parse().map_err(|_| anyhow!("--layers wants numbers or `all`, got {x:?}")))
                .collect::<Result<_>>()?,
        ),
    };
    ensure!(a.last > 0 && a.windows > 0, "--last and --windows must be at least 1");
    let dir = a.out.unwrap_or_else(crate::capture::dir);
    let cfg = crate::config::Config { mode: crate::config::Mode::Dense, ..crate::config::Config::from_env()? };
    crate::eval::start(&cfg, verbose)?;
    let (path, model) = crate::session::load_model(&a.model, &Default::default())?;
    let text = crate::eval::text(None, a.split)?;
    for (w, toks) in crate::eval::windows(&model, &text, a.ctx, a.windows)?.iter().enumerate() {
        let what = crate::capture::CaptureSpec { layers: layers.as_deref(), last_ubatches: a.last, window: w };
        for p in crate::capture::capture_tokens(&model, &path, toks, &what, &dir)? {
            println!("{}", p.display());
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct MaskArgs {
    #[command(flatten)]
    pub common: crate::eval::Common,
    /// context: tokens of text prefilled
    #[arg(short = 'c', long = "ctx-size", default_value_t = 8192)]
    pub ctx: usize,
    #[arg(long)]
    pub layer: u32,
    /// query head
    #[arg(long)]
    pub head: usize,
    /// the PNG to write (one panel per mode)
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
}

/// What the probe gathers: per row group (g queries), binned dense mass and per mode the share of
/// each bin's keys that were kept.
struct Gathered {
    pos0: usize,
    rows: Vec<Option<Row>>,
    error: Option<anyhow::Error>,
    kept_mass: Vec<(f64, f64)>,
}

#[derive(Clone)]
struct Row {
    mass: Vec<f32>,
    kept: Vec<Vec<f32>>,
}

fn mask(a: MaskArgs, verbose: bool) -> Result<()> {
    let c = &a.common;
    let specs = c.specs("dhsa")?;
    ensure!(specs.iter().all(|s| s.cfg.mode.is_sparse()), "inspect mask draws sparse modes; dense keeps every key");
    let text = crate::eval::text(None, c.split)?;
    let dense = ModeSpec {
        label: "dense".into(),
        cfg: crate::config::Config { mode: crate::config::Mode::Dense, ..specs[0].cfg.clone() },
    };
    let (path, _, model) = crate::eval::load(c, std::slice::from_ref(&dense), verbose)?;
    ensure!(a.layer < model.n_layer(), "layer {} of a model with {} layers", a.layer, model.n_layer());
    ensure!((a.head as u32) < model.n_head(), "head {} of a model with {} heads", a.head, model.n_head());
    let toks = crate::eval::windows(&model, &text, a.ctx, 1)?.remove(0);
    let g = specs.iter().map(|s| s.cfg.q_block).fold(0, gcd).clamp(1, c.ubatch as usize);
    let bin = a.ctx.div_ceil(1024).max(1);
    let n_bins = a.ctx.div_ceil(bin);
    let n_rows = a.ctx.div_ceil(g);
    let st = Arc::new(Mutex::new(Gathered {
        pos0: 0,
        rows: vec![None; n_rows],
        error: None,
        kept_mass: vec![(0.0, 0.0); specs.len()],
    }));
    let (st2, specs2, layer, head) = (st.clone(), specs.clone(), a.layer, a.head);
    let mut selectors: Vec<Selector> = specs.iter().map(|_| Selector::default()).collect();
    let mut mass = vec![];
    let hook = set_hook(move |p| {
        if p.layer != Some(layer) {
            return;
        }
        let mut s = st2.lock().unwrap_or_else(|e| e.into_inner());
        let r = (|| -> Result<()> {
            let op = p.op();
            let (n_q, n_kv) = (op.n_q as usize, op.n_kv as usize);
            let group = head / (op.n_head / op.n_head_kv) as usize;
            p.head_mass(0, head, g, &mut mass)?;
            let sels = specs2
                .iter()
                .zip(selectors.iter_mut())
                .map(|(spec, sel)| p.select(sel, &spec.cfg))
                .collect::<Result<Vec<_>>>()?;
            for r in 0..n_q.div_ceil(g) {
                let row_idx = (s.pos0 + r * g) / g;
                let m = &mass[r * n_kv..(r + 1) * n_kv];
                let total: f64 = m.iter().map(|&x| x as f64).sum();
                let mut row = Row { mass: vec![0.0; n_bins], kept: vec![vec![0.0; n_bins]; specs2.len()] };
                for (j, &x) in m.iter().enumerate().take(n_bins * bin) {
                    row.mass[j / bin] += x / total.max(1e-30) as f32;
                }
                for (si, sel) in sels.iter().enumerate() {
                    let mut kept_here = 0f64;
                    match sel {
                        None => {
                            // dense op: every visible key kept
                            for (j, &x) in m.iter().enumerate().take(n_bins * bin) {
                                if x > 0.0 {
                                    row.kept[si][j / bin] += 1.0 / bin as f32;
                                }
                            }
                            kept_here = total;
                        }
                        Some(sel) => {
                            let plan = &sel.plan;
                            let sg = if plan.n_sel_groups == 1 { 0 } else { group };
                            for sp in plan.spans_of(0, r * g / plan.q_block, sg) {
                                let (b0, b1) = (sp.begin as usize, (sp.end as usize).min(n_bins * bin));
                                for (j, &x) in m.iter().enumerate().take(b1).skip(b0) {
                                    row.kept[si][j / bin] += 1.0 / bin as f32;
                                    kept_here += x as f64;
                                }
                            }
                        }
                    }
                    s.kept_mass[si].0 += kept_here;
                    s.kept_mass[si].1 += total;
                }
                if row_idx < s.rows.len() {
                    s.rows[row_idx] = Some(row);
                }
            }
            Ok(())
        })();
        if let Err(e) = r
            && s.error.is_none()
        {
            s.error = Some(e);
        }
    })?;
    let opts = c.context_options(a.ctx as u32);
    let mut ctx = crate::eval::context(&model, &dense.cfg, &opts)?;
    let ub = c.ubatch as usize;
    for p in (0..toks.len()).step_by(ub) {
        st.lock().unwrap_or_else(|e| e.into_inner()).pos0 = p;
        if ctx.decode(&toks[p..(p + ub).min(toks.len())], p as i32, false)? == crate::llama::Decoded::Interrupted {
            bail!("interrupted");
        }
        eprintln!("prefilled {} / {} tokens", (p + ub).min(toks.len()), toks.len());
    }
    drop(hook);
    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = s.error.take() {
        return Err(e);
    }
    ensure!(s.rows.iter().any(Option::is_some), "layer {} never reached the plugin", a.layer);
    let panels: Vec<crate::plot::MaskPanel> = specs
        .iter()
        .enumerate()
        .map(|(si, spec)| {
            let (k, t) = s.kept_mass[si];
            crate::plot::MaskPanel {
                title: format!("{}: {:.1}% of the dense mass kept", spec.label, 100.0 * k / t.max(1e-30)),
                mass: s.rows.iter().map(|r| r.as_ref().map(|r| r.mass.clone())).collect(),
                kept: s.rows.iter().map(|r| r.as_ref().map(|r| r.kept[si].clone())).collect(),
            }
        })
        .collect();
    let name = path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    crate::plot::mask_panels(
        &a.out,
        &format!("{name}: layer {} head {}, {} tokens, rows of {g} queries", a.layer, a.head, toks.len()),
        (a.ctx, bin, g),
        &panels,
    )
    .map_err(|e| anyhow!("{e:#}"))?;
    for p in &panels {
        eprintln!("{}", p.title);
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
