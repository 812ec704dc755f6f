//! The selection kernels (csrc/select.c) against straightforward Rust versions of their
//! definitions, on fresh random ops: boundary scores, chunk keys, query means, chunk scores, key
//! mass; and segmentation on a planted change point. Tolerances are relative to the quantities'
//! magnitudes (f32 sums of at most a few thousand terms): 1e-4.

#![allow(clippy::needless_range_loop)] // index loops mirror the definitions

use ggml_dhsa::kernels::{self, KvType, OwnedOp, Shape};
use ggml_dhsa::opgen::{MaskKind, random_op};
use ggml_dhsa::rng::Rng;
use ggml_dhsa::select::segment;

fn op(rng: &mut Rng, n_kv: usize) -> OwnedOp {
    let (nh, nhk, d) = *rng.pick(&[(9, 3, 64), (8, 2, 40), (4, 4, 32)]);
    let mut s = Shape::new(nh, nhk, d, 37, n_kv);
    s.k_type = *rng.pick(&[KvType::F16, KvType::F32, KvType::Bf16]);
    random_op(s, MaskKind::Causal, 3, rng)
}

fn close(a: f32, b: f64, scale: f64) -> bool {
    ((a as f64) - b).abs() <= 1e-4 * scale.max(1.0)
}

/// The head-summed key of row j.
fn head_sum(o: &OwnedOp, j: usize) -> Vec<f64> {
    let mut v = vec![0f64; o.shape.dk];
    for hk in 0..o.shape.n_head_kv {
        for (x, k) in v.iter_mut().zip(o.k_row(0, hk, j)) {
            *x += k as f64;
        }
    }
    v
}

#[test]
fn boundary_scores_are_one_minus_the_cosine_of_the_side_means() {
    let mut rng = Rng::fresh();
    for _ in 0..6 {
        let mut o = op(&mut rng, 300);
        let w = *rng.pick(&[1, 2, 4, 8]);
        let n = o.shape.n_kv - rng.below(20);
        let mut got = vec![0f32; n];
        let raw = o.op();
        // SAFETY: raw points into o's buffers.
        unsafe { kernels::boundary_scores(&raw, 0, w, &mut got, 2) };
        let sums: Vec<Vec<f64>> = (0..n).map(|j| head_sum(&o, j)).collect();
        for j in 0..n {
            let side = |a: usize, b: usize| -> Vec<f64> {
                (a..b).fold(vec![0f64; o.shape.dk], |mut acc, r| {
                    acc.iter_mut().zip(&sums[r]).for_each(|(x, y)| *x += y);
                    acc
                })
            };
            let (l, r) = (side(j.saturating_sub(w), j), side(j, (j + w).min(n)));
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            let (ll, rr, lr) = (dot(&l, &l), dot(&r, &r), dot(&l, &r));
            let want = if j == 0 || ll <= 0.0 || rr <= 0.0 { 0.0 } else { 1.0 - lr / (ll * rr).sqrt() };
            assert!(close(got[j], want, 1.0), "j {j} w {w}: {} vs {want}", got[j]);
        }
    }
}

#[test]
fn segmentation_cuts_at_a_planted_change_and_bounds_lengths() {
    // keys constant along one direction before position 100, another after: the strongest
    // boundary is exactly 100
    let mut s = Shape::new(2, 1, 16, 4, 240);
    s.k_type = KvType::F32;
    let k: Vec<f32> =
        (0..240).flat_map(|j| (0..16).map(move |d| if (j < 100) == (d < 8) { 1.0 } else { 0.05 })).collect();
    let v = vec![0.5f32; 240 * 16];
    let mut o = OwnedOp::new(s, vec![0.1; 2 * 4 * 16], &k, &v, &vec![0.0; 4 * 240], vec![]);
    let mut scores = vec![0f32; 240];
    let raw = o.op();
    // SAFETY: raw points into o's buffers.
    unsafe { kernels::boundary_scores(&raw, 0, 4, &mut scores, 1) };
    let best = (1..240).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
    assert_eq!(best, 100, "{:?}", &scores[95..105]);
    let mut starts = vec![];
    segment(&scores, 8, 32, &mut starts);
    assert!(starts.contains(&100), "{starts:?}");
    assert_eq!((starts[0], *starts.last().unwrap()), (0, 240));
    for w in starts.windows(2) {
        let len = w[1] - w[0];
        let last = w[1] == 240;
        assert!(len <= 32 && (len >= 8 || last), "chunk {w:?}");
    }
}

