//! Watching the real attention ops of a model: a probe the engine calls after every FA op it
//! computes (zero cost while none is installed), and captured ops saved to and loaded from files
//! under `$DHSA_CACHE/captures`, so tests and benchmarks can run the kernels on a real model's
//! Q/K/V without running the model.
//!
//! File format (little endian), version 1:
//!   magic `DHSACAP\0` (8 bytes), version u32, header length u32, header (JSON: shape and meta),
//!   six sections (q f32, k, v encoded rows, mask f16 bits, sinks f32, dst f32), each a u64 byte
//!   length then the bytes, and the sha256 of the section bytes (32 bytes). Anything else (wrong
//!   magic or version, sizes that do not match the header, a bad checksum, trailing bytes) is
//!   rejected with a message naming the file.

use crate::config::{Config, Mode};
use crate::kernels::{KvType, Op, OwnedOp, Plan, Shape};
use crate::select::{Selection, Selector};
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What a probe sees of one FA op, during the op's computation only.
pub struct Probe<'a> {
    /// model layer, from the node name (None outside a model graph)
    pub layer: Option<u32>,
    op: &'a Op,
    /// the plan the engine used (None: the op was computed densely)
    pub plan: Option<&'a Plan>,
    /// the configuration of the backend that computed it
    pub cfg: &'a Config,
    pub n_threads: usize,
}

impl Probe<'_> {
    /// The op's shapes and parameters. Its pointers are valid only while the probe runs.
    pub fn op(&self) -> &Op {
        self.op
    }

    /// A copy of the op's data (q, k, v, mask, sinks and the computed dst).
    pub fn own(&self) -> Result<OwnedOp> {
        // SAFETY: the engine calls probes while the op's tensors are alive and computed.
        unsafe { own(self.op) }
    }

    /// What the engine would choose for this op under `cfg` (another mode, budget, ...), with
    /// `sel` (None: dense, as for a layer listed in DHSA_DENSE_LAYERS).
    pub fn select(&self, sel: &mut Selector, cfg: &Config) -> Result<Option<Selection>> {
        if crate::engine::dense_layer(cfg, self.layer) {
            return Ok(None);
        }
        // SAFETY: as above.
        unsafe { sel.select(self.op, cfg, self.n_threads) }
    }

    /// For each plan (None: dense) and q head: (kept, total) exact attention mass, summed over
    /// every query row (see `crate::eval::recall::plan_mass`).
    pub fn plan_mass(&self, plans: &[Option<&Plan>]) -> Result<Vec<Vec<(f64, f64)>>> {
        // SAFETY: as above.
        unsafe { crate::eval::recall::plan_mass(self.op, plans, self.n_threads) }
    }

    /// The last visible key of every query row of sequence `i3` (-1: none), from the mask.
    pub fn frontier(&self, i3: usize) -> Vec<i32> {
        let mut last = vec![0; self.op.n_q.max(0) as usize];
        // SAFETY: as above.
        unsafe { crate::kernels::row_frontier(self.op, i3, &mut last, self.n_threads) };
        last
    }

    /// Exact attention mass of q head `h` per (group of `g` query rows, key) of sequence `i3`.
    pub fn head_mass(&self, i3: usize, h: usize, g: usize, out: &mut Vec<f32>) -> Result<()> {
        // SAFETY: as above.
        unsafe { crate::eval::recall::head_mass(self.op, i3, h, g, out, self.n_threads) }
    }
}

type Hook = Box<dyn FnMut(&Probe) + Send>;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// Removes the hook when dropped.
pub struct HookGuard(());

