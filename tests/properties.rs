//! Property tests (proptest): random FA ops — shapes, GQA ratios, DK != DV, every K/V type the
//! plugin claims, masks with random holes, fully masked rows, padding, several sequences, sliding
//! windows, softcap, ALiBi, sinks, broadcast masks — checked against the float64 reference:
//!   - the dense kernel equals the reference;
//!   - every sparse mode equals the reference restricted to the keys its plan selects (so no masked
//!     key is ever attended), keeps sink, window and each query's own key, and respects the budget;
//!   - with a budget covering every visible key, every mode equals dense.
//!
//! 1000 cases per property by default; set DHSA_PROPTEST_CASES for more. Each test prints what it
//! tried. Tolerance: 2e-5 (|x - ref| / (|ref| + 1)).

use ggml_dhsa::config::{Chunking, Config, HeadScore, Mode};
use ggml_dhsa::kernels::{Counters, KvType, OwnedOp, Plan, Scratch, Shape};
use ggml_dhsa::opgen::{MaskKind, random_op};
use ggml_dhsa::reference;
use ggml_dhsa::rng::Rng;
use ggml_dhsa::select::Selector;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use std::collections::BTreeMap;

const TOL: f64 = 2e-5;

fn cases() -> u32 {
    std::env::var("DHSA_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

#[derive(Debug, Clone)]
struct Case {
    n_head_kv: usize,
    g: usize,
    dk: usize,
    dv: usize,
    n_q: usize,
    n_kv: usize,
    k_type: KvType,
    v_type: KvType,
    mask: MaskKind,
    mask_per_head: bool,
    ne3: usize,
    pad: usize,
    softcap: f32,
    max_bias: f32,
    sinks: bool,
    seed: u64,
}

fn kv_type() -> impl Strategy<Value = KvType> {
    prop_oneof![Just(KvType::F32), Just(KvType::F16), Just(KvType::Bf16), Just(KvType::Q8_0)]
}

fn mask_kind() -> impl Strategy<Value = MaskKind> {
    prop_oneof![
        Just(MaskKind::None),
        Just(MaskKind::Causal),
        Just(MaskKind::TwoSequences),
        (1usize..40).prop_map(MaskKind::SlidingWindow),
        Just(MaskKind::Random),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            1usize..=3,
            1usize..=4,
            prop_oneof![Just(32usize), Just(64), Just(40), Just(17)],
            prop_oneof![Just(32usize), Just(64), Just(24)],
        ),
        (1usize..=48, 1usize..=160, kv_type(), kv_type()),
        (mask_kind(), any::<bool>(), 1usize..=2, 0usize..24),
        (prop_oneof![Just(0.0f32), 5.0f32..50.0], prop_oneof![Just(0.0f32), 0.5f32..8.0], any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |(
                (n_head_kv, g, dk, dv),
                (n_q, n_kv, kt, vt),
                (mask, per_head, ne3, pad),
                (softcap, bias, sinks, seed),
            )| {
                // q8_0 needs rows of whole 32-element blocks
                let fix =
                    |t: KvType, d: usize| if t == KvType::Q8_0 && !d.is_multiple_of(32) { KvType::F16 } else { t };
                Case {
                    n_head_kv,
                    g,
                    dk,
                    dv,
                    n_q,
                    n_kv,
                    k_type: fix(kt, dk),
                    v_type: fix(vt, dv),
                    mask,
                    mask_per_head: per_head,
                    ne3,
                    pad,
                    softcap,
                    max_bias: if mask == MaskKind::None { 0.0 } else { bias },
                    sinks,
                    seed,
                }
            },
        )
}

fn build(c: &Case) -> OwnedOp {
    let mut s = Shape::new(c.n_head_kv * c.g, c.n_head_kv, c.dk, c.n_q, c.n_kv);
    s.dv = c.dv;
    s.k_type = c.k_type;
    s.v_type = c.v_type;
    s.ne3 = c.ne3;
    s.mask = (c.mask != MaskKind::None).then_some((if c.mask_per_head { s.n_head } else { 1 }, c.ne3));
    s.softcap = c.softcap;
    s.max_bias = c.max_bias;
    s.sinks = c.sinks;
    random_op(s, c.mask, c.pad.min(c.n_kv / 2), &mut Rng::new(c.seed))
}

fn run(op: &mut OwnedOp, plan: Option<&Plan>) -> Counters {
    let mut cnt = Counters::default();
    op.dst.fill(f32::NAN);
    op.run(plan, 1 + (op.shape.n_q % 2), &mut Scratch::default(), &mut cnt).unwrap();
    cnt
}

/// Tally of what a property tried, printed at the end.
#[derive(Default)]
struct Tally(BTreeMap<String, usize>);

impl Tally {
    fn note(&mut self, c: &Case) {
        for k in [
            format!("K {:?}", c.k_type),
            format!("V {:?}", c.v_type),
            format!("mask {:?}", c.mask).split('(').next().unwrap().to_string(),
            if c.dk != c.dv { "DK != DV".into() } else { "DK == DV".into() },
            if c.g > 1 { "GQA".into() } else { "MHA".into() },
            if c.softcap > 0.0 { "softcap".into() } else { "no softcap".into() },
            if c.max_bias > 0.0 { "ALiBi".into() } else { "no ALiBi".into() },
            if c.sinks { "sinks".into() } else { "no sinks".into() },
            if c.ne3 > 1 { "ne3=2".into() } else { "ne3=1".into() },
        ] {
            *self.0.entry(k).or_default() += 1;
        }
    }

    fn print(&self, what: &str, n: u32) {
        eprintln!(
            "{what}: {n} cases; {}",
            self.0.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
        );
    }
}

fn runner() -> TestRunner {
    TestRunner::new(PtConfig { cases: cases(), failure_persistence: None, ..PtConfig::default() })
}

#[test]
fn dense_matches_the_f64_reference() {
    let tally = std::cell::RefCell::new(Tally::default());
    runner()
        .run(&case(), |c| {
            tally.borrow_mut().note(&c);
            let mut op = build(&c);
            let cnt = run(&mut op, None);
            let err = reference::max_rel_err(&op.dst, &reference::attention(&op, None), 1.0);
            prop_assert!(err <= TOL, "error {err:e}");
            prop_assert_eq!(cnt.keys_attended, cnt.keys_visible);
            Ok(())
        })
        .unwrap();
    tally.borrow().print("dense vs f64", cases());
}

fn sparse_config(mode: Mode, budget: usize, seed: u64) -> Config {
    let mut r = Rng::new(seed ^ 0x5eed);
    Config {
        mode,
        budget,
        q_block: *r.pick(&[4, 8, 16, 32]),
        sink: *r.pick(&[0, 1, 4]),
        window: *r.pick(&[0, 3, 16]),
        chunking: *r.pick(&[Chunking::Dynamic, Chunking::Fixed]),
        chunk_min: *r.pick(&[1, 2, 4]),
        chunk_max: *r.pick(&[4, 8, 16]),
        block_size: *r.pick(&[4, 16]),
        boundary_window: *r.pick(&[1, 2, 4]),
        shared_heads: r.below(2) == 0,
        tau: *r.pick(&[0.0, 0.5, 0.95]),
        head_score: *r.pick(&[HeadScore::Auto, HeadScore::Mean, HeadScore::Rows]),
        row_step: *r.pick(&[1, 3]),
        row_pool: *r.pick(&[0, 1, 3]),
        ..Config::default()
    }
}

fn in_plan(plan: &Plan, g: usize, i3: usize, h: usize, iq: usize, j: usize) -> bool {
    let s = if plan.n_sel_groups == 1 { 0 } else { h / g };
    plan.spans_of(i3, iq / plan.q_block, s).iter().any(|sp| (sp.begin as usize..sp.end as usize).contains(&j))
}

#[test]
fn sparse_modes_are_exact_over_their_selection_and_keep_their_promises() {
    let tally = std::cell::RefCell::new(Tally::default());
    let modes = std::cell::RefCell::new(BTreeMap::<&str, usize>::new());
    runner()
        .run(&(case(), 0usize..4, 1usize..120), |(c, m, budget)| {
            tally.borrow_mut().note(&c);
            let mode = [Mode::Dhsa, Mode::Block, Mode::Streaming, Mode::Oracle][m];
            *modes.borrow_mut().entry(mode.name()).or_default() += 1;
            let mut op = build(&c);
            let cfg = sparse_config(mode, budget, c.seed);
            let o = op.op();
            // SAFETY: o points into op's buffers, alive and untouched during the call.
            let sel = unsafe { Selector::default().select(&o, &cfg, 1) }.unwrap();
            let Some(sel) = sel else {
                prop_assert!(c.n_kv <= budget, "a plan whenever n_kv exceeds the budget");
                return Ok(());
            };
            let plan = &sel.plan;
            run(&mut op, Some(plan));
            let keep = |i3: usize, h: usize, iq: usize, j: usize| in_plan(plan, c.g, i3, h, iq, j);
            let err = reference::max_rel_err(&op.dst, &reference::attention(&op, Some(&keep)), 1.0);
            prop_assert!(err <= TOL, "{} error {err:e}", mode);
            // promises per block: own keys, sink and window kept; the budget respected
            let s = &op.shape;
            for i3 in 0..s.ne3 {
                for b in 0..plan.n_blocks {
                    let rows = b * plan.q_block..((b + 1) * plan.q_block).min(s.n_q);
                    let last: Vec<i64> = rows
                        .map(|iq| {
                            let seen = |j: usize| (0..s.n_head).any(|h| op.mask_at(i3, h, iq, j) != f32::NEG_INFINITY);
                            (0..s.n_kv).rev().find(|&j| seen(j)).map_or(-1, |j| j as i64)
                        })
                        .filter(|&l| l >= 0)
                        .collect();
                    let (Some(&lo), Some(&hi)) = (last.iter().min(), last.iter().max()) else { continue };
                    for sg in 0..plan.n_sel_groups {
                        let h = sg * c.g;
                        let kept: i64 = plan.spans_of(i3, b, sg).iter().map(|sp| (sp.end - sp.begin) as i64).sum();
                        for &own in &last {
                            prop_assert!(
                                in_plan(plan, c.g, i3, h, b * plan.q_block, own as usize),
                                "own key {own} dropped"
                            );
                        }
                        for j in (0..cfg.sink as i64).chain((lo - cfg.window as i64).max(0)..=hi).filter(|&j| j <= hi) {
                            prop_assert!(
                                in_plan(plan, c.g, i3, h, b * plan.q_block, j as usize),
                                "sink/window key {j} dropped"
                            );
                        }
                        let fixed = (hi + 1 - (lo - cfg.window as i64).max(0)) + (cfg.sink as i64).min(hi + 1);
                        if hi + 1 > budget as i64 && fixed <= budget as i64 {
                            prop_assert!(kept <= budget as i64, "{} kept {kept} > budget {budget}", mode);
                        }
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    tally.borrow().print("sparse over selection", cases());
    eprintln!("modes: {:?}", modes.borrow());
}

#[test]
fn a_budget_covering_every_key_equals_dense_in_every_mode() {
    let tally = std::cell::RefCell::new(Tally::default());
    runner()
        .run(&(case(), 0usize..4), |(c, m)| {
            tally.borrow_mut().note(&c);
            let mode = [Mode::Dhsa, Mode::Block, Mode::Streaming, Mode::Oracle][m];
            let mut op = build(&c);
            run(&mut op, None);
            let dense: Vec<f64> = op.dst.iter().map(|&x| x as f64).collect();
            // the largest key any row sees: with that budget every block is dense through the plan
            let s = &op.shape;
            let horizon = (0..s.n_kv).rev().find(|&j| {
                (0..s.ne3)
                    .any(|i3| (0..s.n_head).any(|h| (0..s.n_q).any(|iq| op.mask_at(i3, h, iq, j) != f32::NEG_INFINITY)))
            });
            let budget = horizon.map_or(1, |h| h + 1).max(1);
            let cfg = sparse_config(mode, budget, c.seed);
            let o = op.op();
            // SAFETY: as above.
            let sel = unsafe { Selector::default().select(&o, &cfg, 1) }.unwrap();
            if let Some(sel) = sel {
                run(&mut op, Some(&sel.plan));
            } else {
                run(&mut op, None);
            }
            let err = reference::max_rel_err(&op.dst, &dense, 1.0);
            prop_assert!(err <= TOL, "{} differs from dense by {err:e}", mode);
            Ok(())
        })
        .unwrap();
    tally.borrow().print("full budget vs dense", cases());
}
