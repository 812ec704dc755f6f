//! `dhsa eval recall`: for every layer and head, the share of the exact dense attention mass that
//! each mode's kept keys carry (what `oracle` maximises for its budget). Measured on the real ops
//! of a dense prefill: a probe sees each FA op, asks every mode's selector what it would keep for
//! that very op, and weighs the kept keys with the op's exact softmax probabilities. All modes are
//! thus judged on the same queries and keys (errors do not compound across layers here; `ppl`
//! measures that).

use super::{Cache, Common, ModeSpec};
use crate::capture::set_hook;
use crate::kernels::{self, Op, Plan};
use crate::select::Selector;
use anyhow::{Result, anyhow, bail, ensure};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Exact attention probabilities of q head `h`, summed per (group of `g` consecutive query rows,
/// key), for sequence `i3`: out[row group][n_kv]. Each query row with a visible key adds 1 in all
/// (softmax over keys only; attention sinks are left out, as the kept keys cannot change them).
///
/// # Safety
/// `op`'s pointers must address valid tensors (see kernels::attention).
pub unsafe fn head_mass(op: &Op, i3: usize, h: usize, g: usize, out: &mut Vec<f32>, n_threads: usize) -> Result<()> {
    if op.max_bias != 0.0 {
        bail!("attention mass per head is not computed for ALiBi ops");
    }
    let (nh, nhk) = (op.n_head as usize, op.n_head_kv as usize);
    if h >= nh || nhk == 0 || !nh.is_multiple_of(nhk) || g == 0 {
        bail!("head {h} of an op with {nh} heads / {nhk} kv heads (row group {g})");
    }
    let hk = h / (nh / nhk);
    // the op restricted to one head: the same tensors, offset to head h and its kv head
    let mut one = *op;
    one.q = op.q.wrapping_add(h * op.q_nb2);
    one.k = op.k.wrapping_add(hk * op.k_nb2);
    one.v = op.v.wrapping_add(hk * op.v_nb2);
    if !op.mask.is_null() && op.mask_ne2 > 1 {
        one.mask = (op.mask as *const u8).wrapping_add((h % op.mask_ne2 as usize) * op.mask_nb2) as *const u16;
        one.mask_ne2 = 1;
    }
    one.sinks = std::ptr::null();
    one.n_head = 1;
    one.n_head_kv = 1;
    out.clear();
    out.resize((op.n_q as usize).div_ceil(g) * op.n_kv as usize, 0.0);
    // SAFETY: `one` addresses a sub-tensor of op's valid tensors (caller's contract).
    unsafe { kernels::key_mass(&one, i3, g, 1, out, n_threads) };
    Ok(())
}

pub fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The exact dense attention mass of every q head of one op, per (group of `g` query rows, key),
/// kept as prefix sums over the keys so that the mass of any span is two lookups.
pub struct MassTable {
    pub g: usize,
    pub n_rows: usize,
    pub n_kv: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub ne3: usize,
    /// [i3][head][row][n_kv + 1]
    prefix: Vec<f64>,
}

impl MassTable {
    /// Computes the table of `op` (one dense pass per head).
    ///
    /// # Safety
    /// `op`'s pointers must address valid tensors (see kernels::attention).
    pub unsafe fn compute(op: &Op, g: usize, n_threads: usize) -> Result<MassTable> {
        let (nh, n_kv, ne3) = (op.n_head as usize, op.n_kv as usize, op.ne3 as usize);
        let n_rows = (op.n_q as usize).div_ceil(g.max(1));
        let mut raw = Vec::with_capacity(ne3 * nh * n_rows * n_kv);
        let mut m = vec![];
        for i3 in 0..ne3 {
            for h in 0..nh {
                // SAFETY: forwarded from this function's contract.
                unsafe { head_mass(op, i3, h, g, &mut m, n_threads)? };
                raw.extend_from_slice(&m);
            }
        }
        MassTable::from_raw(g, n_rows, n_kv, nh, op.n_head_kv as usize, ne3, &raw)
    }

    /// From per-(i3, head, row, key) masses, as `raw()` returns them.
    pub fn from_raw(
        g: usize,
        n_rows: usize,
        n_kv: usize,
        n_head: usize,
        n_head_kv: usize,
        ne3: usize,
        raw: &[f32],
    ) -> Result<MassTable> {
        ensure!(raw.len() == ne3 * n_head * n_rows * n_kv, "mass table of the wrong size");
        ensure!(n_head_kv > 0 && n_head.is_multiple_of(n_head_kv), "bad head counts");
        let mut prefix = Vec::with_capacity(ne3 * n_head * n_rows * (n_kv + 1));
        for row in raw.chunks_exact(n_kv.max(1)).take(ne3 * n_head * n_rows) {
            let mut acc = 0f64;
            prefix.push(0.0);
            for &x in row {
                acc += x as f64;
                prefix.push(acc);
            }
        }
        Ok(MassTable { g, n_rows, n_kv, n_head, n_head_kv, ne3, prefix })
    }

    /// The per-(i3, head, row, key) masses back.
    pub fn raw(&self) -> Vec<f32> {
        self.prefix.chunks_exact(self.n_kv + 1).flat_map(|p| p.windows(2).map(|w| (w[1] - w[0]) as f32)).collect()
    }

    fn row(&self, i3: usize, h: usize, r: usize) -> &[f64] {
        let w = self.n_kv + 1;
        let i = (i3 * self.n_head + h) * self.n_rows + r;
        &self.prefix[i * w..(i + 1) * w]
    }

    /// Per q head: (kept, total) mass of `plan` (None: dense, everything kept) over all rows.
    pub fn kept(&self, plan: Option<&Plan>) -> Result<Vec<(f64, f64)>> {
        let mut out = vec![(0f64, 0f64); self.n_head];
        let group_size = self.n_head / self.n_head_kv;
        if let Some(p) = plan {
            ensure!(p.q_block.is_multiple_of(self.g), "plan q_block {} is not a multiple of {}", p.q_block, self.g);
        }
        for i3 in 0..self.ne3 {
            for (h, o) in out.iter_mut().enumerate() {
                let total: f64 = (0..self.n_rows).map(|r| self.row(i3, h, r)[self.n_kv]).sum();
                let kept = match plan {
                    None => total,
                    Some(p) => {
                        let per = p.q_block / self.g;
                        let s = if p.n_sel_groups == 1 { 0 } else { h / group_size };
                        let mut kept = 0f64;
                        for b in 0..p.n_blocks {
                            let spans = p.spans_of(i3, b, s);
                            for r in b * per..((b + 1) * per).min(self.n_rows) {
                                let pr = self.row(i3, h, r);
                                kept += spans.iter().map(|sp| pr[sp.end as usize] - pr[sp.begin as usize]).sum::<f64>();
                            }
                        }
                        kept
                    }
                };
                o.0 += kept;
                o.1 += total;
            }
        }
        Ok(out)
    }
}

/// For each plan (None: dense, every visible key) and each q head: (kept, total) exact attention
/// mass over all query rows of the op. kept / total is the head's recall; total counts the rows
/// that see any key.
///
/// # Safety
/// `op`'s pointers must address valid tensors (see kernels::attention).
pub unsafe fn plan_mass(op: &Op, plans: &[Option<&Plan>], n_threads: usize) -> Result<Vec<Vec<(f64, f64)>>> {
    let n_q = op.n_q as usize;
    let g = plans.iter().flatten().map(|p| p.q_block).fold(0, gcd).clamp(1, n_q.max(1));
    // SAFETY: forwarded from this function's contract.
    let t = unsafe { MassTable::compute(op, g, n_threads)? };
    plans.iter().map(|p| t.kept(*p)).collect()
}

/// `plan_mass` for an op held in Rust buffers (captured ops, tests).
pub fn owned_plan_mass(
    op: &mut kernels::OwnedOp,
    plans: &[Option<&Plan>],
    n_threads: usize,
) -> Result<Vec<Vec<(f64, f64)>>> {
    let o = op.op();
    // SAFETY: o addresses op's own buffers, which match its shape and outlive the call.
    unsafe { plan_mass(&o, plans, n_threads) }
}

/// (kept, visible) keys of `plan` summed over query rows (a row's keys are those up to its last
/// visible key, `last[i3][row]`), averaged over the selection groups.
pub fn keys_kept(plan: Option<&Plan>, last: &[Vec<i32>]) -> (f64, f64) {
    let (mut kept, mut vis) = (0f64, 0f64);
    for (i3, rows) in last.iter().enumerate() {
        for (r, &l) in rows.iter().enumerate() {
            if l < 0 {
                continue;
            }
            let end = l + 1;
            vis += end as f64;
            kept += match plan {
                None => end as f64,
                Some(p) => {
                    let b = r / p.q_block;
                    (0..p.n_sel_groups)
                        .map(|s| {
                            p.spans_of(i3, b, s)
                                .iter()
                                .map(|sp| (sp.end.min(end) - sp.begin).max(0) as f64)
                                .sum::<f64>()
                        })
                        .sum::<f64>()
                        / p.n_sel_groups as f64
                }
            };
        }
    }
    (kept, vis)
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// context: tokens per text window
    #[arg(short = 'c', long = "ctx-size", default_value_t = 8192)]
    pub ctx: usize,
    /// text windows measured (spread over the text)
    #[arg(long, default_value_t = 1)]
    pub windows: usize,
    /// measure the ops of ubatches whose first query sits at or after this fraction of the window
    /// (the later part, where attention is long-range and the budget is a small share)
    #[arg(long, default_value_t = 0.5)]
    pub from: f64,
    /// read the text from this file instead of the pydoc topics
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// measure on ops saved by `dhsa inspect capture` in this folder instead of running a model
    /// (their exact masses are cached next to them: a sweep over settings then costs only the
    /// selections)
    #[arg(long, conflicts_with_all = ["file", "windows", "from"])]
    pub captured: Option<PathBuf>,
    /// print only the summary over all layers (one row per mode)
    #[arg(long)]
    pub summary: bool,
    /// write a PNG: recall per layer, one line per mode (and FILE-heads.png: per layer and head)
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One mode's measurements: (kept, total) mass per layer and q head, and (kept, visible) keys.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub heads: Vec<Vec<(f64, f64)>>,
    pub keys: (f64, f64),
    /// captured ops only: per (query row, head), |sparse output - dense output| / |dense output|
    #[serde(default, skip_serializing)]
    pub out_err: Vec<f32>,
}

impl Tally {
    fn add_layer(&mut self, layer: usize, per_head: &[(f64, f64)], keys: (f64, f64)) {
        if self.heads.len() <= layer {
            self.heads.resize(layer + 1, vec![]);
        }
        let row = &mut self.heads[layer];
        if row.len() < per_head.len() {
            row.resize(per_head.len(), (0.0, 0.0));
        }
        for (t, v) in row.iter_mut().zip(per_head) {
            t.0 += v.0;
            t.1 += v.1;
        }
        self.keys.0 += keys.0;
        self.keys.1 += keys.1;
    }

    fn add(&mut self, o: &Tally) {
        for (l, hs) in o.heads.iter().enumerate() {
            self.add_layer(l, hs, (0.0, 0.0));
        }
        self.keys.0 += o.keys.0;
        self.keys.1 += o.keys.1;
    }
}

#[derive(serde::Serialize)]
struct ModeResult {
    mode: String,
    /// recall per layer (all heads' kept mass over all heads' mass)
    layers: Vec<f64>,
    /// recall per layer and q head
    heads: Vec<Vec<f64>>,
    /// over every layer and head
    mean: f64,
    /// share of the visible keys kept
    kept_keys: f64,
    /// captured ops only: mean and 99th percentile of the attention output's relative error
    out_err: Option<(f64, f64)>,
}

fn ratio(t: &(f64, f64)) -> f64 {
    if t.1 > 0.0 { t.0 / t.1 } else { f64::NAN }
}

/// Measures every mode on one op: its plans, their kept mass per head and their kept keys.
fn measure_op(
    op_mass: &MassTable,
    plans: &[Option<&Plan>],
    last: &[Vec<i32>],
    layer: usize,
    tallies: &mut [Tally],
) -> Result<()> {
    for (t, plan) in tallies.iter_mut().zip(plans) {
        t.add_layer(layer, &op_mass.kept(*plan)?, keys_kept(*plan, last));
    }
    Ok(())
}

fn row_group(specs: &[ModeSpec], n_q: usize) -> usize {
    specs.iter().map(|s| s.cfg.q_block.min(n_q)).fold(16.min(n_q), gcd).max(1)
}

pub fn main(a: Args, verbose: bool) -> Result<()> {
    let c = &a.common;
    if !(0.0..1.0).contains(&a.from) {
        bail!("--from must be in [0, 1)");
    }
    let specs = c.specs("dhsa,block,streaming,oracle")?;
    if let Some(dir) = &a.captured {
        let results = summarize(&specs, &captured(dir, &specs, c)?);
        return print_results(&a, &results, &specs, &format!("ops captured in {}", dir.display()));
    }
    let text = super::text(a.file.as_deref(), c.split)?;
    let dense_cfg = crate::config::Config { mode: crate::config::Mode::Dense, ..specs[0].cfg.clone() };
    let dense = [ModeSpec { label: "dense".into(), cfg: dense_cfg }];
    let (path, model_id, model) = super::load(c, &dense, verbose)?;
    let wins = super::windows(&model, &text, a.ctx, a.windows)?;
    let cache = Cache::new("recall", c.fresh);
    let mut totals: Vec<Tally> = specs.iter().map(|_| Tally::default()).collect();
    let mut ctx = None;
    let ub = c.ubatch as usize;
    let first = ((a.from * a.ctx as f64) as usize).div_ceil(ub) * ub;
    for (w, toks) in wins.iter().enumerate() {
        let key = |s: &ModeSpec| {
            serde_json::json!({ "model": model_id, "window": super::text_id(&format!("{toks:?}")), "ctx": a.ctx,
                "first": first, "ubatch": ub, "mode": super::config_key(&s.cfg) })
        };
        let mut have: Vec<Option<Tally>> = specs.iter().map(|s| cache.get(&key(s))).collect();
        let todo: Vec<usize> = (0..specs.len()).filter(|&i| have[i].is_none()).collect();
        if !todo.is_empty() {
            eprintln!(
                "window {}/{}: dense prefill of {} tokens; measuring {} mode(s) on the ops of tokens {first}..",
                w + 1,
                wins.len(),
                toks.len(),
                todo.len()
            );
            let ctx = match &mut ctx {
                Some(x) => x,
                None => ctx.insert(super::context(&model, &dense[0].cfg, &c.context_options(a.ctx as u32))?),
            };
            ctx.clear();
            let t0 = std::time::Instant::now();
            let split = first.min(toks.len());
            crate::runner::prefill(ctx, &toks[..split], 0, 0, &mut |_, _| {})?;
            let todo_specs: Vec<ModeSpec> = todo.iter().map(|&i| specs[i].clone()).collect();
            let got = measure(ctx, &toks[split..], split, &todo_specs)?;
            for (i, t) in todo.iter().zip(got) {
                cache.put(&key(&specs[*i]), &t)?;
                have[*i] = Some(t);
            }
            eprintln!("window {}/{} done in {:.0} s", w + 1, wins.len(), t0.elapsed().as_secs_f64());
        }
        for (tot, h) in totals.iter_mut().zip(have) {
            tot.add(&h.ok_or_else(|| anyhow!("missing result"))?);
        }
    }
    let name = path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let about = format!("{name}, context {}, {} window(s), ops from position {first}", a.ctx, a.windows);
    print_results(&a, &summarize(&specs, &totals), &specs, &about)
}

fn summarize(specs: &[ModeSpec], totals: &[Tally]) -> Vec<ModeResult> {
    specs
        .iter()
        .zip(totals)
        .map(|(s, t)| {
            let layers = t.heads.iter().map(|hs| ratio(&hs.iter().fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1))));
            let all = t.heads.iter().flatten().fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1));
            ModeResult {
                mode: s.label.clone(),
                layers: layers.collect(),
                heads: t.heads.iter().map(|hs| hs.iter().map(ratio).collect()).collect(),
                mean: ratio(&all),
                kept_keys: ratio(&t.keys),
                out_err: (!t.out_err.is_empty()).then(|| {
                    let mut e = t.out_err.clone();
                    e.sort_by(f32::total_cmp);
                    let mean = e.iter().map(|&x| x as f64).sum::<f64>() / e.len() as f64;
                    (mean, e[((e.len() as f64 * 0.99) as usize).min(e.len() - 1)] as f64)
                }),
            }
        })
        .collect()
}