impl Drop for HookGuard {
    fn drop(&mut self) {
        ACTIVE.store(false, Ordering::SeqCst);
        *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Installs `f` as the process's probe until the guard is dropped (one at a time). It runs on the
/// thread computing the graph, inside the op; what it wants to report it keeps in its own state.
pub fn set_hook(f: impl FnMut(&Probe) + Send + 'static) -> Result<HookGuard> {
    let mut h = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    ensure!(h.is_none(), "a capture hook is already installed");
    *h = Some(Box::new(f));
    ACTIVE.store(true, Ordering::SeqCst);
    Ok(HookGuard(()))
}

/// Called by the engine after each op: one relaxed load when no hook is installed.
#[inline]
pub fn observe(layer: Option<u32>, op: &Op, plan: Option<&Plan>, cfg: &Config, n_threads: usize) {
    if !ACTIVE.load(Ordering::Relaxed) {
        return;
    }
    let mut h = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = h.as_mut() {
        f(&Probe { layer, op, plan, cfg, n_threads });
    }
}

fn kv_type(code: i32) -> Result<KvType> {
    KvType::ALL.into_iter().find(|t| t.code() == code).ok_or_else(|| anyhow!("unknown K/V type code {code}"))
}

/// Copies an op's data into Rust buffers, contiguous as `OwnedOp` lays them out.
///
/// # Safety
/// `op`'s pointers must address valid tensors of the shapes it describes (dst included).
pub unsafe fn own(op: &Op) -> Result<OwnedOp> {
    let [dk, dv, n_q, n_kv, nh, nhk, ne3] =
        [op.dk, op.dv, op.n_q, op.n_kv, op.n_head, op.n_head_kv, op.ne3].map(|x| x.max(0) as usize);
    let (kt, vt) = (kv_type(op.k_type)?, kv_type(op.v_type)?);
    let mask = (!op.mask.is_null()).then_some((op.mask_ne2.max(1) as usize, op.mask_ne3.max(1) as usize));
    let shape = Shape {
        dk,
        dv,
        n_q,
        n_kv,
        n_head: nh,
        n_head_kv: nhk,
        ne3,
        k_type: kt,
        v_type: vt,
        mask,
        sinks: !op.sinks.is_null(),
        scale: op.scale,
        max_bias: op.max_bias,
        softcap: op.softcap,
    };
    // SAFETY (every read below): the offsets stay inside the tensors op describes (caller).
    let bytes = |p: *const u8, off: usize, n: usize| unsafe { std::slice::from_raw_parts(p.add(off), n) };
    let mut q = Vec::with_capacity(ne3 * nh * n_q * dk);
    for i3 in 0..ne3 {
        for h in 0..nh {
            for iq in 0..n_q {
                let row = bytes(op.q as *const u8, iq * op.q_nb1 + h * op.q_nb2 + i3 * op.q_nb3, 4 * dk);
                q.extend(row.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])));
            }
        }
    }
    let rows = |base: *const std::ffi::c_char, t: KvType, d: usize, nb: [usize; 3]| {
        let mut out = Vec::with_capacity(ne3 * nhk * n_kv * t.row_bytes(d));
        for i3 in 0..ne3 {
            for hk in 0..nhk {
                for j in 0..n_kv {
                    out.extend_from_slice(bytes(
                        base as *const u8,
                        j * nb[0] + hk * nb[1] + i3 * nb[2],
                        t.row_bytes(d),
                    ));
                }
            }
        }
        out
    };
    let k = rows(op.k, kt, dk, [op.k_nb1, op.k_nb2, op.k_nb3]);
    let v = rows(op.v, vt, dv, [op.v_nb1, op.v_nb2, op.v_nb3]);
    let mut m = vec![];
    if let Some((m2, m3)) = mask {
        for i3 in 0..m3 {
            for h in 0..m2 {
                for iq in 0..n_q {
                    let row =
                        bytes(op.mask as *const u8, iq * op.mask_nb1 + h * op.mask_nb2 + i3 * op.mask_nb3, 2 * n_kv);
                    m.extend(row.chunks_exact(2).map(|b| u16::from_ne_bytes([b[0], b[1]])));
                }
            }
        }
    }
    let sinks = if op.sinks.is_null() {
        vec![]
    } else {
        bytes(op.sinks as *const u8, 0, 4 * nh)
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let mut dst = Vec::with_capacity(ne3 * n_q * nh * dv);
    for i3 in 0..ne3 {
        for iq in 0..n_q {
            for h in 0..nh {
                let row = bytes(op.dst as *const u8, h * op.dst_nb1 + iq * op.dst_nb2 + i3 * op.dst_nb3, 4 * dv);
                dst.extend(row.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])));
            }
        }
    }
    Ok(OwnedOp { shape, q, k, v, mask: m, sinks, dst })
}

