//! Soak and concurrency through the in-process plugin on SmolLM2-135M:
//! - many consecutive long prefills in one process (sparse mode): identical logits for identical
//!   inputs every time, and resident memory that stops growing (< 5% after the warm-up run);
//! - two contexts used from two threads at once give exactly the logits of running them one
//!   after the other.
//!
//! DHSA_SOAK_RUNS sets the number of prefills (default 12 in the test suite; docs/reliability.md
//! records a 200-run soak).

use ggml_dhsa::config::{Config, Mode};
use ggml_dhsa::llama::{Context, ContextOptions, Model, ModelOptions};
use std::sync::Mutex;

mod common;

static LOCK: Mutex<()> = Mutex::new(());

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4
}

fn setup() -> (Model, Vec<i32>) {
    let cfg = Config { mode: Mode::Dhsa, budget: 256, q_block: 64, window: 64, sink: 16, ..Config::default() };
    ggml_dhsa::session::start(&cfg, false).unwrap();
    let model = Model::load(&common::smollm2(), &ModelOptions::default()).unwrap();
    let text = ggml_dhsa::text::natural_text().unwrap();
    let prompt = ggml_dhsa::text::filler(ggml_dhsa::text::Haystack::Natural, &text, 300_000, 6000);
    let toks = model.vocab().tokenize(&prompt, true).unwrap();
    (model, toks)
}

/// Prefills `toks` in a fresh context and returns the last token's logits.
fn prefill(model: &Model, toks: &[i32], threads: i32) -> Vec<f32> {
    let o = ContextOptions { n_ctx: 2048, n_ubatch: 256, n_threads: threads, ..Default::default() };
    let mut ctx = Context::new(model, &o).unwrap();
    ggml_dhsa::runner::prefill(&mut ctx, toks, 0, 0, &mut |_, _| {}).unwrap();
    ctx.logits(-1).to_vec()
}

#[test]
fn repeated_prefills_are_identical_and_do_not_grow_memory() {
    let _g = LOCK.lock().unwrap();
    let runs: usize = std::env::var("DHSA_SOAK_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let (model, toks) = setup();
    assert!(toks.len() > 1000, "a long prompt: {} tokens", toks.len());
    ggml_dhsa::stats::reset_total();
    let first = prefill(&model, &toks, 2);
    let warm = rss_kib();
    for i in 1..runs {
        let l = prefill(&model, &toks, 2);
        assert!(l == first, "run {i} gave different logits");
    }
    let end = rss_kib();
    let s = ggml_dhsa::stats::total();
    assert!(s.sparse_ops > 0, "the soak must go through the sparse path: {s:?}");
    let growth = end as f64 / warm as f64 - 1.0;
    eprintln!(
        "{runs} prefills of {} tokens: RSS {warm} KiB after the first, {end} KiB after the last ({:+.2}%); {s:?}",
        toks.len(),
        100.0 * growth
    );
    assert!(growth < 0.05, "resident memory grew {:.1}%", 100.0 * growth);
}

#[test]
fn two_contexts_in_two_threads_match_running_them_in_turn() {
    let _g = LOCK.lock().unwrap();
    let (model, toks) = setup();
    let (a, b) = (&toks[..1200], &toks[200..1400]);
    let seq = (prefill(&model, a, 1), prefill(&model, b, 1));
    let par = std::thread::scope(|s| {
        let ta = s.spawn(|| prefill(&model, a, 1));
        let tb = s.spawn(|| prefill(&model, b, 1));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(par.0 == seq.0, "thread A's logits differ from the sequential run");
    assert!(par.1 == seq.1, "thread B's logits differ from the sequential run");
    assert!(seq.0 != seq.1, "the two inputs differ, so must their logits");
}
