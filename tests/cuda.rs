//! The CUDA kernels on a GPU (built only with `--features cuda`; run by scripts/gpu-run.sh on the
//! device machine). They need a CUDA device and ggml's CUDA backend in the backend folder
//! (DHSA_BACKEND_DIR): without them they fail, they do not skip.
//!
//! Tolerances (the worst of all ops of a test; metrics from reference.rs):
//! - dense and sparse attention against the float64 reference: ‖x − ref‖ / ‖ref‖ at most 2e-3 for
//!   f16 K/V and 1.5e-2 for bf16, and no element off by more than 1.5e-2 (f16) / 8e-2 (bf16) in
//!   |x − ref| / (|ref| + 1): Q and the probabilities are rounded to the K/V type for the tensor
//!   cores (as ggml-cuda does), accumulation is f32.
//! - selection: the same chunk starts as the CPU, or a first difference at a near tie of boundary
//!   scores (|Δ| ≤ 1e-4: the CPU sums its windows as running sums, the GPU directly); with the same
//!   chunks, exactly the same keys for every (block, group) (chunk scores are computed in the CPU's
//!   summation order, so ties would have to be exact).

#![cfg(feature = "cuda")]

use ggml_dhsa::config::{Chunking, Config, HeadScore, Mode};
use ggml_dhsa::cuda::{CudaEngine, Flags};
use ggml_dhsa::ggml_fa::GgmlFa;
use ggml_dhsa::kernels::{Counters, KvType, OwnedOp, Scratch, Shape};
use ggml_dhsa::opgen::{random_op, random_shape, structured_op};
use ggml_dhsa::reference;
use ggml_dhsa::rng::Rng;
use ggml_dhsa::select::Selector;
use std::collections::HashSet;

fn start() -> CudaEngine {
    ggml_dhsa::llama::init(false);
    assert!(
        ggml_dhsa::ggml::device_by_name("CUDA0").is_some(),
        "no ggml device CUDA0: put libggml-cuda.so in the backend folder (DHSA_BACKEND_DIR)"
    );
    assert!(ggml_dhsa::cuda::device_count() > 0, "no CUDA device");
    CudaEngine::new(0).expect("CUDA context")
}

fn rel_l2(x: &[f32], r: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(r) {
        if a.is_nan() {
            return f64::INFINITY;
        }
        num += (a as f64 - b).powi(2);
        den += b * b;
    }
    (num / den.max(1e-30)).sqrt()
}

fn tolerances(t: KvType) -> (f64, f64) {
    if t == KvType::Bf16 { (1.5e-2, 8e-2) } else { (2e-3, 1.5e-2) }
}

/// A random op the CUDA kernels take: f16/bf16, DK = DV in {64, 128}, the rest as random_shape.
fn random_cuda_op(rng: &mut Rng) -> OwnedOp {
    let (mut s, kind, pad) = random_shape(rng);
    let d = *rng.pick(&[64, 128]);
    s.dk = d;
    s.dv = d;
    s.scale = 1.0 / (d as f32).sqrt();
    let t = *rng.pick(&[KvType::F16, KvType::Bf16]);
    s.k_type = t;
    s.v_type = t;
    s.n_kv = *rng.pick(&[17, 64, 113, 300, 1000]);
    let pad = pad.min(s.n_kv / 2);
    random_op(s, kind, pad, rng)
}

/// Runs dhsa's CUDA path on `op` (uploaded to CUDA0 as llama.cpp lays it out); dst back on the host.
fn run_cuda(engine: &mut CudaEngine, op: &OwnedOp, cfg: &Config) -> (Vec<f32>, ggml_dhsa::stats::Stats) {
    let mut fa = GgmlFa::new("CUDA0", op, 1).expect("ggml CUDA op");
    fa.poison_dst();
    let o = fa.op().expect("op");
    if let Some(why) = ggml_dhsa::cuda::unsupported(&o, cfg) {
        panic!("CUDA declines {:?}: {why}", op.shape);
    }
    // SAFETY: o points into fa's CUDA buffers, alive for the call.
    let st = unsafe { engine.compute(&o, cfg, Flags { sync_device: true, count_visible: true, ..Default::default() }) }
        .expect("compute");
    (fa.dst(), st)
}

