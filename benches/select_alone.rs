//! The selection alone on one random causal op (no attention), timed over repetitions:
//!
//!     cargo bench --bench select_alone -- HEADS HEADS_KV HEAD_DIM N_KV REPS [THREADS]
//!
//! (n_q = 512, default configuration). With the sparse op's time from `dhsa bench kernels -t 1`
//! this gives the selection's share without thread synchronisation (benches/LOG.md).

use ggml_dhsa::config::Config;
use ggml_dhsa::kernels::Shape;
use ggml_dhsa::opgen::{MaskKind, random_op};
use ggml_dhsa::rng::Rng;
use ggml_dhsa::select::Selector;

fn main() {
    // cargo bench adds `--bench`; keep the numbers
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    if a.len() < 5 {
        eprintln!("usage: cargo bench --bench select_alone -- HEADS HEADS_KV HEAD_DIM N_KV REPS [THREADS]");
        std::process::exit(2);
    }
    let (nh, nhk, d, n_kv, reps) = (a[0], a[1], a[2], a[3], a[4].max(1));
    let threads = a.get(5).copied().unwrap_or(1);
    let mut op = random_op(Shape::new(nh, nhk, d, 512, n_kv), MaskKind::Causal, 0, &mut Rng::new(1));
    let o = op.op();
    let cfg = Config::default();
    let mut sel = Selector::default();
    let t = std::time::Instant::now();
    for _ in 0..reps {
        // SAFETY: o addresses op's own buffers, alive and unmoved for the whole loop.
        let s = unsafe { sel.select(&o, &cfg, threads) }.unwrap().expect("sparse at this size");
        std::hint::black_box(s.plan.spans.len());
    }
    println!(
        "{nh}/{nhk}/{d} n_kv {n_kv}: {:.2} ms per selection ({threads} thread(s), {reps} reps)",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
}
