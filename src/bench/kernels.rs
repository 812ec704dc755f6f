//! `dhsa bench kernels`: one FA op per key count, timed on each backend side by side on the very
//! same tensors (ggml_fa::GgmlFa lays them out as llama.cpp does): ggml's own flash attention of
//! that backend, dhsa's exact dense path, and dhsa's sparse modes; on CUDA also the tree's
//! token-sparse FA (n_kv_max with a mask whose finite entries are the DHSA-selected keys).
//!
//! Times are medians of `--reps` runs after one warm-up, each run synchronous (host clock around a
//! call that waits for the device); dhsa's CUDA path also reports its selection and attention
//! stages from device events. The op: `--heads` query heads over `--heads-kv` kv heads, head size
//! `--head-dim`, `--nq` queries at the end of `--kv` causal keys (prefill of one ubatch at depth
//! kv - nq), keys in runs around shared directions (opgen::structured_op).

use crate::config::{Config, Mode};
use crate::engine::CpuEngine;
use crate::ggml_fa::GgmlFa;
use crate::kernels::{KvType, OwnedOp, Shape};
use crate::rng::Rng;
use crate::session::DhsaFlags;
use anyhow::{Result, anyhow, bail};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// backends to time: cpu, cuda
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    pub backend: Vec<String>,
    /// key counts (n_kv) of the ops
    #[arg(long, value_delimiter = ',', default_value = "8192,32768")]
    pub kv: Vec<usize>,
    /// dhsa modes to time beside ggml's FA: dense, dhsa, block, streaming
    #[arg(long, value_delimiter = ',', default_value = "dense,dhsa")]
    pub modes: Vec<String>,
    /// queries of the op (one ubatch)
    #[arg(long, default_value_t = 2048)]
    pub nq: usize,
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    #[arg(long = "heads-kv", default_value_t = 8)]
    pub heads_kv: usize,
    #[arg(long = "head-dim", default_value_t = 128)]
    pub head_dim: usize,
    /// K/V element type: f16 or bf16
    #[arg(long = "kv-type", default_value = "f16")]
    pub kv_type: String,
    /// timed runs per measurement (median); CPU runs past 16K keys use at most 2
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// CPU threads (default: all)
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// print the results as JSON
    #[arg(long)]
    pub json: bool,
    /// write a PNG chart of op time against n_kv
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub dhsa: DhsaFlags,
}

/// One timed implementation on one op.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub backend: String,
    pub n_kv: usize,
    /// ggml-fa, ggml-token-sparse, dhsa-dense, dhsa, block, streaming
    pub implementation: String,
    pub ms: f64,
    /// dhsa CUDA: device time of the selection and of the attention (events), else 0
    pub select_ms: f64,
    pub attn_ms: f64,
    /// (query, head, key) triples attended, and those visible
    pub keys_attended: u64,
    pub keys_visible: u64,
    /// 4 * d flops per attended triple over the time, in TFLOP/s
    pub tflops: f64,
    /// ggml-fa's time over this one's (same backend and n_kv)
    pub speedup_vs_ggml: f64,
    /// ‖dst − ggml's dst‖ / ‖ggml's dst‖ (dense paths: agreement; sparse: approximation error)
    pub rel_l2_vs_ggml: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up: module load, workspaces, caches
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

fn rel_l2(x: &[f32], r: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(r) {
        num += (a as f64 - b as f64).powi(2);
        den += (b as f64).powi(2);
    }
    if x.iter().any(|v| v.is_nan()) { f64::INFINITY } else { (num / den.max(1e-30)).sqrt() }
}

fn mode_cfg(base: &Config, mode: &str) -> Result<Config> {
    let mut c = base.clone();
    c.mode = mode.parse().map_err(|e| anyhow!("--modes {mode}: {e}"))?;
    Ok(c)
}

fn impl_name(mode: Mode) -> String {
    if mode == Mode::Dense { "dhsa-dense".into() } else { mode.name().into() }
}