/// Decodes `toks` (at positions `pos0..`) with a probe that measures every mode on every op.
fn measure(ctx: &mut crate::llama::Context, toks: &[i32], pos0: usize, specs: &[ModeSpec]) -> Result<Vec<Tally>> {
    struct State {
        tallies: Vec<Tally>,
        selectors: Vec<Selector>,
        error: Option<anyhow::Error>,
        ops: usize,
    }
    let st = Arc::new(Mutex::new(State {
        tallies: specs.iter().map(|_| Tally::default()).collect(),
        selectors: specs.iter().map(|_| Selector::default()).collect(),
        error: None,
        ops: 0,
    }));
    let (st2, specs2) = (st.clone(), specs.to_vec());
    let hook = set_hook(move |p| {
        let mut guard = st2.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        let Some(layer) = p.layer.map(|l| l as usize) else { return };
        if s.error.is_some() {
            return;
        }
        let r = (|| -> Result<()> {
            let mut sels = vec![];
            for (sel, spec) in s.selectors.iter_mut().zip(&specs2) {
                sels.push(p.select(sel, &spec.cfg)?);
            }
            let plans: Vec<Option<&Plan>> = sels.iter().map(|x| x.as_ref().map(|x| &x.plan)).collect();
            let g = row_group(&specs2, p.op().n_q as usize);
            // SAFETY: the probe's op is valid while the hook runs.
            let table = unsafe { MassTable::compute(p.op(), g, p.n_threads)? };
            let last: Vec<Vec<i32>> = (0..p.op().ne3 as usize).map(|i3| p.frontier(i3)).collect();
            measure_op(&table, &plans, &last, layer, &mut s.tallies)
        })();
        s.ops += 1;
        if let Err(e) = r {
            s.error = Some(e);
        }
    })?;
    let n = toks.len();
    crate::runner::prefill(ctx, toks, pos0 as i32, 0, &mut |done, _| {
        let ops = st.lock().unwrap_or_else(|e| e.into_inner()).ops;
        eprintln!("  measured tokens {}..{} ({ops} ops)", pos0, pos0 + done.min(n));
    })?;
    drop(hook);
    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = s.error.take() {
        return Err(e.context("measuring recall"));
    }
    if s.ops == 0 {
        bail!("no attention op reached the plugin (is the context long enough for DHSA_MIN_KEYS?)");
    }
    Ok(std::mem::take(&mut s.tallies))
}

