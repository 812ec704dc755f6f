//! The CUDA path (feature `cuda`): the Rust face of the `dhsa_cuda_*` functions of csrc/dhsa.h.
//! A `CudaEngine` owns one device's context (stream, events, a workspace that grows and is reused)
//! and computes an op whose pointers address that device's memory: selection and attention on the
//! device, no host round trip between them.

use crate::config::{ChunkNorm, Chunking, Config, HeadScore, Mode};
use crate::kernels::Op;
use crate::kernels::ffi;
use crate::stats::Stats;
use anyhow::{Result, bail};
use std::ffi::{CStr, c_char};

pub use ffi::dhsa_cuda_result as CudaResult;
pub use ffi::dhsa_cuda_select as Select;

/// Number of CUDA devices this process sees (0 without a driver or a device).
pub fn device_count() -> usize {
    // SAFETY: a plain query; returns 0 when CUDA is unusable.
    unsafe { ffi::dhsa_cuda_device_count().max(0) as usize }
}

/// The device's name as CUDA reports it.
pub fn device_name(device: usize) -> Option<String> {
    let mut buf = [0 as c_char; 256];
    // SAFETY: buf holds 256 bytes; the function writes a NUL-terminated name within them.
    let rc = unsafe { ffi::dhsa_cuda_device_name(device as i32, buf.as_mut_ptr(), buf.len()) };
    // SAFETY: on success buf holds a NUL-terminated string.
    (rc == 0).then(|| unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// The selection knobs of `cfg` the GPU reads, or why the GPU does not implement this setting.
pub fn select_params(cfg: &Config) -> Result<Select, &'static str> {
    let mode = match cfg.mode {
        Mode::Dense => ffi::DHSA_CUDA_DENSE,
        Mode::Dhsa => ffi::DHSA_CUDA_DHSA,
        Mode::Block => ffi::DHSA_CUDA_BLOCK,
        Mode::Streaming => ffi::DHSA_CUDA_STREAMING,
        Mode::Oracle => return Err("CUDA: oracle mode runs on the CPU only"),
    };
    if cfg.tau > 0.0 && cfg.mode.is_sparse() {
        return Err("CUDA: the adaptive budget (DHSA_TAU > 0) runs on the CPU only");
    }
    let mean_scored = matches!(cfg.head_score, HeadScore::Auto | HeadScore::Mean);
    if cfg.mode == Mode::Dhsa && (!mean_scored || cfg.chunk_norm != ChunkNorm::Sqrt) {
        return Err(
            "CUDA: only mean dhsa scoring (DHSA_HEAD_SCORE=auto or mean, DHSA_CHUNK_NORM=sqrt) runs on the GPU",
        );
    }
    Ok(Select {
        mode: mode as i32,
        dynamic_chunks: (cfg.chunking == Chunking::Dynamic) as i32,
        shared_heads: cfg.shared_heads as i32,
        budget: cfg.budget as i64,
        q_block: cfg.q_block as i64,
        sink: cfg.sink as i64,
        window: cfg.window as i64,
        chunk_min: cfg.chunk_min as i64,
        chunk_max: cfg.chunk_max as i64,
        boundary_window: cfg.boundary_window as i64,
        block_size: cfg.block_size as i64,
    })
}

/// Why the CUDA kernels cannot compute `op` exactly under `cfg`, if they cannot.
pub fn unsupported(op: &Op, cfg: &Config) -> Option<&'static str> {
    let sel = match select_params(cfg) {
        Ok(s) => s,
        Err(why) => return Some(why),
    };
    // SAFETY: reads plain fields of op and sel (no pointer is dereferenced); returns NULL or a
    // static string.
    let p = unsafe { ffi::dhsa_cuda_op_unsupported(op, &sel) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null results are static NUL-terminated strings.
    Some(unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("unsupported op"))
}

/// One CUDA device's context.
pub struct CudaEngine {
    ctx: *mut ffi::dhsa_cuda_ctx,
    device: usize,
}

// SAFETY: the context is only used through &mut self (one caller at a time); CUDA contexts and
// streams may be used from any host thread.
unsafe impl Send for CudaEngine {}

fn err_string(buf: &[c_char]) -> String {
    // SAFETY: the C side always NUL-terminates what it writes into buf (vsnprintf); buf starts zeroed.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// How a call synchronizes and what it counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    /// wait for all work on the device first (the sidecar cannot see llama.cpp's stream)
    pub sync_device: bool,
    /// count the visible keys (reads the whole mask)
    pub count_visible: bool,
    /// a mask in host memory is copied to the device unless the last call copied the same host
    /// mask under the same nonzero epoch (bump it whenever the host may have rewritten the mask)
    pub mask_epoch: i64,
}

impl CudaEngine {
    pub fn new(device: usize) -> Result<CudaEngine> {
        let mut err = [0 as c_char; 512];
        // SAFETY: err holds 512 bytes for the message.
        let ctx = unsafe { ffi::dhsa_cuda_ctx_new(device as i32, err.as_mut_ptr(), err.len()) };
        if ctx.is_null() {
            bail!("cannot start CUDA device {device}: {}", err_string(&err));
        }
        Ok(CudaEngine { ctx, device })
    }

    pub fn device(&self) -> usize {
        self.device
    }

    /// Computes `op` (device pointers) into its dst, as `cfg` says; returns what it did.
    ///
    /// # Safety
    /// Every pointer in `op` must address memory of this engine's device laid out as the op's
    /// shapes and strides describe, valid until the call returns (it waits for its stream).
    pub unsafe fn compute(&mut self, op: &Op, cfg: &Config, flags: Flags) -> Result<Stats> {
        let sel = select_params(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut res = CudaResult::default();
        let mut err = [0 as c_char; 512];
        let f = (if flags.sync_device { ffi::DHSA_CUDA_SYNC_DEVICE } else { 0 })
            | (if flags.count_visible { ffi::DHSA_CUDA_COUNT_VISIBLE } else { 0 });
        // SAFETY: op's pointers are valid device memory per the contract; sel, res and err are
        // live locals; the call waits for its work before returning.
        let rc = unsafe {
            ffi::dhsa_cuda_attention(
                self.ctx,
                op,
                &sel,
                f as i32,
                flags.mask_epoch,
                &mut res,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            bail!("CUDA attention on device {}: {}", self.device, err_string(&err));
        }
        let sparse = res.sparse_blocks > 0;
        Ok(Stats {
            ops: 1,
            sparse_ops: sparse as u64,
            dense_ops: (!sparse) as u64,
            declined: 0,
            keys_visible: res.keys_visible as u64,
            keys_attended: res.keys_attended as u64,
            select_ms: res.select_ms as f64,
            attn_ms: res.attn_ms as f64,
            ..Default::default()
        })
    }

    /// The keys the last sparse call attended per (sequence, block, group), sorted; None when the
    /// last call was dense.
    pub fn last_selection(&self, n_problems: usize, budget: usize) -> Result<Option<Vec<Vec<i32>>>> {
        let mut counts = vec![0i32; n_problems];
        let mut keys = vec![0i32; n_problems * budget];
        let mut err = [0 as c_char; 512];
        // SAFETY: counts holds n_problems and keys n_problems * budget entries, as passed.
        let n = unsafe {
            ffi::dhsa_cuda_last_selection(
                self.ctx,
                counts.as_mut_ptr(),
                keys.as_mut_ptr(),
                n_problems as i64,
                budget as i64,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if n < 0 {
            let e = err_string(&err);
            if e.starts_with("no sparse selection") {
                return Ok(None);
            }
            bail!("{e}");
        }
        Ok(Some((0..n as usize).map(|p| keys[p * budget..p * budget + counts[p].max(0) as usize].to_vec()).collect()))
    }

    /// The chunk starts of the last sparse call's last sequence (the horizon last); empty when it
    /// made no chunks.
    pub fn last_chunks(&self, cap: usize) -> Result<Vec<i32>> {
        let mut starts = vec![0i32; cap];
        let mut err = [0 as c_char; 512];
        // SAFETY: starts holds cap entries.
        let n = unsafe {
            ffi::dhsa_cuda_last_chunks(self.ctx, starts.as_mut_ptr(), cap as i64, err.as_mut_ptr(), err.len())
        };
        if n < 0 {
            bail!("{}", err_string(&err));
        }
        starts.truncate(n as usize);
        Ok(starts)
    }
}

impl Drop for CudaEngine {
    fn drop(&mut self) {
        // SAFETY: ctx came from dhsa_cuda_ctx_new and is freed once.
        unsafe { ffi::dhsa_cuda_ctx_free(self.ctx) };
    }
}