// ---- files ------------------------------------------------------------------------------------

const MAGIC: &[u8; 8] = b"DHSACAP\0";
const VERSION: u32 = 1;

/// Where an op came from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptureMeta {
    /// model file name
    pub model: String,
    pub layer: Option<u32>,
    /// context size and the position of the op's first query
    pub n_ctx: usize,
    pub pos0: usize,
    pub note: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    dk: usize,
    dv: usize,
    n_q: usize,
    n_kv: usize,
    n_head: usize,
    n_head_kv: usize,
    ne3: usize,
    k_type: String,
    v_type: String,
    mask: Option<(usize, usize)>,
    sinks: bool,
    scale: f32,
    max_bias: f32,
    softcap: f32,
    meta: CaptureMeta,
}

/// An op read back from a file.
pub struct Captured {
    pub meta: CaptureMeta,
    pub op: OwnedOp,
}

fn type_name(t: KvType) -> String {
    format!("{t:?}").to_lowercase()
}

fn type_from(name: &str) -> Option<KvType> {
    KvType::ALL.into_iter().find(|t| type_name(*t) == name)
}

/// Byte lengths of the six sections an op of this shape has.
fn section_lens(s: &Shape) -> [usize; 6] {
    let (m2, m3) = s.mask.unwrap_or((0, 0));
    [
        4 * s.ne3 * s.n_head * s.n_q * s.dk,
        s.ne3 * s.n_head_kv * s.n_kv * s.k_type.row_bytes(s.dk),
        s.ne3 * s.n_head_kv * s.n_kv * s.v_type.row_bytes(s.dv),
        2 * m3 * m2 * s.n_q * s.n_kv,
        if s.sinks { 4 * s.n_head } else { 0 },
        4 * s.ne3 * s.n_q * s.n_head * s.dv,
    ]
}

/// Writes `op` to `path` (atomically: a temporary file renamed into place).
pub fn save(path: &Path, op: &OwnedOp, meta: &CaptureMeta) -> Result<()> {
    let s = &op.shape;
    let header = Header {
        dk: s.dk,
        dv: s.dv,
        n_q: s.n_q,
        n_kv: s.n_kv,
        n_head: s.n_head,
        n_head_kv: s.n_head_kv,
        ne3: s.ne3,
        k_type: type_name(s.k_type),
        v_type: type_name(s.v_type),
        mask: s.mask,
        sinks: s.sinks,
        scale: s.scale,
        max_bias: s.max_bias,
        softcap: s.softcap,
        meta: meta.clone(),
    };
    let h = serde_json::to_vec(&header)?;
    let sections: [Vec<u8>; 6] = [
        op.q.iter().flat_map(|x| x.to_le_bytes()).collect(),
        op.k.clone(),
        op.v.clone(),
        op.mask.iter().flat_map(|x| x.to_le_bytes()).collect(),
        op.sinks.iter().flat_map(|x| x.to_le_bytes()).collect(),
        op.dst.iter().flat_map(|x| x.to_le_bytes()).collect(),
    ];
    let want = section_lens(s);
    for (i, sec) in sections.iter().enumerate() {
        ensure!(sec.len() == want[i], "op buffers do not match its shape (section {i})");
    }
    let mut out = Vec::with_capacity(16 + h.len() + want.iter().sum::<usize>() + 80);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    let mut sha = sha2::Sha256::new();
    for sec in &sections {
        out.extend_from_slice(&(sec.len() as u64).to_le_bytes());
        out.extend_from_slice(sec);
        sha.update(sec);
    }
    out.extend_from_slice(&sha.finalize());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &out).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads a capture file, checking everything the format promises.
pub fn load(path: &Path) -> Result<Captured> {
    let data = std::fs::read(path).with_context(|| format!("cannot read capture {}", path.display()))?;
    parse(&data).with_context(|| format!("{} is not a valid dhsa capture", path.display()))
}

