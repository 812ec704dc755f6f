//! The sparse path: selection invariants, and exactness of the attention over the selected keys
//! (every mode, fresh random ops, degenerate cases) against the float64 reference restricted to
//! the plan's keys. Tolerance as in tests/kernels.rs: 2e-5 (|x - ref| / (|ref| + 1)).

use ggml_dhsa::config::{Chunking, Config, Mode};
use ggml_dhsa::kernels::{Counters, KvType, OwnedOp, Plan, Scratch, Shape};
use ggml_dhsa::opgen::{MaskKind, random_op};
use ggml_dhsa::reference;
use ggml_dhsa::rng::Rng;
use ggml_dhsa::select::{Selection, Selector};

const TOL: f64 = 2e-5;

fn select(op: &mut OwnedOp, cfg: &Config) -> Option<Selection> {
    let o = op.op();
    // SAFETY: o points into op's buffers, valid for the call.
    unsafe { Selector::default().select(&o, cfg, 2) }.unwrap()
}

fn in_spans(plan: &Plan, i3: usize, b: usize, s: usize, j: usize) -> bool {
    plan.spans_of(i3, b, s).iter().any(|sp| (sp.begin as usize..sp.end as usize).contains(&j))
}

/// Runs `plan` on `op` and checks it against the reference over exactly the plan's keys.
fn check_exact(op: &mut OwnedOp, plan: &Plan, what: &str) {
    let mut c = Counters::default();
    op.dst.fill(f32::NAN);
    op.run(Some(plan), 2, &mut Scratch::default(), &mut c).unwrap();
    let g = op.shape.n_head / op.shape.n_head_kv;
    let n_sel = plan.n_sel_groups;
    let keep = |i3: usize, h: usize, iq: usize, j: usize| {
        let s = if n_sel == 1 { 0 } else { h / g };
        in_spans(plan, i3, iq / plan.q_block, s, j)
    };
    let want = reference::attention(op, Some(&keep));
    let err = reference::max_rel_err(&op.dst, &want, 1.0);
    assert!(err <= TOL, "{what}: error {err:e}");
    assert!(c.keys_attended <= c.keys_visible, "{what}: attended more keys than are visible");
}

fn config(mode: Mode, budget: usize, rng: &mut Rng) -> Config {
    Config {
        mode,
        budget,
        q_block: *rng.pick(&[8, 16, 32, 64]),
        sink: *rng.pick(&[0, 4, 16]),
        window: *rng.pick(&[0, 8, 32]),
        chunking: *rng.pick(&[Chunking::Dynamic, Chunking::Fixed]),
        chunk_min: 4,
        chunk_max: 16,
        block_size: *rng.pick(&[8, 16]),
        shared_heads: rng.below(2) == 0,
        tau: *rng.pick(&[0.0, 0.0, 0.9]),
        ..Config::default()
    }
}

fn random_case(rng: &mut Rng) -> (OwnedOp, MaskKind) {
    let (nh, nhk) = *rng.pick(&[(4, 4), (9, 3), (8, 2), (6, 1)]);
    let d = *rng.pick(&[32, 64, 40]);
    let n_q = *rng.pick(&[17, 64, 100]);
    let n_kv = *rng.pick(&[200, 333, 512]);
    let mut s = Shape::new(nh, nhk, d, n_q, n_kv);
    s.k_type = *rng.pick(&[KvType::F16, KvType::F32, KvType::Bf16]);
    s.v_type = s.k_type;
    s.sinks = rng.below(3) == 0;
    s.softcap = if rng.below(4) == 0 { 10.0 } else { 0.0 };
    let kind = *rng.pick(&[
        MaskKind::Causal,
        MaskKind::Causal,
        MaskKind::TwoSequences,
        MaskKind::SlidingWindow(40),
        MaskKind::Random,
    ]);
    let pad = rng.below(40);
    (random_op(s, kind, pad, rng), kind)
}

#[test]
fn every_sparse_mode_is_exact_attention_over_the_keys_it_selects() {
    let mut rng = Rng::fresh();
    for case in 0..60 {
        let (mut op, kind) = random_case(&mut rng);
        let mode = Mode::ALL[1 + case % 4];
        let budget = *rng.pick(&[24, 64, 150]);
        let cfg = config(mode, budget, &mut rng);
        let sel = select(&mut op, &cfg).expect("n_kv > budget gives a plan");
        let what = format!("case {case} {mode} {kind:?} {:?}", op.shape);
        check_exact(&mut op, &sel.plan, &what);
    }
}