const MASS_MAGIC: &[u8; 8] = b"DHSAMASS";

/// Reads the cached mass table next to a capture (None when missing, stale or unreadable).
fn load_mass(path: &Path, g: usize, op: &crate::kernels::OwnedOp) -> Option<MassTable> {
    let d = std::fs::read(path).ok()?;
    let s = &op.shape;
    let n_rows = s.n_q.div_ceil(g);
    let dims = [g, n_rows, s.n_kv, s.n_head, s.n_head_kv, s.ne3];
    let head = 8 + 8 * dims.len();
    if d.len() < head || &d[..8] != MASS_MAGIC {
        return None;
    }
    let got: Vec<usize> =
        d[8..head].chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize).collect();
    if got != dims || d.len() != head + 4 * s.ne3 * s.n_head * n_rows * s.n_kv {
        return None;
    }
    let raw: Vec<f32> = d[head..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    MassTable::from_raw(g, n_rows, s.n_kv, s.n_head, s.n_head_kv, s.ne3, &raw).ok()
}

fn save_mass(path: &Path, t: &MassTable) -> Result<()> {
    let mut d = MASS_MAGIC.to_vec();
    for x in [t.g, t.n_rows, t.n_kv, t.n_head, t.n_head_kv, t.ne3] {
        d.extend_from_slice(&(x as u64).to_le_bytes());
    }
    d.extend(t.raw().iter().flat_map(|x| x.to_le_bytes()));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, d)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Measures every mode on the ops captured in `dir`.