pub fn main(a: Args, verbose: bool) -> Result<()> {
    let cfg = a.dhsa.config()?;
    let kv_type = match a.kv_type.as_str() {
        "f16" => KvType::F16,
        "bf16" => KvType::Bf16,
        t => bail!("--kv-type {t}: accepted values are f16, bf16"),
    };
    if a.heads == 0 || a.heads_kv == 0 || !a.heads.is_multiple_of(a.heads_kv) {
        bail!("--heads must be a positive multiple of --heads-kv");
    }
    for b in &a.backend {
        if b != "cpu" && b != "cuda" {
            bail!("--backend {b}: accepted values are cpu, cuda");
        }
        if b == "cuda" && !cfg!(feature = "cuda") {
            bail!("--backend cuda: this dhsa was built without the `cuda` feature");
        }
    }
    let modes: Vec<Config> = a.modes.iter().map(|m| mode_cfg(&cfg, m)).collect::<Result<_>>()?;
    if let Some(&k) = a.kv.iter().find(|&&k| k < a.nq) {
        bail!("--kv {k} is smaller than --nq {}: the queries are the last keys", a.nq);
    }
    crate::session::start(&cfg, verbose)?;
    let threads = a.threads.unwrap_or_else(|| crate::llama::default_threads() as usize);
    let mut rows: Vec<Row> = vec![];
    let mut rng = Rng::new(0x5eed);
    for &n_kv in &a.kv {
        let mut s = Shape::new(a.heads, a.heads_kv, a.head_dim, a.nq, n_kv);
        s.k_type = kv_type;
        s.v_type = kv_type;
        eprintln!("n_kv {n_kv}: making the op ...");
        let op = crate::opgen::structured_op(s, 0, &mut rng);
        for b in &a.backend {
            let before = rows.len();
            match b.as_str() {
                "cpu" => bench_cpu(&a, &op, &modes, threads, &mut rows)?,
                #[cfg(feature = "cuda")]
                "cuda" => bench_cuda(&a, &op, &modes, &cfg, &mut rows)?,
                _ => unreachable!("backends are checked above"),
            }
            for r in &rows[before..] {
                eprintln!("  {:<5} {:<18} {:>10.3} ms  {:>6.1}x", r.backend, r.implementation, r.ms, r.speedup_vs_ggml);
            }
        }
    }
    // the numbers first: a plot that cannot be drawn must not lose them
    let plotted = a.plot.as_ref().map(|p| plot(p, &rows, &a));
    if a.json {
        let out = serde_json::json!({
            "bench": "kernels",
            "shape": {"n_q": a.nq, "n_head": a.heads, "n_head_kv": a.heads_kv, "head_dim": a.head_dim,
                      "kv_type": a.kv_type},
            "config": cfg,
            "devices": crate::ggml::devices(),
            "ggml": crate::ggml::ggml_version(),
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&rows);
    }
    plotted.transpose()?;
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<5} {:>7} {:<18} {:>10} {:>9} {:>9} {:>7} {:>8} {:>9} {:>9}",
        "back", "n_kv", "implementation", "ms", "sel ms", "attn ms", "kept", "TFLOP/s", "vs ggml", "relL2"
    );
    for r in rows {
        let kept = if r.keys_visible > 0 { r.keys_attended as f64 / r.keys_visible as f64 } else { 1.0 };
        println!(
            "{:<5} {:>7} {:<18} {:>10.3} {:>9.3} {:>9.3} {:>7.4} {:>8.3} {:>8.2}x {:>9.2e}",
            r.backend,
            r.n_kv,
            r.implementation,
            r.ms,
            r.select_ms,
            r.attn_ms,
            kept,
            r.tflops,
            r.speedup_vs_ggml,
            r.rel_l2_vs_ggml
        );
    }
}

fn plot(path: &std::path::Path, rows: &[Row], a: &Args) -> Result<()> {
    let mut series: Vec<crate::plot::Series> = vec![];
    for r in rows {
        let name = format!("{} {}", r.backend, r.implementation);
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((r.n_kv as f64 / 1024.0, r.ms)),
            None => series.push(crate::plot::Series { name, points: vec![(r.n_kv as f64 / 1024.0, r.ms)] }),
        }
    }
    let title =
        format!("FA op time: {} q / {} kv heads, d={}, n_q={}, {}", a.heads, a.heads_kv, a.head_dim, a.nq, a.kv_type);
    crate::plot::line_chart(path, &title, "keys (K)", "ms per op", &series)
}

fn finish(rows: &mut [Row], start: usize, d: usize) {
    let ggml = rows[start..].iter().find(|r| r.implementation == "ggml-fa").map(|r| r.ms);
    let visible = rows[start..].iter().find(|r| r.implementation == "dhsa-dense").map(|r| r.keys_attended);
    for r in &mut rows[start..] {
        if r.keys_visible == 0 {
            r.keys_visible = visible.unwrap_or(0);
        }
        if r.keys_attended == 0 && (r.implementation == "ggml-fa") {
            r.keys_attended = r.keys_visible;
        }
        r.tflops = r.keys_attended as f64 * 4.0 * d as f64 / (r.ms * 1e-3) / 1e12;
        r.speedup_vs_ggml = ggml.map_or(0.0, |g| g / r.ms);
    }
}

fn bench_cpu(a: &Args, op: &OwnedOp, modes: &[Config], threads: usize, rows: &mut Vec<Row>) -> Result<()> {
    let start = rows.len();
    let reps = if op.shape.n_kv > 16384 { a.reps.min(2) } else { a.reps };
    let mut fa = GgmlFa::new("CPU", op, threads)?;
    let ms = time(reps, || fa.compute())?;
    let reference = fa.dst();
    rows.push(row("cpu", op, "ggml-fa", ms));
    let mut engine = CpuEngine::default();
    for cfg in modes {
        let o = fa.op()?;
        let mut last = crate::stats::Stats::default();
        let ms = time(reps, || {
            // SAFETY: o points into fa's host buffers, alive for the call.
            last = unsafe { engine.compute(&o, cfg, threads)? };
            Ok(())
        })?;
        let mut r = row("cpu", op, &impl_name(cfg.mode), ms);
        r.keys_attended = last.keys_attended;
        r.keys_visible = last.keys_visible;
        r.rel_l2_vs_ggml = rel_l2(&fa.dst(), &reference);
        rows.push(r);
    }
    finish(rows, start, op.shape.dk);
    Ok(())
}