fn parse(data: &[u8]) -> Result<Captured> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        ensure!(data.len() - at >= n, "truncated at byte {at} (needs {n} more, file has {})", data.len());
        at += n;
        Ok(&data[at - n..at])
    };
    ensure!(take(8)? == MAGIC, "wrong magic (not a capture file)");
    let version = u32::from_le_bytes(take(4)?.try_into()?);
    ensure!(version == VERSION, "format version {version}; this dhsa reads version {VERSION}");
    let hlen = u32::from_le_bytes(take(4)?.try_into()?) as usize;
    let h: Header = serde_json::from_slice(take(hlen)?).context("unreadable header")?;
    let kt = type_from(&h.k_type).ok_or_else(|| anyhow!("unknown K type {:?}", h.k_type))?;
    let vt = type_from(&h.v_type).ok_or_else(|| anyhow!("unknown V type {:?}", h.v_type))?;
    ensure!(
        h.n_head_kv > 0 && h.n_head.is_multiple_of(h.n_head_kv),
        "n_head {} not a multiple of n_head_kv {}",
        h.n_head,
        h.n_head_kv
    );
    let shape = Shape {
        dk: h.dk,
        dv: h.dv,
        n_q: h.n_q,
        n_kv: h.n_kv,
        n_head: h.n_head,
        n_head_kv: h.n_head_kv,
        ne3: h.ne3,
        k_type: kt,
        v_type: vt,
        mask: h.mask,
        sinks: h.sinks,
        scale: h.scale,
        max_bias: h.max_bias,
        softcap: h.softcap,
    };
    let want = section_lens(&shape);
    ensure!(want.iter().sum::<usize>() <= data.len(), "header promises more data than the file holds");
    let mut sha = sha2::Sha256::new();
    let mut secs: Vec<&[u8]> = vec![];
    for (i, &w) in want.iter().enumerate() {
        let n = u64::from_le_bytes(take(8)?.try_into()?) as usize;
        ensure!(n == w, "section {i} has {n} bytes; the header's shape needs {w}");
        let sec = take(n)?;
        sha.update(sec);
        secs.push(sec);
    }
    let sum = take(32)?;
    ensure!(sum == sha.finalize().as_slice(), "checksum mismatch (corrupt file)");
    ensure!(at == data.len(), "{} trailing bytes", data.len() - at);
    let f32s = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
    let op = OwnedOp {
        q: f32s(secs[0]),
        k: secs[1].to_vec(),
        v: secs[2].to_vec(),
        mask: secs[3].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect(),
        sinks: f32s(secs[4]),
        dst: f32s(secs[5]),
        shape,
    };
    Ok(Captured { meta: h.meta, op })
}

// ---- capturing a model's ops ------------------------------------------------------------------

/// Where captures live: `$DHSA_CACHE/captures`.
pub fn dir() -> PathBuf {
    crate::models::cache_root().join("captures")
}

/// The file of one captured op: model, context, window, first query position, layer.
pub fn file_name(model: &Path, n_ctx: usize, window: usize, pos0: usize, layer: u32) -> String {
    let stem = model.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    format!("{stem}-c{n_ctx}-w{window}-p{pos0}-L{layer}.dhsacap")
}

/// What to capture from a dense prefill of one token window.
pub struct CaptureSpec<'a> {
    /// layers (None: all)
    pub layers: Option<&'a [u32]>,
    /// the last `last_ubatches` ubatches of the window
    pub last_ubatches: usize,
    /// window index, for the file names
    pub window: usize,
}