fn captured(dir: &Path, specs: &[ModeSpec], c: &Common) -> Result<Vec<Tally>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dhsacap"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no .dhsacap files in {}", dir.display());
    let threads = c.threads().max(1) as usize;
    let mut tallies: Vec<Tally> = specs.iter().map(|_| Tally::default()).collect();
    let mut selectors: Vec<Selector> = specs.iter().map(|_| Selector::default()).collect();
    let t0 = std::time::Instant::now();
    for (i, f) in files.iter().enumerate() {
        let mut cap = crate::capture::load(f)?;
        let layer = cap.meta.layer.ok_or_else(|| anyhow!("{} has no layer", f.display()))? as usize;
        let g = row_group(specs, cap.op.shape.n_q);
        let mpath = f.with_extension(format!("mass{g}"));
        let op = cap.op.op();
        let table = match load_mass(&mpath, g, &cap.op) {
            Some(t) => t,
            None => {
                // SAFETY: op addresses cap.op's buffers, which match its shape and outlive the call.
                let t = unsafe { MassTable::compute(&op, g, threads)? };
                save_mass(&mpath, &t)?;
                t
            }
        };
        let mut sels = vec![];
        for (sel, spec) in selectors.iter_mut().zip(specs) {
            sels.push(if crate::engine::dense_layer(&spec.cfg, cap.meta.layer) {
                None
            } else {
                // SAFETY: as above.
                unsafe { sel.select(&op, &spec.cfg, threads)? }
            });
        }
        let plans: Vec<Option<&Plan>> = sels.iter().map(|x| x.as_ref().map(|x| &x.plan)).collect();
        let mut last = vec![];
        for i3 in 0..cap.op.shape.ne3 {
            let mut l = vec![0i32; cap.op.shape.n_q];
            // SAFETY: as above.
            unsafe { kernels::row_frontier(&op, i3, &mut l, threads) };
            last.push(l);
        }
        measure_op(&table, &plans, &last, layer, &mut tallies)?;
        let dense_out = cap.op.dst.clone();
        let s = cap.op.shape.clone();
        let (mut scratch, mut counters) = (kernels::Scratch::default(), kernels::Counters::default());
        for (t, plan) in tallies.iter_mut().zip(&plans) {
            if plan.is_none() {
                t.out_err.extend(std::iter::repeat_n(0.0, s.ne3 * s.n_q * s.n_head));
                continue;
            }
            cap.op.run(*plan, threads, &mut scratch, &mut counters)?;
            for (o, d) in cap.op.dst.chunks_exact(s.dv).zip(dense_out.chunks_exact(s.dv)) {
                let (mut num, mut den) = (0f64, 0f64);
                for (a, b) in o.iter().zip(d) {
                    num += ((a - b) as f64).powi(2);
                    den += (*b as f64).powi(2);
                }
                t.out_err.push((num.sqrt() / den.sqrt().max(1e-30)) as f32);
            }
        }
        cap.op.dst = dense_out;
        if (i + 1) % 30 == 0 || i + 1 == files.len() {
            eprintln!("  {}/{} ops ({:.0} s)", i + 1, files.len(), t0.elapsed().as_secs_f64());
        }
    }
    Ok(tallies)
}