fn row(backend: &str, op: &OwnedOp, implementation: &str, ms: f64) -> Row {
    Row {
        backend: backend.into(),
        n_kv: op.shape.n_kv,
        implementation: implementation.into(),
        ms,
        select_ms: 0.0,
        attn_ms: 0.0,
        keys_attended: 0,
        keys_visible: 0,
        tflops: 0.0,
        speedup_vs_ggml: 0.0,
        rel_l2_vs_ggml: 0.0,
    }
}

#[cfg(feature = "cuda")]
fn bench_cuda(a: &Args, op: &OwnedOp, modes: &[Config], cfg: &Config, rows: &mut Vec<Row>) -> Result<()> {
    use crate::cuda::{CudaEngine, Flags};
    let start = rows.len();
    let mut fa = GgmlFa::new("CUDA0", op, 1)?;
    let ms = time(a.reps, || fa.compute())?;
    let reference = fa.dst();
    rows.push(row("cuda", op, "ggml-fa", ms));
    let mut engine = CudaEngine::new(0)?;
    let o = fa.op()?;
    for mcfg in modes {
        if let Some(why) = crate::cuda::unsupported(&o, mcfg) {
            bail!("the CUDA path declines this op: {why}");
        }
        // one counted run for the visible keys, then timed runs
        // SAFETY: o points into fa's CUDA buffers, alive for these calls.
        let counted = unsafe {
            engine.compute(&o, mcfg, Flags { sync_device: true, count_visible: true, ..Default::default() })?
        };
        let (mut sel, mut attn) = (vec![], vec![]);
        let ms = time(a.reps, || {
            // SAFETY: as above.
            let st = unsafe {
                engine.compute(&o, mcfg, Flags { sync_device: true, count_visible: false, ..Default::default() })?
            };
            sel.push(st.select_ms);
            attn.push(st.attn_ms);
            Ok(())
        })?;
        let mut r = row("cuda", op, &impl_name(mcfg.mode), ms);
        r.select_ms = median(sel);
        r.attn_ms = median(attn);
        r.keys_attended = counted.keys_attended;
        r.keys_visible = counted.keys_visible;
        r.rel_l2_vs_ggml = rel_l2(&fa.dst(), &reference);
        rows.push(r);
    }
    // the tree's token-sparse FA: a mask whose finite entries are one shared DHSA selection per block
    let shared = Config { mode: Mode::Dhsa, shared_heads: true, ..cfg.clone() };
    if op.shape.n_kv > shared.budget && crate::cuda::unsupported(&o, &shared).is_none() {
        // SAFETY: as above.
        unsafe {
            engine.compute(&o, &shared, Flags { sync_device: true, count_visible: false, ..Default::default() })?
        };
        let n_blocks = op.shape.n_q.div_ceil(shared.q_block.min(op.shape.n_q));
        let keys = engine
            .last_selection(n_blocks * op.shape.ne3, shared.budget)?
            .ok_or_else(|| anyhow!("no shared selection was made"))?;
        let mut sparse = op.clone();
        let (n_q, n_kv) = (op.shape.n_q, op.shape.n_kv);
        let q_block = shared.q_block.min(n_q);
        let neg = crate::kernels::f32_to_f16(f32::NEG_INFINITY);
        let (mut max_count, mut attended) = (0, 0u64);
        for iq in 0..n_q {
            let row = &mut sparse.mask[iq * n_kv..(iq + 1) * n_kv];
            let orig = &op.mask[iq * n_kv..(iq + 1) * n_kv];
            row.fill(neg);
            let ks = &keys[iq / q_block];
            for &j in ks {
                row[j as usize] = orig[j as usize];
                attended += (orig[j as usize] != neg) as u64;
            }
            max_count = max_count.max(ks.len());
        }
        let mut tfa = GgmlFa::new("CUDA0", &sparse, 1)?;
        // SAFETY: the node is this GgmlFa's FA tensor; n_kv_max bounds every row's finite entries.
        unsafe { ggml_sys::ggml_flash_attn_ext_set_n_kv_max(tfa.node(), max_count as i32) };
        let ms = time(a.reps, || tfa.compute())?;
        let mut r = row("cuda", op, "ggml-token-sparse", ms);
        r.keys_attended = attended * op.shape.n_head as u64;
        r.rel_l2_vs_ggml = rel_l2(&tfa.dst(), &reference);
        rows.push(r);
    }
    finish(rows, start, op.shape.dk);
    Ok(())
}
