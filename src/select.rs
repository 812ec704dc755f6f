//! DHSA key selection: for every query block (and kv-head group, or all heads together), which keys
//! to attend to within the token budget. The heavy loops are C kernels (csrc/select.c); this file
//! strings them together and builds the span plan the attention kernel reads.
//!
//! Per op and sequence:
//!   1. frontier: the last visible key of every query row (from the mask); per block, the lowest and
//!      highest of those (`lo`, `hi`): the block's own positions, and its visible horizon.
//!   2. chunks over the keys up to the highest horizon. dhsa/dynamic: boundaries where the
//!      head-averaged mean key of `w` keys left and right of a position differ most (1 - cos),
//!      chosen greedily as the strongest boundary in [start + chunk_min, start + chunk_max] (a 1-D
//!      non-maximum suppression that also bounds chunk lengths); dhsa/fixed: every chunk_max keys;
//!      block: every block_size keys.
//!   3. chunk keys per kv head: sum / sqrt(len) (dhsa: length-normalised) or the mean (block);
//!      query means per block and kv head; scores = query mean . chunk key (summed over kv heads
//!      when one selection is shared by all heads).
//!   4. per block: sink [0, sink) and window [lo - window, hi] always; then chunks by descending
//!      score while they fit the budget (optionally until their estimated mass reaches tau);
//!      a block whose horizon fits the budget attends densely. oracle ranks single keys by their
//!      exact softmax mass instead; streaming keeps only sink and window.

use crate::config::{ChunkNorm, Chunking, Config, HeadScore, Mode};
use crate::kernels::{self, Op, Plan, Span};
use anyhow::Result;

#[derive(Default)]
pub struct Selector {
    last: Vec<i32>,
    bscore: Vec<f32>,
    starts: Vec<i32>,
    ckeys: Vec<f32>,
    pieces: Vec<i32>,
    owner: Vec<u32>,
    pkeys: Vec<f32>,
    pscores: Vec<f32>,
    qmeans: Vec<f32>,
    qheads: Vec<f32>,
    probe: Vec<f32>,
    scores: Vec<f32>,
    mass: Vec<f32>,
    order: Vec<u32>,
    ranges: Vec<(i32, i32)>,
}

/// A plan and what it chose.
pub struct Selection {
    pub plan: Plan,
    /// (block, group) pairs that attend to a selection
    pub sparse_blocks: usize,
    /// (block, group) pairs that attend to every visible key
    pub dense_blocks: usize,
}

/// Greedy boundary placement: each chunk ends at the strongest boundary score in the allowed range.
pub fn segment(scores: &[f32], min_len: usize, max_len: usize, starts: &mut Vec<i32>) {
    let n = scores.len();
    starts.clear();
    starts.push(0);
    let (min_len, max_len) = (min_len.max(1), max_len.max(min_len.max(1)));
    let mut s = 0usize;
    while n - s > max_len {
        let (lo, hi) = (s + min_len, (s + max_len).min(n - 1));
        let mut best = lo;
        for j in lo..=hi {
            if scores[j] > scores[best] {
                best = j;
            }
        }
        starts.push(best as i32);
        s = best;
    }
    starts.push(n as i32);
}

/// Fixed chunks of `len` keys over [0, n).
pub fn fixed_chunks(n: usize, len: usize, starts: &mut Vec<i32>) {
    starts.clear();
    starts.extend((0..n).step_by(len.max(1)).map(|s| s as i32));
    starts.push(n as i32);
}

/// dhsa chunk keys are sum / sqrt(len) (the paper's) unless configured as means or scored by
/// estimated mass (which needs the mean key); block's are means.
fn sqrt_normalised(cfg: &Config) -> bool {
    cfg.mode == Mode::Dhsa && cfg.chunk_norm == ChunkNorm::Sqrt && !mass_scored(cfg)
}

/// Scores that are log attention mass per key (combined across heads in linear space).
fn mass_scored(cfg: &Config) -> bool {
    cfg.mode == Mode::Dhsa && matches!(cfg.head_score.on_cpu(), HeadScore::Mass | HeadScore::Probe | HeadScore::Rows)
}