fn print_results(a: &Args, results: &[ModeResult], specs: &[ModeSpec], about: &str) -> Result<()> {
    let c = &a.common;
    let oracle = specs.iter().position(|s| s.cfg.mode == crate::config::Mode::Oracle);
    let dhsa = specs.iter().position(|s| s.cfg.mode == crate::config::Mode::Dhsa);
    let gap = oracle.zip(dhsa).filter(|(o, d)| o != d);
    let n_layer = results.iter().map(|r| r.layers.len()).max().unwrap_or(0);
    let text = if a.summary {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                let worst = r.layers.iter().copied().filter(|v| v.is_finite()).fold(1.0, f64::min);
                let (em, e99) =
                    r.out_err.map_or(("-".into(), "-".into()), |(m, p)| (format!("{m:.4}"), format!("{p:.4}")));
                vec![
                    r.mode.clone(),
                    format!("{:.4}", r.mean),
                    format!("{worst:.4}"),
                    format!("{:.1}%", 100.0 * r.kept_keys),
                    em,
                    e99,
                ]
            })
            .collect();
        super::table(&["mode", "recall", "worst layer", "keys kept", "output error", "output error p99"], &rows)
    } else {
        let mut header: Vec<String> = vec!["layer".into()];
        header.extend(results.iter().map(|r| r.mode.clone()));
        if gap.is_some() {
            header.push("oracle - dhsa".into());
        }
        let mut rows = vec![];
        for l in 0..=n_layer + 1 {
            let pick = |r: &ModeResult| match l {
                l if l < n_layer => r.layers.get(l).copied().unwrap_or(f64::NAN),
                l if l == n_layer => r.mean,
                _ => r.kept_keys,
            };
            let mut row = vec![match l {
                l if l < n_layer => l.to_string(),
                l if l == n_layer => "all".into(),
                _ => "keys kept".into(),
            }];
            row.extend(results.iter().map(|r| format!("{:.4}", pick(r))));
            if let Some((o, d)) = gap {
                row.push(if l <= n_layer {
                    format!("{:+.4}", pick(&results[o]) - pick(&results[d]))
                } else {
                    "".into()
                });
            }
            rows.push(row);
        }
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        super::table(&h, &rows)
    };
    super::report(
        c.json,
        &format!("attention recall (share of the exact dense attention mass on the kept keys): {about}\n\n{text}"),
    );
    if c.json {
        println!(
            "{}",
            serde_json::json!({ "about": about, "split": c.split, "results": results,
                "configs": specs.iter().map(|s| serde_json::json!({"mode": s.label, "config": s.cfg})).collect::<Vec<_>>() })
        );
    }
    if let Some(p) = &a.plot {
        let series: Vec<crate::plot::Series> = results
            .iter()
            .map(|r| crate::plot::Series {
                name: r.mode.clone(),
                points: r.layers.iter().enumerate().map(|(l, &v)| (l as f64, v)).collect(),
            })
            .collect();
        crate::plot::line_chart(
            p,
            "attention recall per layer",
            "layer",
            "recall (share of dense mass kept)",
            &series,
        )?;
        let lo = results
            .iter()
            .flat_map(|r| r.heads.iter().flatten())
            .copied()
            .filter(|v| v.is_finite())
            .fold(1.0, f64::min);
        let lo = (lo * 20.0).floor() / 20.0;
        let n_head = results[0].heads.first().map_or(0, Vec::len);
        let panels: Vec<crate::plot::Panel> = results
            .iter()
            .map(|r| crate::plot::Panel {
                title: r.mode.clone(),
                values: r.heads.iter().map(|hs| hs.iter().map(|v| (v - lo) / (1.0 - lo).max(1e-9)).collect()).collect(),
            })
            .collect();
        let heads_path = p.with_file_name(format!(
            "{}-heads.png",
            p.file_stem().map_or("recall".into(), |s| s.to_string_lossy().into_owned())
        ));
        crate::plot::heatmaps(
            &heads_path,
            &format!("recall per layer (rows) and head (columns): red {lo:.2} .. green 1.00"),
            &(0..n_layer).map(|l| l.to_string()).collect::<Vec<_>>(),
            &(0..n_head).map(|h| h.to_string()).collect::<Vec<_>>(),
            &panels,
        )?;
        eprintln!("wrote {} and {}", p.display(), heads_path.display());
    }
    Ok(())
}
