//! ggml's own FLASH_ATTN_EXT on a given device, set up the way llama.cpp lays the op out (q and
//! K/V are permuted views: a cache row holds every kv head of one token), so dhsa and ggml can be
//! timed on the very same tensors in one process. Used by the benchmarks and `dhsa bench kernels`.

use crate::kernels::{KvType, Op, OwnedOp};
use anyhow::{Result, anyhow, bail};
use ggml_sys as sys;
use std::ffi::c_void;

fn ggml_type(t: KvType) -> sys::ggml_type {
    match t {
        KvType::F32 => sys::GGML_TYPE_F32,
        KvType::F16 => sys::GGML_TYPE_F16,
        KvType::Bf16 => sys::GGML_TYPE_BF16,
        KvType::Q8_0 => sys::GGML_TYPE_Q8_0,
    }
}

/// One FA op built on a backend, with its inputs uploaded.
pub struct GgmlFa {
    ctx: *mut sys::ggml_context,
    backend: sys::ggml_backend_t,
    buf: sys::ggml_backend_buffer_t,
    graph: *mut sys::ggml_cgraph,
    node: *mut sys::ggml_tensor,
    mask: *mut sys::ggml_tensor,
}

impl GgmlFa {
    /// Builds `op`'s FA on the device named `device` (e.g. CPU, CUDA0) with `n_threads` CPU threads.
    pub fn new(device: &str, op: &OwnedOp, n_threads: usize) -> Result<GgmlFa> {
        let dev = crate::ggml::device_by_name(device).ok_or_else(|| anyhow!("no ggml device named {device}"))?;
        let s = &op.shape;
        // SAFETY: plain ggml calls; every pointer is checked before use and owned by the returned
        // value (freed in Drop); data is copied within the sizes ggml reports for each tensor.
        unsafe {
            let params = sys::ggml_init_params {
                mem_size: sys::ggml_tensor_overhead() * 16 + sys::ggml_graph_overhead(),
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            };
            let ctx = sys::ggml_init(params);
            if ctx.is_null() {
                bail!("ggml_init failed");
            }
            let backend = sys::ggml_backend_dev_init(dev, std::ptr::null());
            let mut fa = GgmlFa {
                ctx,
                backend,
                buf: std::ptr::null_mut(),
                graph: std::ptr::null_mut(),
                node: std::ptr::null_mut(),
                mask: std::ptr::null_mut(),
            };
            if backend.is_null() {
                bail!("cannot start a backend on the device");
            }
            let reg = sys::ggml_backend_dev_backend_reg(dev);
            let f = sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_set_n_threads".as_ptr());
            if !f.is_null() {
                let f: unsafe extern "C" fn(sys::ggml_backend_t, i32) = std::mem::transmute(f);
                f(backend, n_threads as i32);
            }
            let (dk, dv, nq, nkv, nh, nhk, ne3) = (
                s.dk as i64,
                s.dv as i64,
                s.n_q as i64,
                s.n_kv as i64,
                s.n_head as i64,
                s.n_head_kv as i64,
                s.ne3 as i64,
            );
            // llama.cpp layout: Qcur [dk, n_head, n_q], caches [dk, n_head_kv, n_kv]
            let q0 = sys::ggml_new_tensor_4d(ctx, sys::GGML_TYPE_F32, dk, nh, nq, ne3);
            let k0 = sys::ggml_new_tensor_4d(ctx, ggml_type(s.k_type), dk, nhk, nkv, ne3);
            let v0 = sys::ggml_new_tensor_4d(ctx, ggml_type(s.v_type), dv, nhk, nkv, ne3);
            let q = sys::ggml_permute(ctx, q0, 0, 2, 1, 3);
            let k = sys::ggml_permute(ctx, k0, 0, 2, 1, 3);
            let v = sys::ggml_permute(ctx, v0, 0, 2, 1, 3);
            let mask = match s.mask {
                Some((m2, m3)) => sys::ggml_new_tensor_4d(ctx, sys::GGML_TYPE_F16, nkv, nq, m2 as i64, m3 as i64),
                None => std::ptr::null_mut(),
            };
            let sinks = if s.sinks {
                sys::ggml_new_tensor_4d(ctx, sys::GGML_TYPE_F32, nh, 1, 1, 1)
            } else {
                std::ptr::null_mut()
            };
            let node = sys::ggml_flash_attn_ext(ctx, q, k, v, mask, s.scale, s.max_bias, s.softcap);
            if !sinks.is_null() {
                sys::ggml_flash_attn_ext_add_sinks(node, sinks);
            }
            (*node).op_params[3] = sys::GGML_PREC_F32 as i32;
            let graph = sys::ggml_new_graph(ctx);
            sys::ggml_build_forward_expand(graph, node);
            fa.buf = sys::ggml_backend_alloc_ctx_tensors(ctx, backend);
            if fa.buf.is_null() {
                bail!("cannot allocate the op's tensors on the device");
            }
            fa.graph = graph;
            fa.node = node;
            fa.mask = mask;

            // upload: q rows [i3][h][iq] -> Qcur [i3][iq][h]; K/V rows [i3][hk][j] -> cache [i3][j][hk]
            let mut qbuf = vec![0f32; op.q.len()];
            for i3 in 0..s.ne3 {
                for h in 0..s.n_head {
                    for iq in 0..s.n_q {
                        let dst = ((i3 * s.n_q + iq) * s.n_head + h) * s.dk;
                        qbuf[dst..dst + s.dk].copy_from_slice(op.q_row(i3, h, iq));
                    }
                }
            }
            set(q0, qbuf.as_ptr() as *const c_void, qbuf.len() * 4);
            for (t, src, d, ty) in [(k0, &op.k, s.dk, s.k_type), (v0, &op.v, s.dv, s.v_type)] {
                let rb = ty.row_bytes(d);
                let mut b = vec![0u8; src.len()];
                for i3 in 0..s.ne3 {
                    for hk in 0..s.n_head_kv {
                        for j in 0..s.n_kv {
                            let from = ((i3 * s.n_head_kv + hk) * s.n_kv + j) * rb;
                            let to = ((i3 * s.n_kv + j) * s.n_head_kv + hk) * rb;
                            b[to..to + rb].copy_from_slice(&src[from..from + rb]);
                        }
                    }
                }
                set(t, b.as_ptr() as *const c_void, b.len());
            }
            if !mask.is_null() {
                set(mask, op.mask.as_ptr() as *const c_void, op.mask.len() * 2);
            }
            if !sinks.is_null() {
                set(sinks, op.sinks.as_ptr() as *const c_void, s.n_head * 4);
            }
            Ok(fa)
        }
    }