#[test]
fn dense_cuda_matches_the_f64_reference_and_the_cpu_kernel() {
    let mut engine = start();
    let mut rng = Rng::fresh();
    let cfg = Config { mode: Mode::Dense, ..Config::default() };
    let mut scratch = Scratch::default();
    let (mut worst_l2, mut worst_max) = (0f64, 0f64);
    for case in 0..120 {
        let mut op = random_cuda_op(&mut rng);
        let (tl2, tmax) = tolerances(op.shape.k_type);
        let want = reference::attention(&op, None);
        let (got, st) = run_cuda(&mut engine, &op, &cfg);
        let (l2, mx) = (rel_l2(&got, &want), reference::max_rel_err(&got, &want, 1.0));
        assert!(l2 <= tl2 && mx <= tmax, "case {case}: CUDA dense error {l2:e} / {mx:e} for {:?}", op.shape);
        assert_eq!(st.keys_attended, st.keys_visible, "dense attends every visible key");
        // the CPU exact kernel on the same inputs agrees with it within the same bounds
        op.run(None, 2, &mut scratch, &mut Counters::default()).unwrap();
        let cpu64: Vec<f64> = op.dst.iter().map(|&x| x as f64).collect();
        let (l2c, mxc) = (rel_l2(&got, &cpu64), reference::max_rel_err(&got, &cpu64, 1.0));
        assert!(l2c <= tl2 && mxc <= tmax, "case {case}: CUDA vs CPU {l2c:e} / {mxc:e} for {:?}", op.shape);
        worst_l2 = worst_l2.max(l2);
        worst_max = worst_max.max(mx);
    }
    eprintln!("CUDA dense vs f64 reference, 120 random ops: worst rel-L2 {worst_l2:.3e}, worst elem {worst_max:.3e}");
}

/// The GPU scores dhsa chunks with mean queries (auto = mean there): the CPU reference must too.
fn sparse_cfg(mode: Mode, chunking: Chunking, shared: bool) -> Config {
    Config {
        mode,
        chunking,
        shared_heads: shared,
        budget: 512,
        q_block: 64,
        sink: 16,
        window: 64,
        head_score: HeadScore::Mean,
        ..Config::default()
    }
}

/// The CPU's key list of every (sequence, block, group), from its plan.
fn cpu_keys(op: &mut OwnedOp, cfg: &Config, sel: &mut Selector) -> Option<Vec<Vec<i32>>> {
    let o = op.op();
    // SAFETY: o points into op's buffers, alive for the call.
    let s = unsafe { sel.select(&o, cfg, 2) }.unwrap()?;
    let p = &s.plan;
    let mut out = vec![];
    for i3 in 0..op.shape.ne3 {
        for b in 0..p.n_blocks {
            for g in 0..p.n_sel_groups {
                out.push(p.spans_of(i3, b, g).iter().flat_map(|sp| sp.begin..sp.end).collect());
            }
        }
    }
    Some(out)
}

/// Whether the first difference between two chunk-start lists is a near tie of boundary scores.
fn first_difference_is_a_tie(cpu: &[i32], gpu: &[i32], bscore: &[f32]) -> Result<(), String> {
    let i = cpu.iter().zip(gpu).position(|(a, b)| a != b).unwrap_or(cpu.len().min(gpu.len()));
    if i >= cpu.len() || i >= gpu.len() {
        return Err(format!("chunk lists differ in length only ({} vs {})", cpu.len(), gpu.len()));
    }
    let (a, b) = (cpu[i] as usize, gpu[i] as usize);
    let (sa, sb) = (bscore.get(a).copied().unwrap_or(f32::NAN), bscore.get(b).copied().unwrap_or(f32::NAN));
    if (sa - sb).abs() <= 1e-4 {
        Ok(())
    } else {
        Err(format!("start {i}: CPU {a} (score {sa}) vs GPU {b} (score {sb})"))
    }
}