#[test]
fn selection_keeps_sink_window_and_own_positions_within_the_budget() {
    let mut rng = Rng::fresh();
    for case in 0..80 {
        let (mut op, _) = random_case(&mut rng);
        let mode = [Mode::Dhsa, Mode::Block, Mode::Streaming, Mode::Oracle][case % 4];
        let budget = *rng.pick(&[40, 100, 180]);
        let cfg = config(mode, budget, &mut rng);
        let Some(sel) = select(&mut op, &cfg) else { panic!("expected a plan") };
        let p = &sel.plan;
        let s = &op.shape;
        for b in 0..p.n_blocks {
            for sg in 0..p.n_sel_groups {
                let spans = p.spans_of(0, b, sg);
                assert!(spans.windows(2).all(|w| w[0].end < w[1].begin), "spans sorted, disjoint, merged");
                assert!(spans.iter().all(|sp| sp.begin >= 0 && sp.begin < sp.end && sp.end as usize <= s.n_kv));
                // the last visible key of each query row (its own position in a causal cache)
                let rows: Vec<i64> = (b * p.q_block..((b + 1) * p.q_block).min(s.n_q))
                    .map(|iq| {
                        (0..s.n_kv)
                            .rev()
                            .find(|&j| op.mask_at(0, 0, iq, j) != f32::NEG_INFINITY)
                            .map_or(-1, |j| j as i64)
                    })
                    .collect();
                let (lo, hi) = rows.iter().filter(|&&l| l >= 0).fold((i64::MAX, -1), |(a, b), &l| (a.min(l), b.max(l)));
                if hi < 0 {
                    assert!(spans.is_empty(), "a block that sees nothing attends to nothing");
                    continue;
                }
                for &own in rows.iter().filter(|&&l| l >= 0) {
                    assert!(in_spans(p, 0, b, sg, own as usize), "case {case}: own position {own} dropped");
                }
                for j in 0..cfg.sink.min(hi as usize + 1) {
                    assert!(in_spans(p, 0, b, sg, j), "case {case}: sink key {j} dropped");
                }
                for j in (lo - cfg.window as i64).max(0)..=hi {
                    assert!(in_spans(p, 0, b, sg, j as usize), "case {case}: window key {j} dropped");
                }
                let kept: i64 = spans.iter().map(|sp| (sp.end - sp.begin) as i64).sum();
                let fixed = (hi + 1 - (lo - cfg.window as i64).max(0)) + (cfg.sink as i64).min(hi + 1);
                let sparse = (hi + 1) as usize > cfg.budget;
                if !sparse {
                    assert_eq!(kept, hi + 1, "case {case}: a block whose keys fit the budget attends to all of them");
                    continue;
                }
                if fixed <= cfg.budget as i64 {
                    assert!(kept <= cfg.budget as i64, "case {case} {mode}: {kept} keys kept, budget {}", cfg.budget);
                }
                if mode == Mode::Streaming {
                    assert!(kept <= fixed, "streaming keeps only sink and window");
                }
            }
        }
    }
}

#[test]
fn a_budget_covering_every_visible_key_attends_densely() {
    let mut rng = Rng::fresh();
    for case in 0..20 {
        let (mut op, _) = random_case(&mut rng);
        let n_kv = op.shape.n_kv;
        let mut cfg = config(Mode::ALL[1 + case % 4], n_kv, &mut rng);
        assert!(select(&mut op, &cfg).is_none(), "n_kv <= budget: dense op");
        // padding keys are never visible: a budget of the visible keys makes every block dense
        let visible = (0..n_kv)
            .rev()
            .find(|&j| (0..op.shape.n_q).any(|iq| op.mask_at(0, 0, iq, j) != f32::NEG_INFINITY))
            .unwrap()
            + 1;
        if visible < n_kv {
            cfg.budget = visible;
            let sel = select(&mut op, &cfg).unwrap();
            assert_eq!(sel.sparse_blocks, 0);
            check_exact(&mut op, &sel.plan, "all blocks dense");
            let plan_out = op.dst.clone();
            op.run(None, 2, &mut Scratch::default(), &mut Counters::default()).unwrap();
            assert!(
                reference::max_rel_err(&plan_out, &op.dst.iter().map(|&x| x as f64).collect::<Vec<_>>(), 1.0) <= TOL
            );
        }
    }
}

#[test]
fn degenerate_ops_match_the_reference() {
    let mut rng = Rng::fresh();
    let base = Shape::new(4, 2, 32, 40, 300);
    // every key masked
    let mut op = random_op(base.clone(), MaskKind::Causal, 0, &mut rng);
    op.mask.fill(0xFC00);
    let cfg = Config { budget: 16, q_block: 16, ..Config::default() };
    let sel = select(&mut op, &cfg).unwrap();
    assert!((0..sel.plan.n_blocks).all(|b| sel.plan.spans_of(0, b, 0).is_empty()));
    check_exact(&mut op, &sel.plan, "all masked");
    assert!(op.dst.iter().all(|&x| x == 0.0));
    // the smallest budget, one-key chunks, and chunks longer than the context
    for (budget, cmin, cmax) in [(1, 1, 1), (1, 4, 16), (5, 1, 1000), (299, 300, 400)] {
        let mut op = random_op(base.clone(), MaskKind::Causal, 0, &mut rng);
        let cfg =
            Config { budget, chunk_min: cmin, chunk_max: cmax, q_block: 8, sink: 2, window: 3, ..Config::default() };
        let sel = select(&mut op, &cfg).unwrap();
        check_exact(&mut op, &sel.plan, &format!("budget {budget} chunks {cmin}..{cmax}"));
    }
    // NaN in q: the row it poisons is NaN, like the reference
    let mut op = random_op(base, MaskKind::Causal, 0, &mut rng);
    op.q[3] = f32::NAN;
    let sel = select(&mut op, &Config { budget: 64, ..Config::default() }).unwrap();
    check_exact(&mut op, &sel.plan, "NaN in q");
    assert!(op.dst_row(0, 0, 0).iter().all(|x| x.is_nan()));
}