#[test]
fn chunk_keys_query_means_and_scores_follow_their_definitions() {
    let mut rng = Rng::fresh();
    for normalised in [true, false] {
        let mut o = op(&mut rng, 257);
        let s = o.shape.clone();
        let starts: Vec<i32> = vec![0, 1, 9, 40, 41, 100, 180, 257];
        let nc = starts.len() - 1;
        let mut ck = vec![0f32; nc * s.n_head_kv * s.dk];
        let raw = o.op();
        // SAFETY: raw points into o's buffers.
        unsafe { kernels::chunk_keys(&raw, 0, &starts, normalised, &mut ck, 2) };
        for c in 0..nc {
            let len = (starts[c + 1] - starts[c]) as f64;
            for hk in 0..s.n_head_kv {
                let mut want = vec![0f64; s.dk];
                for j in starts[c] as usize..starts[c + 1] as usize {
                    want.iter_mut().zip(o.k_row(0, hk, j)).for_each(|(x, k)| *x += k as f64);
                }
                let f = if normalised { 1.0 / len.sqrt() } else { 1.0 / len };
                for d in 0..s.dk {
                    assert!(close(ck[(c * s.n_head_kv + hk) * s.dk + d], want[d] * f, len), "chunk {c} head {hk}");
                }
            }
        }
        let qb = 16;
        let nb = s.n_q.div_ceil(qb);
        let mut qm = vec![0f32; nb * s.n_head_kv * s.dk];
        // SAFETY: as above.
        unsafe { kernels::query_means(&raw, 0, qb, &mut qm, 2) };
        let g = s.n_head / s.n_head_kv;
        for b in 0..nb {
            for hk in 0..s.n_head_kv {
                let rows: Vec<(usize, usize)> = (hk * g..(hk + 1) * g)
                    .flat_map(|h| (b * qb..((b + 1) * qb).min(s.n_q)).map(move |q| (h, q)))
                    .collect();
                for d in 0..s.dk {
                    let want = rows.iter().map(|&(h, q)| o.q_row(0, h, q)[d] as f64).sum::<f64>() / rows.len() as f64;
                    assert!(close(qm[(b * s.n_head_kv + hk) * s.dk + d], want, 1.0));
                }
            }
        }
        let mut sc = vec![0f32; nb * s.n_head_kv * nc];
        kernels::chunk_scores(&raw, nb, &qm, &ck, &mut sc, 2);
        for i in 0..nb * s.n_head_kv {
            for c in 0..nc {
                let hk = i % s.n_head_kv;
                let want: f64 =
                    (0..s.dk).map(|d| qm[i * s.dk + d] as f64 * ck[(c * s.n_head_kv + hk) * s.dk + d] as f64).sum();
                assert!(close(sc[i * nc + c], want, want.abs()));
            }
        }
    }
}