#[test]
fn cuda_selection_keeps_the_cpu_keys_and_sparse_attention_matches_the_reference() {
    let mut engine = start();
    let mut rng = Rng::fresh();
    let mut sel = Selector::default();
    let (mut same_chunks, mut tie_chunks, mut problems) = (0, 0, 0);
    let mut worst_l2 = 0f64;
    let cases = [
        (Mode::Dhsa, Chunking::Dynamic, false),
        (Mode::Dhsa, Chunking::Dynamic, true),
        (Mode::Dhsa, Chunking::Fixed, false),
        (Mode::Block, Chunking::Dynamic, false),
        (Mode::Streaming, Chunking::Dynamic, false),
    ];
    for round in 0..3 {
        for &(mode, chunking, shared) in &cases {
            let cfg = sparse_cfg(mode, chunking, shared);
            let t = if round % 2 == 0 { KvType::F16 } else { KvType::Bf16 };
            let n_kv = *rng.pick(&[2000, 3100]);
            let (nh, nhk, d) = *rng.pick(&[(8, 2, 64), (12, 4, 64), (16, 4, 128)]);
            let mut s = Shape::new(nh, nhk, d, 192 + 64 * rng.below(2), n_kv);
            s.k_type = t;
            s.v_type = t;
            let pad = rng.below(40);
            let mut op = if round < 2 {
                structured_op(s, pad, &mut rng)
            } else {
                random_op(s, ggml_dhsa::opgen::MaskKind::Causal, pad, &mut rng)
            };
            let want = cpu_keys(&mut op, &cfg, &mut sel).expect("a sparse op");
            let (got_dst, st) = run_cuda(&mut engine, &op, &cfg);
            assert!(st.sparse_ops == 1, "{mode} {chunking:?}: the CUDA path made no selection");
            let got = engine.last_selection(want.len(), cfg.budget).unwrap().expect("a selection");
            assert_eq!(got.len(), want.len());
            let dynamic = mode == Mode::Dhsa && chunking == Chunking::Dynamic;
            let chunks_equal = if dynamic {
                let gpu_starts = engine.last_chunks(n_kv + 2).unwrap();
                let cpu_starts = sel.chunk_starts();
                if gpu_starts == cpu_starts {
                    true
                } else {
                    first_difference_is_a_tie(cpu_starts, &gpu_starts, sel.boundary_scores())
                        .unwrap_or_else(|e| panic!("{mode} {chunking:?}: chunks differ beyond a tie: {e}"));
                    tie_chunks += 1;
                    false
                }
            } else {
                true
            };
            if chunks_equal {
                same_chunks += 1;
                for (p, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, w, "{mode} {chunking:?} shared {shared}: keys of problem {p} differ");
                }
            }
            problems += want.len();
            // the sparse kernel over the GPU's own selection against the f64 reference on those keys
            let n_blocks = op.shape.n_q.div_ceil(cfg.q_block);
            let n_sel = if cfg.shared_heads { 1 } else { nhk };
            let g = nh / nhk;
            let sets: Vec<HashSet<i32>> = got.iter().map(|v| v.iter().copied().collect()).collect();
            let keep = |i3: usize, h: usize, iq: usize, j: usize| {
                let p = (i3 * n_blocks + iq / cfg.q_block) * n_sel + if n_sel == 1 { 0 } else { h / g };
                sets[p].contains(&(j as i32))
            };
            let want_dst = reference::attention(&op, Some(&keep));
            let (tl2, tmax) = tolerances(t);
            let (l2, mx) = (rel_l2(&got_dst, &want_dst), reference::max_rel_err(&got_dst, &want_dst, 1.0));
            assert!(l2 <= tl2 && mx <= tmax, "{mode} {chunking:?}: sparse error {l2:e} / {mx:e}");
            assert!(st.keys_attended < st.keys_visible, "a sparse op attends fewer keys than it sees");
            worst_l2 = worst_l2.max(l2);
        }
    }
    eprintln!(
        "selection: {same_chunks} ops with the CPU's chunks and keys ({problems} block/group lists), \
         {tie_chunks} with a first chunk difference at a near tie; sparse attention worst rel-L2 {worst_l2:.3e}"
    );
    assert!(same_chunks >= 12, "most ops must reproduce the CPU's chunks exactly");
}
