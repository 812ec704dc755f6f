//! The Rust face of `csrc/dhsa.h`: the op description, key spans and plans, and the calls into the
//! C kernels. `OwnedOp` holds an op's data in Rust buffers (tests, benchmarks, captured ops).

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
pub(crate) mod ffi {
    include!(concat!(env!("OUT_DIR"), "/dhsa_kernels.rs"));
}

use anyhow::{Result, bail};
use std::ffi::CStr;

pub use ffi::dhsa_counters as Counters;
pub use ffi::dhsa_op as Op;
pub use ffi::dhsa_span as Span;

/// Element types of K and V the kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum KvType {
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl KvType {
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Bf16, KvType::Q8_0];

    pub fn code(self) -> i32 {
        (match self {
            KvType::F32 => ffi::DHSA_F32,
            KvType::F16 => ffi::DHSA_F16,
            KvType::Bf16 => ffi::DHSA_BF16,
            KvType::Q8_0 => ffi::DHSA_Q8_0,
        }) as i32
    }

    /// Bytes of a row of `n` elements.
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            KvType::F32 => 4 * n,
            KvType::F16 | KvType::Bf16 => 2 * n,
            KvType::Q8_0 => n / 32 * 34,
        }
    }
}

/// Why the kernels cannot compute `op` exactly, if they cannot.
pub fn unsupported(op: &Op) -> Option<&'static str> {
    // SAFETY: dhsa_op_unsupported only reads the plain fields of op (no pointer is dereferenced)
    // and returns NULL or a static string.
    let p = unsafe { ffi::dhsa_op_unsupported(op) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null results are static NUL-terminated strings in the C library.
    Some(unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("unsupported op"))
}

pub fn kv_tile() -> usize {
    // SAFETY: returns a constant.
    unsafe { ffi::dhsa_kv_tile() as usize }
}

pub fn q_tile(op: &Op, q_block: usize) -> usize {
    // SAFETY: reads plain fields of op.
    unsafe { ffi::dhsa_q_tile(op, q_block as i64) as usize }
}

/// The SIMD level the C kernels were compiled for.
pub fn simd_name() -> &'static str {
    // SAFETY: returns a static string.
    unsafe { CStr::from_ptr(ffi::dhsa_simd_name()) }.to_str().unwrap_or("?")
}

/// Which keys each query block attends to (see `dhsa_plan` in csrc/dhsa.h).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub q_block: usize,
    pub n_blocks: usize,
    pub n_sel_groups: usize,
    pub spans: Vec<Span>,
    /// n_seq * n_blocks * n_sel_groups + 1 offsets into `spans`
    pub offsets: Vec<i64>,
}