    /// Runs ggml's FA on the backend (synchronously).
    pub fn compute(&mut self) -> Result<()> {
        // SAFETY: backend and graph are live and allocated.
        let st = unsafe { sys::ggml_backend_graph_compute(self.backend, self.graph) };
        if st != sys::GGML_STATUS_SUCCESS {
            return Err(anyhow!("ggml graph compute failed ({st})"));
        }
        Ok(())
    }

    /// The same op for dhsa's kernels: pointers into this backend's buffers.
    pub fn op(&self) -> Result<Op> {
        // SAFETY: node is a valid FA tensor with allocated sources.
        unsafe { crate::op::read(&*self.node) }.map_err(|e| anyhow!("dhsa declines this op: {e}"))
    }

    /// The FA node itself.
    pub fn node(&self) -> *mut sys::ggml_tensor {
        self.node
    }

    /// dst, copied back to the host.
    pub fn dst(&self) -> Vec<f32> {
        // SAFETY: node is allocated; the vector holds exactly its bytes.
        unsafe {
            let n = sys::ggml_nbytes(self.node);
            let mut out = vec![0f32; n / 4];
            sys::ggml_backend_tensor_get(self.node, out.as_mut_ptr() as *mut c_void, 0, n);
            out
        }
    }

    /// Overwrites dst with NaN (so a kernel that skips an element is caught).
    pub fn poison_dst(&mut self) {
        // SAFETY: as above.
        unsafe {
            let n = sys::ggml_nbytes(self.node);
            let nan = vec![f32::NAN; n / 4];
            sys::ggml_backend_tensor_set(self.node, nan.as_ptr() as *const c_void, 0, n);
        }
    }

    pub fn backend(&self) -> sys::ggml_backend_t {
        self.backend
    }
}

/// Copies `n` host bytes into tensor `t`.
unsafe fn set(t: *mut sys::ggml_tensor, data: *const c_void, n: usize) {
    // SAFETY: the caller passes an allocated tensor of at least n bytes and n readable bytes.
    unsafe {
        debug_assert!(sys::ggml_nbytes(t) >= n);
        sys::ggml_backend_tensor_set(t, data, 0, n.min(sys::ggml_nbytes(t)));
    }
}

impl Drop for GgmlFa {
    fn drop(&mut self) {
        // SAFETY: each pointer is owned by self and freed once.
        unsafe {
            if !self.buf.is_null() {
                sys::ggml_backend_buffer_free(self.buf);
            }
            if !self.backend.is_null() {
                sys::ggml_backend_free(self.backend);
            }
            sys::ggml_free(self.ctx);
        }
    }
}

/// The CPU device of the registry.
pub fn cpu_device() -> Result<sys::ggml_backend_dev_t> {
    // SAFETY: registry query.
    let d = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
    if d.is_null() { Err(anyhow!("no CPU backend registered")) } else { Ok(d) }
}
