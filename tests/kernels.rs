//! The exact CPU kernel against the float64 reference, on fresh random inputs over many shapes,
//! types and masks (fully masked rows included). Tolerance: the worst element may differ from the
//! reference by 2e-5 absolute-or-relative (|x - ref| / (|ref| + 1)): f32 accumulation over at most
//! a few hundred keys lands near 1e-6.

use ggml_dhsa::kernels::{Counters, Scratch};
use ggml_dhsa::opgen::{MaskKind, random_op, random_shape};
use ggml_dhsa::reference;
use ggml_dhsa::rng::Rng;

const TOL: f64 = 2e-5;

#[test]
fn dense_kernel_matches_the_f64_reference_on_random_ops() {
    let mut rng = Rng::fresh();
    let mut scratch = Scratch::default();
    let mut worst = 0.0f64;
    let cases = 300;
    for case in 0..cases {
        let (shape, kind, pad) = random_shape(&mut rng);
        let mut op = random_op(shape.clone(), kind, pad, &mut rng);
        let threads = 1 + case % 3;
        let mut c = Counters::default();
        op.run(None, threads, &mut scratch, &mut c).unwrap_or_else(|e| panic!("{e}: {shape:?}"));
        let want = reference::attention(&op, None);
        let err = reference::max_rel_err(&op.dst, &want, 1.0);
        assert!(err <= TOL, "case {case}: error {err:e} > {TOL:e} for {shape:?} mask {kind:?} pad {pad}");
        assert_eq!(c.keys_attended, c.keys_visible, "dense attends every visible key");
        worst = worst.max(err);
    }
    eprintln!("{cases} random ops, worst error {worst:e}");
}

#[test]
fn fully_masked_rows_give_zeros_and_sinks_alone_give_zeros() {
    let mut rng = Rng::fresh();
    let mut shape = ggml_dhsa::kernels::Shape::new(4, 2, 64, 9, 50);
    shape.sinks = true;
    let mut op = random_op(shape, MaskKind::Causal, 0, &mut rng);
    op.mask.iter_mut().for_each(|m| *m = 0xFC00); // every key -inf
    op.run(None, 2, &mut Scratch::default(), &mut Counters::default()).unwrap();
    assert!(op.dst.iter().all(|&x| x == 0.0), "all-masked rows must be written as zeros");
}

#[test]
fn nan_in_q_propagates_like_the_reference() {
    let mut rng = Rng::fresh();
    let shape = ggml_dhsa::kernels::Shape::new(2, 1, 64, 4, 40);
    let mut op = random_op(shape, MaskKind::Causal, 0, &mut rng);
    op.q[5] = f32::NAN; // query 0 of head 0
    op.run(None, 1, &mut Scratch::default(), &mut Counters::default()).unwrap();
    let want = reference::attention(&op, None);
    assert!(op.dst_row(0, 0, 0).iter().all(|x| x.is_nan()));
    assert!(reference::max_rel_err(&op.dst, &want, 1.0) <= TOL);
}