impl Plan {
    /// The span list of (sequence, block, selection group).
    pub fn spans_of(&self, i3: usize, b: usize, s: usize) -> &[Span] {
        let i = (i3 * self.n_blocks + b) * self.n_sel_groups + s;
        &self.spans[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    fn raw(&self) -> ffi::dhsa_plan {
        ffi::dhsa_plan {
            q_block: self.q_block as i64,
            n_blocks: self.n_blocks as i64,
            n_sel_groups: self.n_sel_groups as i64,
            spans: self.spans.as_ptr(),
            offsets: self.offsets.as_ptr(),
        }
    }
}

/// Per-thread scratch for the attention kernel, grown on demand and reused across ops.
#[derive(Default)]
pub struct Scratch {
    buf: Vec<f32>,
}

impl Scratch {
    fn reserve(&mut self, per_thread: usize, n_threads: usize) -> (*mut f32, i64) {
        let stride = per_thread.next_multiple_of(16);
        let need = stride * n_threads;
        if self.buf.len() < need {
            self.buf.resize(need, 0.0);
        }
        (self.buf.as_mut_ptr(), stride as i64)
    }

    pub fn bytes(&self) -> usize {
        self.buf.len() * 4
    }
}

/// Computes `op` (dense when `plan` is None) with `n_threads` threads; adds to `counters`.
///
/// # Safety
/// Every pointer in `op` must address memory laid out as its shapes and strides describe
/// (`q`, `k`, `v`, `mask`, `sinks` readable, `dst` writable), for the whole call.
pub unsafe fn attention(
    op: &Op,
    plan: Option<&Plan>,
    n_threads: usize,
    scratch: &mut Scratch,
    count_visible: bool,
    counters: &mut Counters,
) -> Result<()> {
    if let Some(why) = unsupported(op) {
        bail!("op not computed: {why}");
    }
    let q_block = plan.map_or(0, |p| p.q_block);
    // SAFETY: reads plain fields of op.
    let per_thread = unsafe { ffi::dhsa_attention_scratch_floats(op, q_block as i64) } as usize;
    let n_threads = n_threads.max(1);
    let (ptr, stride) = scratch.reserve(per_thread, n_threads);
    let raw = plan.map(Plan::raw);
    if let Some(p) = plan {
        let n_seq = op.ne3 as usize;
        if p.offsets.len() != n_seq * p.n_blocks * p.n_sel_groups + 1
            || p.offsets.last().copied() != Some(p.spans.len() as i64)
        {
            bail!("malformed plan: offsets do not match spans");
        }
    }
    // SAFETY: op's pointers are valid per this function's contract; the scratch block holds
    // n_threads * stride floats; the plan's slices outlive the call and were checked above.
    let rc = unsafe {
        ffi::dhsa_attention(
            op,
            raw.as_ref().map_or(std::ptr::null(), |r| r as *const _),
            n_threads as i32,
            ptr,
            stride,
            count_visible as i32,
            counters,
        )
    };
    if rc != 0 {
        bail!("the attention kernel refused its arguments");
    }
    Ok(())
}

// ---- element encodings, as ggml defines them -------------------------------------------------

pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let mut r = m >> shift;
        let rem = m & ((1 << shift) - 1);
        if rem > half || (rem == half && (r & 1) == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && (r & 1) == 1) {
        r += 1;
    }
    sign | r as u16
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0x1f {
        sign | 0x7f80_0000 | (man << 13)
    } else if exp != 0 {
        sign | ((exp + 112) << 23) | (man << 13)
    } else if man == 0 {
        sign
    } else {
        let mut e = 113u32;
        let mut m = man;
        while m & 0x400 == 0 {
            m <<= 1;
            e -= 1;
        }
        sign | (e << 23) | ((m & 0x3ff) << 13)
    };
    f32::from_bits(bits)
}

pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Encodes a row of f32 values as `t` (q8_0: ggml's reference quantizer).
pub fn encode_row(t: KvType, x: &[f32], out: &mut Vec<u8>) {
    match t {
        KvType::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        KvType::F16 => x.iter().for_each(|v| out.extend_from_slice(&f32_to_f16(*v).to_le_bytes())),
        KvType::Bf16 => x.iter().for_each(|v| out.extend_from_slice(&f32_to_bf16(*v).to_le_bytes())),
        KvType::Q8_0 => {
            for blk in x.chunks(32) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
                out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
    }
}

/// Decodes a row of `n` elements of type `t` (what the kernels see).
pub fn decode_row(t: KvType, bytes: &[u8], n: usize) -> Vec<f32> {
    match t {
        KvType::F32 => bytes.chunks_exact(4).take(n).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        KvType::F16 => bytes.chunks_exact(2).take(n).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        KvType::Bf16 => bytes.chunks_exact(2).take(n).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        KvType::Q8_0 => {
            let mut v = Vec::with_capacity(n);
            for blk in bytes.chunks_exact(34).take(n / 32) {
                let d = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                v.extend(blk[2..].iter().map(|&q| d * (q as i8) as f32));
            }
            v
        }
    }
}

/// Shapes and parameters of an attention op (ggml's FLASH_ATTN_EXT).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Shape {
    pub dk: usize,
    pub dv: usize,
    pub n_q: usize,
    pub n_kv: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub ne3: usize,
    pub k_type: KvType,
    pub v_type: KvType,
    /// mask heads (1: shared by all heads) and mask sequences; None: no mask
    pub mask: Option<(usize, usize)>,
    pub sinks: bool,
    pub scale: f32,
    pub max_bias: f32,
    pub softcap: f32,
}

impl Shape {
    pub fn new(n_head: usize, n_head_kv: usize, d: usize, n_q: usize, n_kv: usize) -> Shape {
        Shape {
            dk: d,
            dv: d,
            n_q,
            n_kv,
            n_head,
            n_head_kv,
            ne3: 1,
            k_type: KvType::F16,
            v_type: KvType::F16,
            mask: Some((1, 1)),
            sinks: false,
            scale: 1.0 / (d as f32).sqrt(),
            max_bias: 0.0,
            softcap: 0.0,
        }
    }
}

/// An op whose data lives in Rust buffers, laid out contiguously as ggml would.
#[derive(Debug, Clone)]
pub struct OwnedOp {
    pub shape: Shape,
    /// [ne3][n_head][n_q][dk]
    pub q: Vec<f32>,
    /// [ne3][n_head_kv][n_kv] rows of dk elements, encoded
    pub k: Vec<u8>,
    pub v: Vec<u8>,
    /// [m_ne3][m_ne2][n_q][n_kv] f16 bits
    pub mask: Vec<u16>,
    pub sinks: Vec<f32>,
    /// [ne3][n_q][n_head][dv]
    pub dst: Vec<f32>,
}

impl OwnedOp {
    /// Encodes f32 K and V (layout [ne3][n_head_kv][n_kv][d]) and a float mask.
    pub fn new(shape: Shape, q: Vec<f32>, k: &[f32], v: &[f32], mask: &[f32], sinks: Vec<f32>) -> OwnedOp {
        let s = &shape;
        let mut kb = Vec::new();
        for row in k.chunks(s.dk) {
            encode_row(s.k_type, row, &mut kb);
        }
        let mut vb = Vec::new();
        for row in v.chunks(s.dv) {
            encode_row(s.v_type, row, &mut vb);
        }
        let mask = mask.iter().map(|&m| f32_to_f16(m)).collect();
        let dst = vec![f32::NAN; s.ne3 * s.n_q * s.n_head * s.dv];
        OwnedOp { shape, q, k: kb, v: vb, mask, sinks, dst }
    }

    /// The op over these buffers; valid while `self` is neither moved nor resized.
    pub fn op(&mut self) -> Op {
        let s = &self.shape;
        let (kr, vr) = (s.k_type.row_bytes(s.dk), s.v_type.row_bytes(s.dv));
        let (m2, m3) = s.mask.unwrap_or((0, 0));
        Op {
            q: self.q.as_ptr() as *const _,
            k: self.k.as_ptr() as *const _,
            v: self.v.as_ptr() as *const _,
            mask: if s.mask.is_some() { self.mask.as_ptr() } else { std::ptr::null() },
            sinks: if s.sinks { self.sinks.as_ptr() } else { std::ptr::null() },
            dst: self.dst.as_mut_ptr(),
            k_type: s.k_type.code(),
            v_type: s.v_type.code(),
            dk: s.dk as i64,
            dv: s.dv as i64,
            n_q: s.n_q as i64,
            n_kv: s.n_kv as i64,
            n_head: s.n_head as i64,
            n_head_kv: s.n_head_kv as i64,
            ne3: s.ne3 as i64,
            mask_ne2: m2 as i64,
            mask_ne3: m3 as i64,
            q_nb1: 4 * s.dk,
            q_nb2: 4 * s.dk * s.n_q,
            q_nb3: 4 * s.dk * s.n_q * s.n_head,
            k_nb1: kr,
            k_nb2: kr * s.n_kv,
            k_nb3: kr * s.n_kv * s.n_head_kv,
            v_nb1: vr,
            v_nb2: vr * s.n_kv,
            v_nb3: vr * s.n_kv * s.n_head_kv,
            mask_nb1: 2 * s.n_kv,
            mask_nb2: 2 * s.n_kv * s.n_q,
            mask_nb3: 2 * s.n_kv * s.n_q * m2.max(1),
            dst_nb1: 4 * s.dv,
            dst_nb2: 4 * s.dv * s.n_head,
            dst_nb3: 4 * s.dv * s.n_head * s.n_q,
            scale: s.scale,
            max_bias: s.max_bias,
            softcap: s.softcap,
        }
    }

    /// Runs the kernels on this op, writing `dst`.
    pub fn run(
        &mut self,
        plan: Option<&Plan>,
        n_threads: usize,
        scratch: &mut Scratch,
        counters: &mut Counters,
    ) -> Result<()> {
        let op = self.op();
        // SAFETY: op points into self's buffers, which have exactly the shapes op describes and
        // are not touched by anything else during the call.
        unsafe { attention(&op, plan, n_threads, scratch, true, counters) }
    }

    pub fn k_row(&self, i3: usize, hk: usize, j: usize) -> Vec<f32> {
        let s = &self.shape;
        let rb = s.k_type.row_bytes(s.dk);
        let off = ((i3 * s.n_head_kv + hk) * s.n_kv + j) * rb;
        decode_row(s.k_type, &self.k[off..off + rb], s.dk)
    }

    pub fn v_row(&self, i3: usize, hk: usize, j: usize) -> Vec<f32> {
        let s = &self.shape;
        let rb = s.v_type.row_bytes(s.dv);
        let off = ((i3 * s.n_head_kv + hk) * s.n_kv + j) * rb;
        decode_row(s.v_type, &self.v[off..off + rb], s.dv)
    }

    pub fn q_row(&self, i3: usize, h: usize, iq: usize) -> &[f32] {
        let s = &self.shape;
        let off = ((i3 * s.n_head + h) * s.n_q + iq) * s.dk;
        &self.q[off..off + s.dk]
    }

    /// The mask value (f32) of query iq, head h, sequence i3, key j; 0 without a mask.
    pub fn mask_at(&self, i3: usize, h: usize, iq: usize, j: usize) -> f32 {
        let s = &self.shape;
        match s.mask {
            None => 0.0,
            Some((m2, m3)) => f16_to_f32(self.mask[(((i3 % m3) * m2 + h % m2) * s.n_q + iq) * s.n_kv + j]),
        }
    }

    pub fn dst_row(&self, i3: usize, h: usize, iq: usize) -> &[f32] {
        let s = &self.shape;
        let off = ((i3 * s.n_q + iq) * s.n_head + h) * s.dv;
        &self.dst[off..off + s.dv]
    }
}

// ---- selection kernels (csrc/select.c) --------------------------------------------------------
// Each wrapper asserts its output sizes; the caller guarantees the op's pointers.

/// Last visible key of every query row of sequence `i3`.
///
/// # Safety
/// `op`\'s pointers must address valid tensors, as for [`attention`].
pub unsafe fn row_frontier(op: &Op, i3: usize, last: &mut [i32], n_threads: usize) {
    assert_eq!(last.len(), op.n_q as usize);
    // SAFETY: op valid (caller); `last` holds n_q entries.
    unsafe { ffi::dhsa_row_frontier(op, i3 as i64, last.as_mut_ptr(), n_threads as i32) }
}

/// Boundary scores of keys [0, out.len()) with `w` keys each side.
///
/// # Safety
/// `op`\'s pointers must address valid tensors, as for [`attention`].
pub unsafe fn boundary_scores(op: &Op, i3: usize, w: usize, out: &mut [f32], n_threads: usize) {
    assert!(out.len() <= op.n_kv as usize);
    // SAFETY: op valid (caller); out holds n entries, n <= n_kv.
    unsafe { ffi::dhsa_boundary_scores(op, i3 as i64, out.len() as i64, w as i64, out.as_mut_ptr(), n_threads as i32) }
}

/// Per-chunk, per-kv-head keys: sum / sqrt(len) when `normalised`, else the mean.
///
/// # Safety
/// `op`\'s pointers must address valid tensors, as for [`attention`].
pub unsafe fn chunk_keys(op: &Op, i3: usize, starts: &[i32], normalised: bool, out: &mut [f32], n_threads: usize) {
    let n_chunks = starts.len() - 1;
    assert_eq!(out.len(), n_chunks * (op.n_head_kv * op.dk) as usize);
    assert!(starts.windows(2).all(|w| w[0] <= w[1]) && starts[0] >= 0 && *starts.last().unwrap() as i64 <= op.n_kv);
    // SAFETY: op valid (caller); starts are ordered within [0, n_kv]; out sized above.
    unsafe {
        ffi::dhsa_chunk_keys(
            op,
            i3 as i64,
            n_chunks as i64,
            starts.as_ptr(),
            normalised as i32,
            out.as_mut_ptr(),
            n_threads as i32,
        )
    }
}

/// Mean query per block and kv head.
///
/// # Safety
/// `op`\'s pointers must address valid tensors, as for [`attention`].
pub unsafe fn query_means(op: &Op, i3: usize, q_block: usize, out: &mut [f32], n_threads: usize) {
    let n_blocks = (op.n_q as usize).div_ceil(q_block);
    assert_eq!(out.len(), n_blocks * (op.n_head_kv * op.dk) as usize);
    // SAFETY: op valid (caller); out sized above.
    unsafe { ffi::dhsa_query_means(op, i3 as i64, q_block as i64, out.as_mut_ptr(), n_threads as i32) }
}

/// scores[block][kv head][chunk] = qmeans . ckeys.
pub fn chunk_scores(op: &Op, n_blocks: usize, qmeans: &[f32], ckeys: &[f32], out: &mut [f32], n_threads: usize) {
    let (nh, dk) = (op.n_head_kv as usize, op.dk as usize);
    let n_chunks = ckeys.len() / (nh * dk);
    assert_eq!(qmeans.len(), n_blocks * nh * dk);
    assert_eq!(out.len(), n_blocks * nh * n_chunks);
    // SAFETY: only the plain fields of op are read; the three buffers are sized as asserted.
    unsafe {
        ffi::dhsa_chunk_scores(
            op,
            n_blocks as i64,
            n_chunks as i64,
            qmeans.as_ptr(),
            ckeys.as_ptr(),
            out.as_mut_ptr(),
            n_threads as i32,
        )
    }
}

/// Exact softmax mass per key, summed over each block's queries and each group's heads.
///
/// # Safety
/// `op`\'s pointers must address valid tensors, as for [`attention`].
pub unsafe fn key_mass(op: &Op, i3: usize, q_block: usize, n_sel_groups: usize, out: &mut [f32], n_threads: usize) {
    let n_blocks = (op.n_q as usize).div_ceil(q_block);
    assert_eq!(out.len(), n_blocks * n_sel_groups * op.n_kv as usize);
    assert!(n_sel_groups == 1 || n_sel_groups == op.n_head_kv as usize);
    // SAFETY: op valid (caller); out sized above.
    unsafe {
        ffi::dhsa_key_mass(op, i3 as i64, q_block as i64, n_sel_groups as i64, out.as_mut_ptr(), n_threads as i32)
    }
}

/// Log attention mass that one probe query per (block, q head) puts on each chunk, unnormalised:
/// out[block][q head][chunk] (see `dhsa_probe_chunk_mass`).
///
/// # Safety
/// `op`\'s pointers must address valid tensors, as for [`attention`].
pub unsafe fn probe_chunk_mass(op: &Op, i3: usize, probes: &[f32], starts: &[i32], out: &mut [f32], n_threads: usize) {
    let (nh, dk) = (op.n_head as usize, op.dk as usize);
    let n_chunks = starts.len() - 1;
    let n_blocks = probes.len() / (nh * dk);
    assert_eq!(probes.len(), n_blocks * nh * dk);
    assert_eq!(out.len(), n_blocks * nh * n_chunks);
    assert!(starts.windows(2).all(|w| w[0] <= w[1]) && starts[0] >= 0 && *starts.last().unwrap() as i64 <= op.n_kv);
    // SAFETY: op valid (caller); starts ordered within [0, n_kv]; probes and out sized above.
    unsafe {
        ffi::dhsa_probe_chunk_mass(
            op,
            i3 as i64,
            n_blocks as i64,
            probes.as_ptr(),
            n_chunks as i64,
            starts.as_ptr(),
            out.as_mut_ptr(),
            n_threads as i32,
        )
    }
}

/// Log attention mass per chunk when each query row's softmax runs over the chunk mean keys
/// (weighted by length), summed over each block's rows and each kv group's heads:
/// out[block][kv head][chunk] (see `dhsa_query_chunk_mass`), from every `row_step`-th row. `last` is
/// every row's last visible key.
///
/// # Safety
/// `op`\'s pointers must address valid tensors, as for [`attention`].
#[allow(clippy::too_many_arguments)] // the C kernel's parameters, each a distinct input
pub unsafe fn query_chunk_mass(
    op: &Op,
    i3: usize,
    q_block: usize,
    row_step: usize,
    last: &[i32],
    starts: &[i32],
    ckeys: &[f32],
    out: &mut [f32],
    n_threads: usize,
) {
    let (nh, dk) = (op.n_head_kv as usize, op.dk as usize);
    let n_chunks = starts.len() - 1;
    let n_blocks = (op.n_q as usize).div_ceil(q_block);
    assert_eq!(last.len(), op.n_q as usize);
    assert_eq!(ckeys.len(), n_chunks * nh * dk);
    assert_eq!(out.len(), n_blocks * nh * n_chunks);
    assert!(starts.windows(2).all(|w| w[0] <= w[1]) && starts[0] >= 0);
    // SAFETY: op valid (caller); last, ckeys and out sized above; starts ordered.
    unsafe {
        ffi::dhsa_query_chunk_mass(
            op,
            i3 as i64,
            q_block as i64,
            row_step.max(1) as i64,
            last.as_ptr(),
            n_chunks as i64,
            starts.as_ptr(),
            ckeys.as_ptr(),
            out.as_mut_ptr(),
            n_threads as i32,
        )
    }
}