/// scores[block][kv head][chunk] = log mass per key of the chunk, summed over the kv head's query
/// heads, from `probe` = [block][q head][chunk] unnormalised log masses of each head's probe query
/// (each head's masses are normalised over the chunks first).
/// With `per` probes per block (probe rows [block * per + k]), their masses add up.
fn probe_scores(probe: &[f32], starts: &[i32], n_head: usize, nh: usize, per: usize, out: &mut [f32]) {
    let n_chunks = starts.len() - 1;
    let group = n_head / nh;
    let n_probe_rows = probe.len() / (n_head * n_chunks);
    for (i, row) in out.chunks_exact_mut(n_chunks).enumerate() {
        let (b, hk) = (i / nh, i % nh);
        row.fill(f32::NEG_INFINITY);
        for pb in b * per..((b + 1) * per).min(n_probe_rows) {
            for h in hk * group..(hk + 1) * group {
                let p = &probe[(pb * n_head + h) * n_chunks..][..n_chunks];
                let lse = p.iter().fold(f32::NEG_INFINITY, |a, &x| log_add(a, x));
                for (o, &x) in row.iter_mut().zip(p) {
                    *o = log_add(*o, x - lse);
                }
            }
        }
        per_key(row, starts);
    }
}

/// A row of log masses per chunk to log masses per key (minus each chunk's log length).
fn per_key(row: &mut [f32], starts: &[i32]) {
    for (c, o) in row.iter_mut().enumerate() {
        *o -= ((starts[c + 1] - starts[c]).max(1) as f32).ln();
    }
}

/// Splits every chunk into consecutive pieces of at most `pool` keys: `pieces` are their starts
/// (and the end), `owner[p]` the chunk of piece p.
pub fn split_pieces(starts: &[i32], pool: usize, pieces: &mut Vec<i32>, owner: &mut Vec<u32>) {
    pieces.clear();
    owner.clear();
    pieces.push(starts[0]);
    for (c, w) in starts.windows(2).enumerate() {
        let mut at = w[0];
        while at < w[1] {
            at = (at + pool as i32).min(w[1]);
            pieces.push(at);
            owner.push(c as u32);
        }
        if w[0] == w[1] {
            // an empty chunk keeps an empty piece, so every chunk owns at least one
            pieces.push(at);
            owner.push(c as u32);
        }
    }
}

/// out[c] = log of the summed masses of chunk c's pieces, from their logs.
pub fn add_piece_masses(piece_logs: &[f32], owner: &[u32], out: &mut [f32]) {
    out.fill(f32::NEG_INFINITY);
    for (&l, &c) in piece_logs.iter().zip(owner) {
        out[c as usize] = log_add(out[c as usize], l);
    }
}

fn log_add(a: f32, b: f32) -> f32 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f32::NEG_INFINITY { hi } else { hi + (lo - hi).exp().ln_1p() }
}

/// scores[block][kv head][chunk] = log of the estimated attention mass per key of the chunk,
/// summed over the kv head's query heads: head h's logit for chunk c is scale * (mean query .
/// mean key) and its softmax runs over every chunk, each weighted by its length (so a head whose
/// attention is spread thin counts less per chunk than a focused one).
#[allow(clippy::too_many_arguments)]
fn mass_scores(
    qheads: &[f32],
    ckeys: &[f32],
    starts: &[i32],
    scale: f32,
    n_head: usize,
    nh: usize,
    dk: usize,
    out: &mut [f32],
) {
    let n_chunks = ckeys.len() / (nh * dk);
    let group = n_head / nh;
    let mut logit = vec![0f32; n_chunks];
    for (i, row) in out.chunks_exact_mut(n_chunks).enumerate() {
        let (b, hk) = (i / nh, i % nh);
        row.fill(f32::NEG_INFINITY);
        for h in hk * group..(hk + 1) * group {
            let q = &qheads[(b * n_head + h) * dk..][..dk];
            let mut lse = f32::NEG_INFINITY;
            for (c, l) in logit.iter_mut().enumerate() {
                let k = &ckeys[(c * nh + hk) * dk..][..dk];
                *l = scale * q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
                let len = (starts[c + 1] - starts[c]).max(1) as f32;
                lse = log_add(lse, *l + len.ln());
            }
            for (o, &l) in row.iter_mut().zip(&logit) {
                *o = log_add(*o, l - lse);
            }
        }
    }
}

