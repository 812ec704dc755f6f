//! The accuracy harness: its measures against definitions (the recall of a plan against f64
//! probabilities on random ops, capture files round-trip and reject damage), and on the real model
//! (SmolLM2-135M-Instruct, fetched on first use): a short passkey grid and a short perplexity
//! window, where dense must give the model's known answer and the sparse modes must be computed
//! (a small streaming budget changes the distributions, a budget covering every key does not).

use ggml_dhsa::capture::{self, CaptureMeta};
use ggml_dhsa::config::{Config, Mode};
use ggml_dhsa::eval::{self, ppl, recall};
use ggml_dhsa::kernels::{Plan, Span};
use ggml_dhsa::opgen::{MaskKind, random_op};
use ggml_dhsa::reference;
use ggml_dhsa::rng::Rng;
use ggml_dhsa::select::Selector;

fn tmp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dhsa-eval-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Exact softmax probability of each key for (query iq, head h), in f64.
fn probs(op: &ggml_dhsa::kernels::OwnedOp, h: usize, iq: usize) -> Vec<f64> {
    let s = &op.shape;
    let hk = h / (s.n_head / s.n_head_kv);
    let l: Vec<f64> = (0..s.n_kv).map(|j| reference::logit(op, 0, h, iq, j, &op.k_row(0, hk, j))).collect();
    let mx = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if mx == f64::NEG_INFINITY {
        return vec![0.0; s.n_kv];
    }
    let e: Vec<f64> = l.iter().map(|&x| (x - mx).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

#[test]
fn plan_recall_matches_f64_probabilities_on_random_ops() {
    let mut rng = Rng::fresh();
    for case in 0..6 {
        let (nh, nhk) = *rng.pick(&[(4, 2), (9, 3), (2, 1)]);
        let (n_q, n_kv) = (48 + rng.below(40), 300 + rng.below(200));
        let shape = ggml_dhsa::kernels::Shape::new(nh, nhk, 64, n_q, n_kv);
        let mut op = random_op(shape, MaskKind::Causal, rng.below(20), &mut rng);
        // a random plan: blocks of 16 queries, per kv head a few random spans
        let q_block = 16;
        let n_blocks = n_q.div_ceil(q_block);
        let mut plan = Plan { q_block, n_blocks, n_sel_groups: nhk, spans: vec![], offsets: vec![0] };
        for _ in 0..n_blocks * nhk {
            let mut at = 0;
            while at < n_kv {
                let len = 1 + rng.below(40);
                if rng.below(2) == 0 {
                    plan.spans.push(Span { begin: at as i32, end: (at + len).min(n_kv) as i32 });
                }
                at += len + rng.below(30);
            }
            plan.offsets.push(plan.spans.len() as i64);
        }
        let got = recall::owned_plan_mass(&mut op, &[Some(&plan), None], 2).unwrap();
        for (h, &(k, t)) in got[0].iter().enumerate() {
            let (mut kept, mut total) = (0f64, 0f64);
            for iq in 0..n_q {
                let p = probs(&op, h, iq);
                total += p.iter().sum::<f64>();
                let spans = plan.spans_of(0, iq / q_block, h / (nh / nhk));
                kept += spans.iter().map(|s| p[s.begin as usize..s.end as usize].iter().sum::<f64>()).sum::<f64>();
            }
            assert!((k - kept).abs() <= 1e-4 * total && (t - total).abs() <= 1e-4 * total, "case {case} head {h}");
            assert_eq!(got[1][h].0, got[1][h].1, "dense keeps everything");
            assert!(kept < total, "the random plan drops keys");
        }
    }
}

#[test]
fn oracle_keeps_at_least_the_mass_of_dhsa_and_block_on_random_ops() {
    // the oracle ranks single keys by their exact mass: no selection of the same budget keeps more
    let mut rng = Rng::fresh();
    let shape = ggml_dhsa::kernels::Shape::new(4, 2, 64, 64, 1500);
    let mut op = random_op(shape, MaskKind::Causal, 0, &mut rng);
    let o = op.op();
    let mut sel = Selector::default();
    let mut masses = vec![];
    for mode in [Mode::Oracle, Mode::Dhsa, Mode::Block, Mode::Streaming] {
        let cfg = Config { mode, budget: 512, sink: 16, window: 64, q_block: 16, ..Config::default() };
        // SAFETY: o addresses op's buffers, alive and unmoved for the call.
        let s = unsafe { sel.select(&o, &cfg, 2) }.unwrap().expect("sparse at this size");
        let m = recall::owned_plan_mass(&mut op, &[Some(&s.plan)], 2).unwrap();
        masses.push(m[0].iter().fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1)));
    }
    let r: Vec<f64> = masses.iter().map(|m| m.0 / m.1).collect();
    assert!(r.iter().all(|&x| x > 0.0 && x < 1.0), "{r:?}");
    assert!(r[0] >= r[1] - 1e-9 && r[0] >= r[2] - 1e-9 && r[0] >= r[3] - 1e-9, "oracle is the upper bound: {r:?}");
}