/// Prefills `toks` densely on `model` (loaded from `path`) and saves the FA ops `what` asks for into
/// `out_dir` as they are computed. Returns the paths.
pub fn capture_tokens(
    model: &crate::llama::Model,
    path: &Path,
    toks: &[i32],
    what: &CaptureSpec,
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let cfg = Config { mode: Mode::Dense, ..crate::config::current()? };
    let n_ctx = toks.len();
    let mut ctx =
        crate::eval::context(model, &cfg, &crate::llama::ContextOptions { n_ctx: n_ctx as u32, ..Default::default() })?;
    let ub = ctx.n_ubatch() as usize;
    let first = (n_ctx.saturating_sub(1) / ub).saturating_sub(what.last_ubatches.saturating_sub(1)) * ub;
    eprintln!("capture: dense prefill of {first} tokens of {}", path.display());
    crate::runner::prefill(&mut ctx, &toks[..first], 0, 0, &mut |_, _| {})?;
    struct State {
        pos0: usize,
        saved: Vec<(u32, PathBuf)>,
        error: Option<anyhow::Error>,
    }
    let st = Arc::new(Mutex::new(State { pos0: first, saved: vec![], error: None }));
    let model_name = path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    {
        let (st2, layers, path, out_dir, window) =
            (st.clone(), what.layers.map(<[u32]>::to_vec), path.to_path_buf(), out_dir.to_path_buf(), what.window);
        let _hook = set_hook(move |p| {
            let Some(l) = p.layer.filter(|l| layers.as_ref().is_none_or(|ls| ls.contains(l))) else { return };
            let mut s = st2.lock().unwrap_or_else(|e| e.into_inner());
            let meta = CaptureMeta {
                model: model_name.clone(),
                layer: Some(l),
                n_ctx,
                pos0: s.pos0,
                note: format!("dense prefill of window {window} of the evaluation text"),
            };
            let file = out_dir.join(file_name(&path, n_ctx, window, s.pos0, l));
            match p.own().and_then(|op| save(&file, &op, &meta)) {
                Ok(()) => s.saved.push((l, file)),
                Err(e) => {
                    s.error.get_or_insert(e);
                }
            }
        })?;
        for p in (first..n_ctx).step_by(ub) {
            st.lock().unwrap_or_else(|e| e.into_inner()).pos0 = p;
            crate::runner::prefill(&mut ctx, &toks[p..(p + ub).min(n_ctx)], p as i32, 0, &mut |_, _| {})?;
            eprintln!("capture: saved the ops of tokens {p}..{}", (p + ub).min(n_ctx));
        }
    }
    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = s.error.take() {
        return Err(e.context("saving captured ops"));
    }
    if let Some(ls) = what.layers
        && let Some(l) = ls.iter().find(|l| !s.saved.iter().any(|(g, _)| g == *l))
    {
        bail!("layer {l} was not seen (the model has {} layers)", model.n_layer());
    }
    ensure!(!s.saved.is_empty(), "no attention op reached the plugin (context too short for DHSA_MIN_KEYS?)");
    Ok(std::mem::take(&mut s.saved).into_iter().map(|(_, p)| p).collect())
}

/// Layers captured from SmolLM2-135M-Instruct at 8K context (first, middle, last).
pub const SMOLLM2_LAYERS: [u32; 4] = [0, 10, 20, 29];

/// The SmolLM2-135M-Instruct ops at 8K context (layers `SMOLLM2_LAYERS`, last ubatch: 512 queries
/// at positions 7680.. against 8192 keys, from the first 8K tokens of the pydoc topics), captured
/// on first use (fetching the model if needed; a minute or two on 2 cores) and loaded from
/// `$DHSA_CACHE/captures` afterwards.
pub fn smollm2_8k() -> Result<Vec<Captured>> {
    let store = crate::models::Store::default();
    let spec = crate::models::spec("smollm2")?;
    let model_path = store.fetch(spec, &mut |l| eprintln!("{l}"))?;
    let n_ctx = 8192;
    let paths: Vec<PathBuf> =
        SMOLLM2_LAYERS.iter().map(|&l| dir().join(file_name(&model_path, n_ctx, 0, n_ctx - 512, l))).collect();
    if !paths.iter().all(|p| p.exists()) {
        crate::eval::start(&Config { mode: Mode::Dense, ..Config::default() }, false)?;
        let model = crate::llama::Model::load(&model_path, &Default::default())?;
        let text = crate::eval::text(None, crate::eval::Split::All)?;
        let toks = crate::eval::windows(&model, &text, n_ctx, 1)?.remove(0);
        let what = CaptureSpec { layers: Some(&SMOLLM2_LAYERS), last_ubatches: 1, window: 0 };
        capture_tokens(&model, &model_path, &toks, &what, &dir())?;
    }
    paths.iter().map(|p| load(p)).collect()
}