#[test]
fn key_mass_is_the_softmax_mass_summed_over_a_block() {
    let mut rng = Rng::fresh();
    let mut o = op(&mut rng, 150);
    let s = o.shape.clone();
    let (qb, g) = (8, s.n_head / s.n_head_kv);
    let nb = s.n_q.div_ceil(qb);
    let raw = o.op();
    for n_sel in [1, s.n_head_kv] {
        let mut mass = vec![0f32; nb * n_sel * s.n_kv];
        // SAFETY: as above.
        unsafe { kernels::key_mass(&raw, 0, qb, n_sel, &mut mass, 2) };
        let mut want = vec![0f64; nb * n_sel * s.n_kv];
        for h in 0..s.n_head {
            let krows: Vec<Vec<f32>> = (0..s.n_kv).map(|j| o.k_row(0, h / g, j)).collect();
            for q in 0..s.n_q {
                let l: Vec<f64> = (0..s.n_kv).map(|j| ggml_dhsa::reference::logit(&o, 0, h, q, j, &krows[j])).collect();
                let mx = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if mx == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = l.iter().map(|x| (x - mx).exp()).sum();
                let row = (q / qb) * n_sel + if n_sel == 1 { 0 } else { h / g };
                for j in 0..s.n_kv {
                    want[row * s.n_kv + j] += (l[j] - mx).exp() / z;
                }
            }
        }
        for (i, (&a, &b)) in mass.iter().zip(&want).enumerate() {
            assert!(close(a, b, 1.0), "mass {i}: {a} vs {b}");
        }
    }
}

#[test]
fn rows_chunk_mass_is_each_rows_softmax_over_chunk_keys_summed_over_a_block() {
    let mut rng = Rng::fresh();
    for row_step in [1, 3] {
        let mut o = op(&mut rng, 200);
        let s = o.shape.clone();
        let raw = o.op();
        let starts: Vec<i32> = vec![0, 5, 13, 40, 41, 90, 150, 200];
        let nc = starts.len() - 1;
        let mut ck = vec![0f32; nc * s.n_head_kv * s.dk];
        // SAFETY: raw points into o's buffers (as for every kernel call below).
        unsafe { kernels::chunk_keys(&raw, 0, &starts, false, &mut ck, 2) };
        // rows see different numbers of chunks: last visible keys spread over [0, 200)
        let last: Vec<i32> = (0..s.n_q).map(|q| (q * 199 / (s.n_q - 1)) as i32 - 3).collect();
        let (qb, g) = (8, s.n_head / s.n_head_kv);
        let nb = s.n_q.div_ceil(qb);
        let mut got = vec![0f32; nb * s.n_head_kv * nc];
        unsafe { kernels::query_chunk_mass(&raw, 0, qb, row_step, &last, &starts, &ck, &mut got, 2) };
        let (scale, softcap) = (raw.scale as f64, raw.softcap as f64);
        for b in 0..nb {
            for hk in 0..s.n_head_kv {
                let mut want = vec![0f64; nc];
                for q in (b * qb..((b + 1) * qb).min(s.n_q)).step_by(row_step) {
                    let seen = starts[..nc].iter().filter(|&&st| st <= last[q]).count();
                    for h in hk * g..(hk + 1) * g {
                        let qr = o.q_row(0, h, q);
                        let l: Vec<f64> = (0..seen)
                            .map(|c| {
                                let k = &ck[(c * s.n_head_kv + hk) * s.dk..][..s.dk];
                                let d: f64 = qr.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
                                let x = if softcap != 0.0 { softcap * (scale * d / softcap).tanh() } else { scale * d };
                                x + ((starts[c + 1] - starts[c]) as f64).ln()
                            })
                            .collect();
                        let mx = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = l.iter().map(|x| (x - mx).exp()).sum();
                        for c in 0..seen {
                            want[c] += (l[c] - mx).exp() / z;
                        }
                    }
                }
                for c in 0..nc {
                    let a = got[(b * s.n_head_kv + hk) * nc + c];
                    if want[c] == 0.0 {
                        assert_eq!(a, f32::NEG_INFINITY, "block {b} head {hk} chunk {c}: no row sees it");
                    } else {
                        assert!(
                            (a as f64 - want[c].ln()).abs() <= 1e-4,
                            "block {b} head {hk} chunk {c}: {a} vs {}",
                            want[c].ln()
                        );
                    }
                }
            }
        }
    }
}
