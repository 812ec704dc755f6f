//! Every selection mode on real attention: Q/K/V captured from SmolLM2-135M-Instruct at 8K context
//! (layers 0, 10, 20 and 29, the last ubatch: 512 queries at positions 7680.. against up to 8192
//! keys; captured on first use by a dense prefill, then cached). Per op and mode this measures the
//! exact attention mass the kept keys carry (recall) and the share of visible keys kept, and asserts
//! - each sparse mode keeps more mass than the keys it keeps would carry at random
//!   (recall > kept fraction): what a budget promises over a uniform choice;
//! - the oracle (true top keys per query block) keeps at least the mass of every other mode at the
//!   same budget: checked here, not assumed;
//! - dhsa keeps more mass than streaming (sink + window only) with more keys.

use ggml_dhsa::capture;
use ggml_dhsa::config::{Config, Mode};
use ggml_dhsa::eval::recall;
use ggml_dhsa::kernels;
use ggml_dhsa::select::Selector;

#[test]
fn every_mode_keeps_the_mass_its_budget_promises_on_captured_smollm2_ops() {
    let caps = capture::smollm2_8k().expect("captured SmolLM2 ops at 8K");
    assert_eq!(caps.len(), capture::SMOLLM2_LAYERS.len());
    let threads = 2;
    let modes = [Mode::Oracle, Mode::Dhsa, Mode::Block, Mode::Streaming];
    let mut sel = Selector::default();
    for cap in caps {
        let mut op = cap.op;
        let layer = cap.meta.layer.unwrap();
        let o = op.op();
        let mut last = vec![];
        for i3 in 0..op.shape.ne3 {
            let mut l = vec![0i32; op.shape.n_q];
            // SAFETY: o addresses op's own buffers, alive and unmoved for the call.
            unsafe { kernels::row_frontier(&o, i3, &mut l, threads) };
            last.push(l);
        }
        assert!(last[0][0] >= 7000, "layer {layer}: the last ubatch of an 8K window sees about 7.7K keys");
        let mut rows = vec![];
        for mode in modes {
            let cfg = Config { mode, ..Config::default() };
            // SAFETY: as above.
            let s = unsafe { sel.select(&o, &cfg, threads) }.unwrap().expect("sparse at 8K with the default budget");
            let mass = recall::owned_plan_mass(&mut op, &[Some(&s.plan)], threads).unwrap().remove(0);
            let (k, t) = mass.iter().fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1));
            let (kk, kv) = recall::keys_kept(Some(&s.plan), &last);
            rows.push((mode, k / t, kk / kv));
        }
        for &(mode, rec, kept) in &rows {
            eprintln!("layer {layer:2} {mode:?}: recall {rec:.4}, keys kept {kept:.4}");
            assert!(kept > 0.0 && kept < 0.6, "layer {layer} {mode:?}: sparse at 8K, kept {kept}");
            assert!(rec > kept, "layer {layer} {mode:?}: recall {rec:.4} not above the kept fraction {kept:.4}");
        }
        let oracle = rows[0].1;
        for &(mode, rec, _) in &rows[1..] {
            assert!(oracle >= rec - 1e-9, "layer {layer}: oracle {oracle:.4} below {mode:?} {rec:.4}");
        }
        let (dhsa, streaming) = (rows[1].1, rows[3].1);
        assert!(dhsa > streaming, "layer {layer}: dhsa {dhsa:.4} not above streaming {streaming:.4}");
    }
}
