//! Random attention ops with the masks llama.cpp produces (causal at a depth, padding, several
//! sequences in one batch, sliding windows, random holes, fully masked rows), for tests and
//! benchmarks.

use crate::kernels::{KvType, OwnedOp, Shape};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MaskKind {
    /// no mask tensor at all
    None,
    /// query i sits at position n_kv_visible - n_q + i; keys after it and padding are -inf
    Causal,
    /// two sequences share the batch and the cache, each causal within itself
    TwoSequences,
    /// causal, and only the last `window` positions visible (SWA layers)
    SlidingWindow(usize),
    /// each entry masked with probability 1/2, some rows fully masked
    Random,
}

/// Positions the mask refers to: keys [0, visible) are real cache cells, the rest padding.
pub fn causal_visible(n_q: usize, n_kv: usize, pad: usize) -> usize {
    n_kv.saturating_sub(pad).max(n_q.min(n_kv))
}

/// The mask value of (query iq, key j), before ALiBi: 0 or -|distance| (alibi) or -inf.
pub fn mask_value(kind: MaskKind, n_q: usize, visible: usize, iq: usize, j: usize, alibi: bool, rng: &mut Rng) -> f32 {
    let qpos = visible as i64 - n_q as i64 + iq as i64;
    let vis = |ok: bool| {
        if !ok {
            f32::NEG_INFINITY
        } else if alibi {
            -((qpos - j as i64).abs() as f32)
        } else {
            0.0
        }
    };
    if j >= visible {
        return f32::NEG_INFINITY;
    }
    match kind {
        MaskKind::None => 0.0,
        MaskKind::Causal => vis(j as i64 <= qpos),
        MaskKind::SlidingWindow(w) => vis(j as i64 <= qpos && (qpos - j as i64) < w as i64),
        MaskKind::TwoSequences => {
            // cells alternate between the sequences, queries too
            vis(j as i64 <= qpos && j % 2 == iq % 2)
        }
        MaskKind::Random => {
            if iq % 7 == 3 {
                f32::NEG_INFINITY
            } else {
                vis(rng.below(2) == 0)
            }
        }
    }
}

/// A random op of `shape` whose mask is `kind` (mask heads and sequences taken from shape.mask).
pub fn random_op(shape: Shape, kind: MaskKind, pad: usize, rng: &mut Rng) -> OwnedOp {
    let s = &shape;
    let q = rng.vec(s.ne3 * s.n_head * s.n_q * s.dk, -1.0, 1.0);
    let k = rng.vec(s.ne3 * s.n_head_kv * s.n_kv * s.dk, -1.0, 1.0);
    let v = rng.vec(s.ne3 * s.n_head_kv * s.n_kv * s.dv, -1.0, 1.0);
    let (m2, m3) = s.mask.unwrap_or((1, 1));
    let visible = causal_visible(s.n_q, s.n_kv, pad);
    let alibi = s.max_bias > 0.0;
    let mut mask = Vec::with_capacity(m3 * m2 * s.n_q * s.n_kv);
    for _ in 0..m3 * m2 {
        for iq in 0..s.n_q {
            for j in 0..s.n_kv {
                mask.push(mask_value(kind, s.n_q, visible, iq, j, alibi, rng));
            }
        }
    }
    let sinks = rng.vec(s.n_head, -10.0, 10.0);
    OwnedOp::new(shape, q, &k, &v, &mask, sinks)
}