/// scores[block][kv head][chunk] = the best, over the kv head's query heads, of that head's mean
/// query . the chunk key. `qheads` is [block][q head][dk], `ckeys` [chunk][kv head][dk].
fn best_head_scores(qheads: &[f32], ckeys: &[f32], n_head: usize, nh: usize, dk: usize, out: &mut [f32]) {
    let n_chunks = ckeys.len() / (nh * dk);
    let group = n_head / nh;
    for (i, row) in out.chunks_exact_mut(n_chunks).enumerate() {
        let (b, hk) = (i / nh, i % nh);
        row.fill(f32::NEG_INFINITY);
        for h in hk * group..(hk + 1) * group {
            let q = &qheads[(b * n_head + h) * dk..][..dk];
            for (c, o) in row.iter_mut().enumerate() {
                let k = &ckeys[(c * nh + hk) * dk..][..dk];
                let d: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
                *o = o.max(d);
            }
        }
    }
}

fn overlap(a: (i32, i32), b: (i32, i32)) -> i32 {
    (a.1.min(b.1) - a.0.max(b.0)).max(0)
}

/// Sorts and merges ranges into disjoint spans appended to `out`; returns the keys they cover.
fn merge_into(ranges: &mut [(i32, i32)], out: &mut Vec<Span>) -> i64 {
    ranges.sort_unstable();
    let mut covered = 0i64;
    let mut cur: Option<(i32, i32)> = None;
    for &(a, b) in ranges.iter().filter(|r| r.1 > r.0) {
        cur = match cur {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some(c) => {
                out.push(Span { begin: c.0, end: c.1 });
                covered += (c.1 - c.0) as i64;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some(c) = cur {
        out.push(Span { begin: c.0, end: c.1 });
        covered += (c.1 - c.0) as i64;
    }
    covered
}

impl Selector {
    /// The plan for `op`, or None when the op is small enough for dense attention.
    ///
    /// # Safety
    /// `op`'s pointers must address valid tensors (see kernels::attention).
    pub unsafe fn select(&mut self, op: &Op, cfg: &Config, n_threads: usize) -> Result<Option<Selection>> {
        let n_kv = op.n_kv as usize;
        if cfg.mode == Mode::Dense || n_kv <= cfg.budget {
            return Ok(None);
        }
        let (n_q, nh, dk, ne3) = (op.n_q as usize, op.n_head_kv as usize, op.dk as usize, op.ne3 as usize);
        let q_block = cfg.q_block.min(n_q).max(1);
        let n_blocks = n_q.div_ceil(q_block);
        let n_sel = if cfg.shared_heads { 1 } else { nh };
        let mut plan = Plan {
            q_block,
            n_blocks,
            n_sel_groups: n_sel,
            spans: vec![],
            offsets: Vec::with_capacity(ne3 * n_blocks * n_sel + 1),
        };
        plan.offsets.push(0);
        let (mut sparse, mut dense) = (0, 0);

        for i3 in 0..ne3 {
            self.last.resize(n_q, 0);
            // SAFETY: forwarded from this function's contract (as for every kernel call below).
            unsafe { kernels::row_frontier(op, i3, &mut self.last, n_threads) };
            let bounds: Vec<(i32, i32)> = (0..n_blocks)
                .map(|b| {
                    let rows = &self.last[b * q_block..((b + 1) * q_block).min(n_q)];
                    let vis = rows.iter().copied().filter(|&l| l >= 0);
                    (vis.clone().min().unwrap_or(-1), vis.max().unwrap_or(-1))
                })
                .collect();
            let horizon = bounds.iter().map(|b| b.1 + 1).max().unwrap_or(0).max(0) as usize;
            let all_dense = bounds.iter().all(|b| (b.1 + 1) as usize <= cfg.budget);

            // chunks and their scores, shared by every block of this sequence
            let n_chunks = if all_dense || horizon == 0 {
                0
            } else {
                match cfg.mode {
                    Mode::Dhsa | Mode::Block => {
                        if cfg.mode == Mode::Block {
                            fixed_chunks(horizon, cfg.block_size, &mut self.starts);
                        } else if cfg.chunking == Chunking::Fixed {
                            fixed_chunks(horizon, cfg.chunk_max, &mut self.starts);
                        } else {
                            self.bscore.resize(horizon, 0.0);
                            unsafe {
                                kernels::boundary_scores(op, i3, cfg.boundary_window, &mut self.bscore, n_threads)
                            };
                            segment(&self.bscore, cfg.chunk_min, cfg.chunk_max, &mut self.starts);
                        }
                        let nc = self.starts.len() - 1;
                        let head_score = cfg.head_score.on_cpu();
                        let probed = cfg.mode == Mode::Dhsa && head_score == HeadScore::Probe;
                        let pooled = cfg.mode == Mode::Dhsa && head_score == HeadScore::Rows && cfg.row_pool > 0;
                        if !probed && !pooled {
                            self.ckeys.resize(nc * nh * dk, 0.0);
                            let normalised = sqrt_normalised(cfg);
                            unsafe {
                                kernels::chunk_keys(op, i3, &self.starts, normalised, &mut self.ckeys, n_threads)
                            };
                        }
                        self.scores.resize(n_blocks * nh * nc, 0.0);
                        let per_head_scores = cfg.mode == Mode::Dhsa && head_score != HeadScore::Mean;
                        if cfg.mode == Mode::Dhsa && head_score == HeadScore::Rows {
                            // the rows score pieces of at most row_pool keys of each chunk (whole
                            // chunks with 0) and each chunk gets the mass of its pieces
                            if pooled {
                                split_pieces(&self.starts, cfg.row_pool, &mut self.pieces, &mut self.owner);
                                self.pkeys.resize((self.pieces.len() - 1) * nh * dk, 0.0);
                                unsafe { kernels::chunk_keys(op, i3, &self.pieces, false, &mut self.pkeys, n_threads) };
                            }
                            let (starts, keys, out) = if pooled {
                                (&self.pieces, &self.pkeys, &mut self.pscores)
                            } else {
                                (&self.starts, &self.ckeys, &mut self.scores)
                            };
                            let np = starts.len() - 1;
                            out.resize(n_blocks * nh * np, 0.0);
                            unsafe {
                                kernels::query_chunk_mass(
                                    op,
                                    i3,
                                    q_block,
                                    cfg.row_step,
                                    &self.last,
                                    starts,
                                    keys,
                                    out,
                                    n_threads,
                                )
                            };
                            for (b, row) in self.scores.chunks_exact_mut(nc).enumerate() {
                                if pooled {
                                    add_piece_masses(&self.pscores[b * np..(b + 1) * np], &self.owner, row);
                                }
                                per_key(row, &self.starts);
                            }
                        } else if per_head_scores {
                            // each query head's mean over the block: the op seen with one kv head
                            // per query head (query_means reads only q)
                            let mut per_head = *op;
                            per_head.n_head_kv = op.n_head;
                            let n_head = op.n_head as usize;
                            // probe: `per` mean queries per block (of q_block / per queries each)
                            let per = if probed && q_block.is_multiple_of(cfg.probes) { cfg.probes } else { 1 };
                            let rows = n_q.div_ceil(q_block / per);
                            self.qheads.resize(rows * n_head * dk, 0.0);
                            unsafe { kernels::query_means(&per_head, i3, q_block / per, &mut self.qheads, n_threads) };
                            if probed {
                                self.probe.resize(rows * n_head * nc, 0.0);
                                unsafe {
                                    kernels::probe_chunk_mass(
                                        op,
                                        i3,
                                        &self.qheads,
                                        &self.starts,
                                        &mut self.probe,
                                        n_threads,
                                    )
                                };
                                probe_scores(&self.probe, &self.starts, n_head, nh, per, &mut self.scores);
                            } else if head_score == HeadScore::Max {
                                best_head_scores(&self.qheads, &self.ckeys, n_head, nh, dk, &mut self.scores);
                            } else {
                                mass_scores(
                                    &self.qheads,
                                    &self.ckeys,
                                    &self.starts,
                                    op.scale,
                                    n_head,
                                    nh,
                                    dk,
                                    &mut self.scores,
                                );
                            }
                        } else {
                            self.qmeans.resize(n_blocks * nh * dk, 0.0);
                            unsafe { kernels::query_means(op, i3, q_block, &mut self.qmeans, n_threads) };
                            kernels::chunk_scores(op, n_blocks, &self.qmeans, &self.ckeys, &mut self.scores, n_threads);
                        }
                        if n_sel == 1 && mass_scored(cfg) {
                            // log masses of the kv heads: add them in linear space
                            for b in 0..n_blocks {
                                let (first, rest) = self.scores[b * nh * nc..(b + 1) * nh * nc].split_at_mut(nc);
                                for h in 1..nh {
                                    first
                                        .iter_mut()
                                        .zip(&rest[(h - 1) * nc..h * nc])
                                        .for_each(|(a, x)| *a = log_add(*a, *x));
                                }
                            }
                        } else if n_sel == 1 {
                            // one selection for all heads: sum the kv heads' scores into the first
                            for b in 0..n_blocks {
                                let (first, rest) = self.scores[b * nh * nc..(b + 1) * nh * nc].split_at_mut(nc);
                                for h in 1..nh {
                                    first.iter_mut().zip(&rest[(h - 1) * nc..h * nc]).for_each(|(a, x)| *a += x);
                                }
                            }
                        }
                        nc
                    }
                    Mode::Oracle => {
                        self.mass.resize(n_blocks * n_sel * n_kv, 0.0);
                        unsafe { kernels::key_mass(op, i3, q_block, n_sel, &mut self.mass, n_threads) };
                        0
                    }
                    Mode::Streaming | Mode::Dense => 0,
                }
            };

            for (b, &(lo, hi)) in bounds.iter().enumerate() {
                for s in 0..n_sel {
                    let visible = (hi + 1).max(0) as usize;
                    self.ranges.clear();
                    if hi < 0 {
                        // nothing visible: no keys
                    } else if visible <= cfg.budget {
                        self.ranges.push((0, hi + 1));
                        dense += 1;
                    } else {
                        self.fixed(cfg, lo, hi);
                        match cfg.mode {
                            Mode::Dhsa | Mode::Block => {
                                let row = if n_sel == 1 { b * nh * n_chunks } else { (b * nh + s) * n_chunks };
                                self.pick_chunks(cfg, op, row, n_chunks, hi, nh / n_sel);
                            }
                            Mode::Oracle => self.pick_keys(cfg, (b * n_sel + s) * n_kv, n_kv, hi),
                            _ => {}
                        }
                        sparse += 1;
                    }
                    merge_into(&mut self.ranges, &mut plan.spans);
                    plan.offsets.push(plan.spans.len() as i64);
                }
            }
        }
        Ok(Some(Selection { plan, sparse_blocks: sparse, dense_blocks: dense }))
    }

    /// Chunk starts of the last sequence of the last selection (the horizon last), for tests that
    /// compare another implementation's chunks.
    pub fn chunk_starts(&self) -> &[i32] {
        &self.starts
    }

    /// Boundary scores of the last sequence of the last dynamic-chunk selection.
    pub fn boundary_scores(&self) -> &[f32] {
        &self.bscore
    }

    /// Sink and window of a block whose own rows end at keys lo..=hi.
    fn fixed(&mut self, cfg: &Config, lo: i32, hi: i32) {
        self.ranges.push((0, (cfg.sink as i32).min(hi + 1)));
        self.ranges.push(((lo - cfg.window as i32).max(0), hi + 1));
    }

    /// Budget already used by the fixed ranges (they overlap at most each other).
    fn fixed_used(&self) -> (i32, [(i32, i32); 2]) {
        let (a, b) = (self.ranges[0], self.ranges[1]);
        ((a.1 - a.0) + (b.1 - b.0) - overlap(a, b), [a, b])
    }

    fn pick_chunks(&mut self, cfg: &Config, op: &Op, row: usize, n_chunks: usize, hi: i32, heads_summed: usize) {
        let (mut used, fixed) = self.fixed_used();
        let budget = cfg.budget as i32;
        let min_len = match (cfg.mode, cfg.chunking) {
            (Mode::Block, _) => cfg.block_size,
            (_, Chunking::Fixed) => cfg.chunk_max,
            _ => cfg.chunk_min,
        }
        .max(1) as i32;
        let scores = &self.scores[row..row + n_chunks];
        let starts = &self.starts;
        // candidates: chunks that start at or before the horizon, with keys outside sink/window
        let new_keys = |c: usize| -> i32 {
            let r = (starts[c], starts[c + 1].min(hi + 1));
            (r.1 - r.0).max(0) - overlap(r, fixed[0]) - overlap(r, fixed[1])
                + overlap(r, (fixed[0].0.max(fixed[1].0), fixed[0].1.min(fixed[1].1)))
        };
        self.order.clear();
        self.order.extend((0..n_chunks as u32).filter(|&c| starts[c as usize] <= hi));
        // only the best few can fit: partition them to the front and sort just those; the rest is
        // sorted only if the budget is still not full after them
        let by_score = |a: &u32, b: &u32| scores[*b as usize].total_cmp(&scores[*a as usize]);
        let head = (budget / min_len + 1).max(0) as usize;
        let head = head.min(self.order.len());
        if head < self.order.len() {
            self.order.select_nth_unstable_by(head, by_score);
        }
        self.order[..head].sort_unstable_by(by_score);

        // adaptive budget: estimated mass of a chunk = len * exp(scale * mean dot)
        let tau = cfg.tau as f64;
        let mass = mass_scored(cfg);
        let est = |c: usize| -> f64 {
            let len = (starts[c + 1].min(hi + 1) - starts[c]).max(0) as f64;
            if mass {
                // the score is already the log mass per key
                return (len.max(1.0)).ln() + scores[c] as f64;
            }
            let norm = if sqrt_normalised(cfg) { len.sqrt().max(1.0) } else { 1.0 };
            let mean_dot = scores[c] as f64 / norm / heads_summed as f64;
            (len.max(1.0)).ln() + op.scale as f64 * mean_dot
        };
        let (mut total, mut have, mut amax) = (0f64, 0f64, f64::NEG_INFINITY);
        if tau > 0.0 {
            for &c in &self.order {
                amax = amax.max(est(c as usize));
            }
            for &c in &self.order {
                let c = c as usize;
                let m = (est(c) - amax).exp();
                total += m;
                let len = (starts[c + 1].min(hi + 1) - starts[c]).max(1);
                have += m * (1.0 - new_keys(c) as f64 / len as f64);
            }
        }
        for i in 0..self.order.len() {
            if tau > 0.0 && have >= tau * total {
                break;
            }
            if i == head {
                self.order[head..].sort_unstable_by(by_score);
            }
            let c = self.order[i] as usize;
            let n = new_keys(c);
            if n <= 0 || used + n > budget {
                continue;
            }
            used += n;
            self.ranges.push((starts[c], starts[c + 1].min(hi + 1)));
            if tau > 0.0 {
                let len = (starts[c + 1].min(hi + 1) - starts[c]).max(1);
                have += (est(c) - amax).exp() * n as f64 / len as f64;
            }
            // a chunk cut by the sink, the window or the causal edge adds fewer keys than the
            // shortest chunk, so only a full budget ends the search
            if used >= budget {
                break;
            }
        }
    }

    fn pick_keys(&mut self, cfg: &Config, row: usize, n_kv: usize, hi: i32) {
        let (used, fixed) = self.fixed_used();
        let mass = &self.mass[row..row + n_kv];
        let inside = |j: i32| (j >= fixed[0].0 && j < fixed[0].1) || (j >= fixed[1].0 && j < fixed[1].1);
        self.order.clear();
        self.order.extend((0..=hi as u32).filter(|&j| !inside(j as i32)));
        let room = (cfg.budget as i32 - used).max(0) as usize;
        if room < self.order.len() {
            self.order.select_nth_unstable_by(room, |&a, &b| mass[b as usize].total_cmp(&mass[a as usize]));
            self.order.truncate(room);
        }
        self.ranges.extend(self.order.iter().map(|&j| (j as i32, j as i32 + 1)));
    }
}

#[cfg(test)]
mod tests {
    use super::{add_piece_masses, split_pieces};

    #[test]
    fn pieces_cover_each_chunk_in_order_and_no_longer_than_the_pool() {
        let starts = [0, 8, 11, 11, 40];
        let (mut pieces, mut owner) = (vec![], vec![]);
        split_pieces(&starts, 4, &mut pieces, &mut owner);
        assert_eq!(pieces, [0, 4, 8, 11, 11, 15, 19, 23, 27, 31, 35, 39, 40]);
        assert_eq!(owner, [0, 0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3]);
        split_pieces(&starts, 64, &mut pieces, &mut owner);
        assert_eq!(pieces, starts, "a pool at least as long as every chunk keeps the chunks");
        assert_eq!(owner, [0, 1, 2, 3]);
    }

    #[test]
    fn a_chunk_gets_the_summed_mass_of_its_pieces() {
        let logs = [0.5f32.ln(), 0.25f32.ln(), f32::NEG_INFINITY, 0.125f32.ln(), 0.0625f32.ln()];
        let mut out = [0.0f32; 3];
        add_piece_masses(&logs, &[0, 0, 1, 2, 2], &mut out);
        let want = [0.75f64.ln(), f64::NEG_INFINITY, 0.1875f64.ln()];
        for (g, w) in out.iter().zip(want) {
            assert!(g == &(w as f32) || (*g as f64 - w).abs() < 1e-6, "{out:?} against {want:?}");
        }
    }
}
