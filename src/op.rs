//! Reading a ggml FLASH_ATTN_EXT node into the kernels' op description, and deciding whether dhsa
//! computes it exactly. Everything the kernels cannot compute as specified is declined here, so
//! llama.cpp computes it instead.

use crate::config::Config;
use crate::kernels::{self, KvType, Op};
use ggml_sys as sys;

/// ggml's element type -> the kernels' K/V type.
fn kv_type(t: sys::ggml_type) -> Option<KvType> {
    match t {
        sys::GGML_TYPE_F32 => Some(KvType::F32),
        sys::GGML_TYPE_F16 => Some(KvType::F16),
        sys::GGML_TYPE_BF16 => Some(KvType::Bf16),
        sys::GGML_TYPE_Q8_0 => Some(KvType::Q8_0),
        _ => None,
    }
}

/// Element size as ggml counts it (one block for quantized types).
fn type_size(t: sys::ggml_type) -> usize {
    match t {
        sys::GGML_TYPE_F32 => 4,
        sys::GGML_TYPE_F16 | sys::GGML_TYPE_BF16 => 2,
        sys::GGML_TYPE_Q8_0 => 34,
        _ => 0,
    }
}

fn f32_param(t: &sys::ggml_tensor, i: usize) -> f32 {
    f32::from_bits(t.op_params[i] as u32)
}

/// Why `node` cannot be computed exactly by dhsa, or the op describing it. `node`'s sources must
/// be valid tensors (data may be NULL while the scheduler only asks about support).
///
/// # Safety
/// `node` and the non-null `node.src[..5]` must point to valid ggml tensors.
pub unsafe fn read(node: &sys::ggml_tensor) -> Result<Op, &'static str> {
    if node.op != sys::GGML_OP_FLASH_ATTN_EXT {
        return Err("not FLASH_ATTN_EXT");
    }
    let [q, k, v, m, s] = [0, 1, 2, 3, 4].map(|i| node.src[i]);
    if q.is_null() || k.is_null() || v.is_null() {
        return Err("missing q, k or v");
    }
    // SAFETY: non-null sources of a valid node are valid tensors (caller's contract).
    let (q, k, v) = unsafe { (&*q, &*k, &*v) };
    // SAFETY: as above, for the optional sources.
    let (m, s) = unsafe { (m.as_ref(), s.as_ref()) };
    if node.type_ != sys::GGML_TYPE_F32 || q.type_ != sys::GGML_TYPE_F32 {
        return Err("q or dst not F32");
    }
    let prec = node.op_params[3];
    if prec != sys::GGML_PREC_DEFAULT as i32 && prec != sys::GGML_PREC_F32 as i32 {
        return Err("precision other than default/F32");
    }
    let (kt, vt) = match (kv_type(k.type_), kv_type(v.type_)) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("K/V type not computed"),
    };
    // rows must be contiguous; other strides are free
    if q.nb[0] != 4 || k.nb[0] != type_size(k.type_) || v.nb[0] != type_size(v.type_) || node.nb[0] != 4 {
        return Err("non-contiguous rows");
    }
    let (dk, dv, n_q, n_kv) = (q.ne[0], v.ne[0], q.ne[1], k.ne[1]);
    let (n_head, n_head_kv, ne3) = (q.ne[2], k.ne[2], q.ne[3]);
    if k.ne[0] != dk || v.ne[1] != n_kv || v.ne[2] != n_head_kv || k.ne[3] != ne3 || v.ne[3] != ne3 {
        return Err("inconsistent q/k/v shapes");
    }
    if node.ne != [dv, n_head, n_q, ne3] {
        return Err("unexpected dst shape");
    }
    let (mask, mask_ne, mask_nb) = match m {
        None => (std::ptr::null(), [0, 0], [0usize; 3]),
        Some(m) => {
            if m.type_ != sys::GGML_TYPE_F16 || m.nb[0] != 2 || m.ne[0] < n_kv || m.ne[1] < n_q {
                return Err("mask not F16 [n_kv, n_q, ...]");
            }
            (m.data as *const u16, [m.ne[2], m.ne[3]], [m.nb[1], m.nb[2], m.nb[3]])
        }
    };
    let sinks = match s {
        None => std::ptr::null(),
        Some(s) => {
            if s.type_ != sys::GGML_TYPE_F32 || s.nb[0] != 4 || s.ne[0] < n_head {
                return Err("sinks not F32 [n_head]");
            }
            s.data as *const f32
        }
    };
    let op = Op {
        q: q.data as *const _,
        k: k.data as *const _,
        v: v.data as *const _,
        mask,
        sinks,
        dst: node.data as *mut f32,
        k_type: kt.code(),
        v_type: vt.code(),
        dk,
        dv,
        n_q,
        n_kv,
        n_head,
        n_head_kv,
        ne3,
        mask_ne2: mask_ne[0],
        mask_ne3: mask_ne[1],
        q_nb1: q.nb[1],
        q_nb2: q.nb[2],
        q_nb3: q.nb[3],
        k_nb1: k.nb[1],
        k_nb2: k.nb[2],
        k_nb3: k.nb[3],
        v_nb1: v.nb[1],
        v_nb2: v.nb[2],
        v_nb3: v.nb[3],
        mask_nb1: mask_nb[0],
        mask_nb2: mask_nb[1],
        mask_nb3: mask_nb[2],
        dst_nb1: node.nb[1],
        dst_nb2: node.nb[2],
        dst_nb3: node.nb[3],
        scale: f32_param(node, 0),
        max_bias: f32_param(node, 1),
        softcap: f32_param(node, 2),
    };
    if let Some(why) = kernels::unsupported(&op) {
        return Err(why);
    }
    Ok(op)
}

/// Prefill-shaped: enough queries and keys for the plugin to take the op (single-token decode
/// ops never qualify, so llama.cpp's `-fa auto` probe keeps FA on).
pub fn engages(op: &Op, cfg: &Config) -> bool {
    op.n_q as usize >= cfg.min_queries && op.n_kv as usize >= cfg.min_keys
}

fn tensor_name(t: &sys::ggml_tensor) -> String {
    let name: Vec<u8> = t.name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&name).into_owned()
}

/// The model layer of an FA node. llama.cpp names graph tensors "<name>-<layer>" only where it
/// calls its callback, which it does not for the FA node of the pinned tree ("node_21"); its
/// sources carry the layer: K is a view of the cache tensor "cache_k_l<layer>", Q a view of
/// "Qcur-<layer>". The node's own name is tried first, for trees that name it.
///
/// # Safety
/// `node`'s non-null sources must point to valid ggml tensors.
pub unsafe fn layer_of(node: &sys::ggml_tensor) -> Option<u32> {
    let suffix = |s: &str| -> Option<u32> { s.split(' ').next()?.rsplit_once('-')?.1.parse().ok() };
    if let Some(l) = suffix(&tensor_name(node)) {
        return Some(l);
    }
    // SAFETY: non-null sources are valid tensors (caller's contract).
    let (q, k) = unsafe { (node.src[0].as_ref(), node.src[1].as_ref()) };
    let from_k = k.and_then(|k| {
        let n = tensor_name(k);
        let digits: String = n.strip_prefix("cache_k_l")?.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    from_k.or_else(|| q.and_then(|q| suffix(&tensor_name(q))))
}
