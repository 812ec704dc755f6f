//! The exact reference: FLASH_ATTN_EXT in float64, straight from the definition, over the values
//! the kernels see (decoded K/V, the f16 mask). Slow and obviously right; every kernel is checked
//! against it.

use crate::kernels::OwnedOp;

/// ALiBi slope of head `h`, as ggml defines it.
pub fn alibi_slope(n_head: usize, max_bias: f32, h: usize) -> f64 {
    if max_bias <= 0.0 {
        return 1.0;
    }
    let n_head_log2 = 1usize << (n_head as f64).log2().floor() as u32;
    let m0 = 2f64.powf(-(max_bias as f64) / n_head_log2 as f64);
    let m1 = 2f64.powf(-(max_bias as f64 / 2.0) / n_head_log2 as f64);
    if h < n_head_log2 { m0.powi(h as i32 + 1) } else { m1.powi(2 * (h - n_head_log2) as i32 + 1) }
}

/// The logit of (query iq of head h, key j) before the softmax, or -inf when masked.
pub fn logit(op: &OwnedOp, i3: usize, h: usize, iq: usize, j: usize, krow: &[f32]) -> f64 {
    let s = &op.shape;
    let m = op.mask_at(i3, h, iq, j) as f64 * alibi_slope(s.n_head, s.max_bias, h);
    if m == f64::NEG_INFINITY {
        return m;
    }
    let q = op.q_row(i3, h, iq);
    let dot: f64 = q.iter().zip(krow).map(|(a, b)| *a as f64 * *b as f64).sum();
    let mut x = dot * s.scale as f64;
    if s.softcap != 0.0 {
        x = s.softcap as f64 * (x / s.softcap as f64).tanh();
    }
    x + m
}

/// Output rows in dst's layout ([ne3][n_q][n_head][dv]). `keep(i3, h, iq, j)` limits the keys
/// (all visible keys when None).
pub fn attention(op: &OwnedOp, keep: Option<&dyn Fn(usize, usize, usize, usize) -> bool>) -> Vec<f64> {
    let s = &op.shape;
    let g = s.n_head / s.n_head_kv;
    let mut out = vec![0f64; s.ne3 * s.n_q * s.n_head * s.dv];
    for i3 in 0..s.ne3 {
        for hk in 0..s.n_head_kv {
            let krows: Vec<Vec<f32>> = (0..s.n_kv).map(|j| op.k_row(i3, hk, j)).collect();
            let vrows: Vec<Vec<f32>> = (0..s.n_kv).map(|j| op.v_row(i3, hk, j)).collect();
            for h in hk * g..(hk + 1) * g {
                for iq in 0..s.n_q {
                    let logits: Vec<f64> = (0..s.n_kv)
                        .map(|j| {
                            if keep.is_some_and(|k| !k(i3, h, iq, j)) {
                                f64::NEG_INFINITY
                            } else {
                                logit(op, i3, h, iq, j, &krows[j])
                            }
                        })
                        .collect();
                    let mut mx = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sink = s.sinks.then(|| op.sinks[h] as f64);
                    if let Some(sk) = sink {
                        mx = mx.max(sk);
                    }
                    let o = &mut out[((i3 * s.n_q + iq) * s.n_head + h) * s.dv..][..s.dv];
                    if logits.iter().any(|l| l.is_nan()) {
                        o.fill(f64::NAN); // a NaN score poisons the softmax, as in ggml
                        continue;
                    }
                    if mx == f64::NEG_INFINITY {
                        continue; // nothing visible: zeros
                    }
                    let mut denom = sink.map_or(0.0, |sk| (sk - mx).exp());
                    for (j, &l) in logits.iter().enumerate() {
                        if l == f64::NEG_INFINITY {
                            continue;
                        }
                        let p = (l - mx).exp();
                        denom += p;
                        for (d, x) in o.iter_mut().enumerate() {
                            *x += p * vrows[j][d] as f64;
                        }
                    }
                    if denom > 0.0 {
                        o.iter_mut().for_each(|x| *x /= denom);
                    }
                }
            }
        }
    }
    out
}

/// Largest |a - b| / (|b| + floor) over all elements, and whether any element of `a` is NaN
/// where `b` is not (or the other way round).
pub fn max_rel_err(a: &[f32], b: &[f64], floor: f64) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            if x.is_nan() != y.is_nan() {
                f64::INFINITY
            } else if x.is_nan() {
                0.0
            } else {
                (x as f64 - y).abs() / (y.abs() + floor)
            }
        })
        .fold(0.0, f64::max)
}
