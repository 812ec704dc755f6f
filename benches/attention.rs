//! CPU attention op: ggml's own flash attention against dhsa (exact dense kernel, and the sparse
//! modes), on the same tensors, in one process, with the same thread count.
//!
//! n_q = 512 queries at the end of an n_kv-key cache (causal), head shapes 9/3/64 (SmolLM2-135M)
//! and 32/8/128 (Llama-3.1-8B), f16 K/V. `scripts/bench-table.py` turns criterion's estimates into
//! the ratio tables of benches/LOG.md.
//!
//!     cargo bench --bench attention                  # everything (several minutes)
//!     cargo bench --bench attention -- 'dense/9x3'   # a subset

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ggml_dhsa::config::{Config, Mode};
use ggml_dhsa::engine::CpuEngine;
use ggml_dhsa::ggml_fa::GgmlFa;
use ggml_dhsa::kernels::Shape;
use ggml_dhsa::opgen::{MaskKind, random_op};
use ggml_dhsa::rng::Rng;
use std::time::Duration;

const SHAPES: [(usize, usize, usize); 2] = [(9, 3, 64), (32, 8, 128)];

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn bench_op(c: &mut Criterion, group: &str, kvs: &[usize], modes: &[Mode]) {
    ggml_dhsa::llama::init(false);
    let n_threads = threads();
    for (nh, nhk, d) in SHAPES {
        let mut g = c.benchmark_group(format!("{group}/{nh}x{nhk}x{d}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        for &n_kv in kvs {
            let op = random_op(Shape::new(nh, nhk, d, 512, n_kv), MaskKind::Causal, 0, &mut Rng::new(7));
            let mut fa = GgmlFa::new("CPU", &op, n_threads).expect("ggml CPU FA");
            let o = fa.op().expect("dhsa takes this op");
            g.bench_function(BenchmarkId::new("ggml", n_kv), |b| b.iter(|| fa.compute().unwrap()));
            for &mode in modes {
                let cfg = Config { mode, budget: 2048, ..Config::default() };
                let mut eng = CpuEngine::default();
                // SAFETY: o points into fa's allocated CPU tensors, alive for the whole loop.
                g.bench_function(BenchmarkId::new(mode.name(), n_kv), |b| {
                    b.iter(|| unsafe { eng.compute(&o, &cfg, n_threads).unwrap() })
                });
            }
        }
        g.finish();
    }
}

fn dense(c: &mut Criterion) {
    bench_op(c, "dense", &[4096, 8192, 16384, 32768], &[Mode::Dense]);
}

fn sparse(c: &mut Criterion) {
    bench_op(c, "sparse", &[8192, 32768], &[Mode::Dhsa, Mode::Block, Mode::Streaming]);
}

/// Selection alone, as a share of the sparse op (the op's own stats split the two phases).
fn selection_share(c: &mut Criterion) {
    ggml_dhsa::llama::init(false);
    let n_threads = threads();
    let mut g = c.benchmark_group("select-share");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (nh, nhk, d) in SHAPES {
        for n_kv in [8192, 32768] {
            let op = random_op(Shape::new(nh, nhk, d, 512, n_kv), MaskKind::Causal, 0, &mut Rng::new(7));
            let fa = GgmlFa::new("CPU", &op, n_threads).expect("ggml CPU FA");
            let o = fa.op().unwrap();
            let cfg = Config { mode: Mode::Dhsa, budget: 2048, ..Config::default() };
            let mut eng = CpuEngine::default();
            let (mut sel, mut all) = (0.0, 0.0);
            g.bench_function(BenchmarkId::new(format!("{nh}x{nhk}x{d}"), n_kv), |b| {
                b.iter(|| {
                    // SAFETY: as above.
                    let s = unsafe { eng.compute(&o, &cfg, n_threads).unwrap() };
                    sel += s.select_ms;
                    all += s.select_ms + s.attn_ms;
                })
            });
            println!("select-share {nh}x{nhk}x{d} n_kv {n_kv}: selection {:.1}% of the sparse op", 100.0 * sel / all);
        }
    }
    g.finish();
}

criterion_group!(benches, dense, sparse, selection_share);
criterion_main!(benches);