/// A random shape within the limits the tests sweep.
pub fn random_shape(rng: &mut Rng) -> (Shape, MaskKind, usize) {
    let (dk, dv) = *rng.pick(&[(64, 64), (128, 128), (40, 40), (96, 64), (65, 67), (72, 64), (32, 32), (256, 256)]);
    let (n_head, n_head_kv) = *rng.pick(&[(1, 1), (4, 4), (9, 3), (8, 2), (12, 4), (6, 1), (32, 8)]);
    let n_q = *rng.pick(&[1, 2, 3, 7, 32, 40, 75, 130]);
    let n_kv = *rng.pick(&[1, 17, 64, 113, 256, 300]);
    let mut s = Shape::new(n_head, n_head_kv, 64, n_q, n_kv);
    s.dk = dk;
    s.dv = dv;
    s.scale = 1.0 / (dk as f32).sqrt();
    let q8 = |d: usize| d.is_multiple_of(32);
    let types: Vec<KvType> = KvType::ALL.iter().copied().filter(|t| *t != KvType::Q8_0 || (q8(dk) && q8(dv))).collect();
    s.k_type = *rng.pick(&types);
    s.v_type = *rng.pick(&types);
    s.ne3 = *rng.pick(&[1, 1, 2]);
    let kind = *rng.pick(&[
        MaskKind::None,
        MaskKind::Causal,
        MaskKind::Causal,
        MaskKind::TwoSequences,
        MaskKind::SlidingWindow(9),
        MaskKind::Random,
    ]);
    s.mask = if kind == MaskKind::None {
        None
    } else {
        let m2 = if rng.below(4) == 0 { n_head } else { 1 };
        let m3 = if s.ne3 > 1 && rng.below(2) == 0 { s.ne3 } else { 1 };
        Some((m2, m3))
    };
    s.sinks = rng.below(3) == 0;
    if s.mask.is_some() && rng.below(4) == 0 {
        s.max_bias = 8.0;
    }
    if rng.below(4) == 0 {
        s.softcap = 10.0;
    }
    let pad = if rng.below(2) == 0 { 0 } else { rng.below(n_kv / 2 + 1) };
    (s, kind, pad)
}

/// A causal op (queries at the end of `n_kv - pad` visible keys) whose keys come in runs of 4 to
/// 40 tokens around a shared direction, as keys of real text do (topics, phrases), so chunk
/// boundaries and chunk scores carry signal; each query leans towards the direction of one run of
/// its kv head, so its attention is peaked as in trained models (queries of
/// each 64 ask about the same four runs).
pub fn structured_op(shape: Shape, pad: usize, rng: &mut Rng) -> OwnedOp {
    let s = &shape;
    let visible = causal_visible(s.n_q, s.n_kv, pad);
    let mut k = Vec::with_capacity(s.ne3 * s.n_head_kv * s.n_kv * s.dk);
    // per (sequence, kv head): the direction of each run
    let mut centers: Vec<Vec<Vec<f32>>> = vec![];
    for _ in 0..s.ne3 * s.n_head_kv {
        let (mut left, mut runs) = (0usize, vec![]);
        for _ in 0..s.n_kv {
            if left == 0 {
                runs.push((0..s.dk).map(|_| rng.normal()).collect::<Vec<f32>>());
                left = 4 + rng.below(37);
            }
            left -= 1;
            k.extend(runs.last().unwrap().iter().map(|c| 0.8 * c + 0.6 * rng.normal()));
        }
        centers.push(runs);
    }
    let g = s.n_head / s.n_head_kv;
    let mut q = Vec::with_capacity(s.ne3 * s.n_head * s.n_q * s.dk);
    for i3 in 0..s.ne3 {
        for h in 0..s.n_head {
            let runs = &centers[i3 * s.n_head_kv + h / g];
            // queries near each other ask about the same few runs, as neighbouring tokens do
            let mut topics = [0usize; 4];
            for iq in 0..s.n_q {
                if iq % 64 == 0 {
                    topics = [0; 4].map(|_| rng.below(runs.len()));
                }
                let c = &runs[topics[rng.below(4)]];
                q.extend(c.iter().map(|x| x + 0.3 * rng.normal()));
            }
        }
    }
    let v = rng.vec(s.ne3 * s.n_head_kv * s.n_kv * s.dv, -1.0, 1.0);
    let (m2, m3) = s.mask.unwrap_or((1, 1));
    let alibi = s.max_bias > 0.0;
    let mut mask = Vec::with_capacity(m3 * m2 * s.n_q * s.n_kv);
    for _ in 0..m3 * m2 {
        for iq in 0..s.n_q {
            for j in 0..s.n_kv {
                mask.push(mask_value(MaskKind::Causal, s.n_q, visible, iq, j, alibi, rng));
            }
        }
    }
    let sinks = rng.vec(s.n_head, -10.0, 10.0);
    OwnedOp::new(shape, q, &k, &v, &mask, sinks)
}