#[test]
fn captures_round_trip_and_damage_is_rejected() {
    let mut rng = Rng::fresh();
    let mut shape = ggml_dhsa::kernels::Shape::new(4, 2, 64, 9, 77);
    shape.sinks = true;
    let op = random_op(shape, MaskKind::Causal, 3, &mut rng);
    let dir = tmp_dir("capture");
    let p = dir.join("op.dhsacap");
    let meta = CaptureMeta { model: "m.gguf".into(), layer: Some(7), n_ctx: 77, pos0: 68, note: "test".into() };
    capture::save(&p, &op, &meta).unwrap();
    let back = capture::load(&p).unwrap();
    assert_eq!(back.meta, meta);
    assert_eq!(back.op.shape, op.shape);
    assert_eq!((&back.op.k, &back.op.v, &back.op.mask), (&op.k, &op.v, &op.mask));
    assert!(back.op.q.iter().zip(&op.q).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(back.op.sinks.iter().zip(&op.sinks).all(|(a, b)| a.to_bits() == b.to_bits()));
    let good = std::fs::read(&p).unwrap();
    let err = |bytes: &[u8]| {
        std::fs::write(&p, bytes).unwrap();
        format!("{:#}", capture::load(&p).err().expect("damaged file accepted"))
    };
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(err(&flipped).contains("checksum"), "{}", err(&flipped));
    let mut body = good.clone();
    let n = body.len();
    body[n - 40] ^= 0x10;
    assert!(err(&body).contains("checksum"));
    assert!(err(&good[..good.len() - 100]).contains("truncated"));
    assert!(err(b"GGUF....").contains("magic") || err(b"GGUF....").contains("truncated"));
    assert!(err(&[b"GGUFGGUF".as_slice(), &good[8..]].concat()).contains("magic"));
    let mut v2 = good.clone();
    v2[8] = 2;
    assert!(err(&v2).contains("version 2"));
    assert!(err(&[good.as_slice(), b"x"].concat()).contains("trailing"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[derive(clap::Parser)]
struct PplCli {
    #[command(flatten)]
    a: ppl::Args,
}

#[derive(clap::Parser)]
struct PasskeyCli {
    #[command(flatten)]
    a: eval::passkey::Args,
}

/// One process, one model: the perplexity window and the passkey grid run in this one test so the
/// model is loaded once (llama.cpp's backends are process-wide).
#[test]
fn on_smollm2_dense_gives_the_known_answers_and_sparse_modes_are_computed() {
    use clap::Parser;
    // perplexity: one 2048-token window, the second half scored
    let cli = PplCli::try_parse_from([
        "ppl",
        "-m",
        "smollm2",
        "-c",
        "2048",
        "--windows",
        "1",
        "--fresh",
        "--modes",
        "dense,streaming:budget=256,sink=16,window=128,dhsa:budget=4096,dhsa:budget=512",
    ])
    .unwrap();
    let rep = ppl::run(&cli.a, false).unwrap();
    let by = |m: &str| rep.summaries.iter().find(|s| s.mode == m).unwrap().clone();
    let (dense, stream, full, dhsa) =
        (by("dense"), by("streaming:budget=256,sink=16,window=128"), by("dhsa:budget=4096"), by("dhsa:budget=512"));
    eprintln!("{rep_:#?}", rep_ = rep.summaries);
    assert_eq!(dense.tokens, 1023);
    // SmolLM2-135M on English technical prose: perplexity in the tens, not garbage
    assert!(dense.ppl > 2.0 && dense.ppl < 60.0, "dense perplexity {}", dense.ppl);
    assert_eq!((dense.kl_mean, dense.top1, dense.kept), (0.0, 1.0, 1.0));
    // a budget covering every key is dense: the same distributions
    assert!(full.kl_mean < 1e-6 && full.top1 == 1.0 && full.kept == 1.0, "{full:?}");
    // sparse modes attend to fewer keys and change the distributions, streaming the most
    assert!(stream.kept < 0.5 && dhsa.kept < 0.8, "kept: streaming {} dhsa {}", stream.kept, dhsa.kept);
    assert!(stream.kl_mean > 1e-3 && stream.top1 < 1.0, "{stream:?}");
    assert!(dhsa.kl_mean > 0.0 && dhsa.kl_mean < stream.kl_mean, "dhsa {} streaming {}", dhsa.kl_mean, stream.kl_mean);

    // passkey: one length, two depths; dense finds the key, dhsa at a budget of half the prompt
    let cli = PasskeyCli::try_parse_from([
        "passkey",
        "-m",
        "smollm2",
        "--lengths",
        "2048",
        "--depths",
        // cells where the dense model finds its key (at 0.2, 0.4 and 0.5 it answers with a
        // definition from the haystack instead, dense or not: seed 1, measured 2026-11-23)
        "0.3,0.6",
        "--fresh",
        "--modes",
        "dense,dhsa:budget=1024",
    ])
    .unwrap();
    let (specs, cells, _) = eval::passkey::run(&cli.a, false).unwrap();
    assert_eq!(specs.len(), 2);
    for c in &cells[0] {
        assert!(c.success, "dense must find the passkey: {c:?}");
        assert_eq!(c.kept, 1.0);
    }
    for c in &cells[1] {
        assert!(c.kept < 0.9, "dhsa at budget 1024 of 2048 keys is sparse: {c:?}");
        eprintln!("dhsa budget 1024: depth {} key {} answer {:?}", c.depth, c.key, c.answer);
    }
}
