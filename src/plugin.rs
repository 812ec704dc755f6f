//! The ggml backend that takes GGML_OP_FLASH_ATTN_EXT from a stock llama.cpp.
//!
//! Registry `DHSA` with one ACCEL device `DHSA`: its buffer type *is* the CPU device's (looked up in
//! the registry at run time), so the scheduler's pass 3 moves prefill-shaped FA nodes from the CPU
//! backend to ours with no copy. `supports_op` claims FA only when the op engages (enough queries
//! and keys) and the kernels compute it exactly, plus the no-op ops (NONE and views) as ggml's BLAS
//! backend does; everything else stays with llama.cpp.
//!
//! With the feature `cuda`, one more device per CUDA device, `DHSA-CUDA<i>` (a "sidecar"): type
//! GPU, its buffer type *is* the ggml device `CUDA<i>`'s (looked up in the registry at run time, no
//! link to ggml-cuda), so with `--device DHSA-CUDA0,CUDA0 -ts 0,1` pass 3 moves prefill FA nodes from
//! CUDA0 to it. It cannot see CUDA0's stream: it synchronizes the device before its kernels and its
//! own stream before returning (caps: no async, no events).
//!
//! Two ways in: `ggml_backend_init` (the cdylib loaded through GGML_BACKEND_PATH) and `register()`
//! (the runner, before it loads a model). Every `extern "C"` entry point catches panics: nothing
//! unwinds into the host, and a failure is reported as a failed graph, never an abort.

use crate::config::{self, Config};
use crate::engine::CpuEngine;
use crate::op;
use crate::stats::{self, Stats};
use ggml_sys as sys;
use std::cell::UnsafeCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, OnceLock};

/// The backend GUID; `set_n_threads` checks it before trusting a backend's context.
static GUID: UnsafeSync<sys::ggml_guid> = UnsafeSync(UnsafeCell::new([
    0x64, 0x68, 0x73, 0x61, 0x2d, 0x73, 0x70, 0x61, 0x72, 0x73, 0x65, 0x2d, 0x61, 0x74, 0x74, 0x6e,
]));

/// A value ggml holds a pointer to: ggml's structs carry raw pointers, so they are neither Send
/// nor Sync in Rust's eyes; ggml only reads them after registration.
struct UnsafeSync<T>(UnsafeCell<T>);
// SAFETY: the wrapped structs are written once, before their address is handed to ggml, and only
// read afterwards (by ggml and by us).
unsafe impl<T> Sync for UnsafeSync<T> {}
// SAFETY: as above; they hold plain data and pointers to other 'static plugin objects.
unsafe impl<T> Send for UnsafeSync<T> {}

impl<T> UnsafeSync<T> {
    fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

/// Where a device computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Cpu,
    /// CUDA device ordinal
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

/// One device of the registry.
struct Device {
    dev: UnsafeSync<sys::ggml_backend_device>,
    name: CString,
    description: CString,
    /// the ggml device whose buffer type ours is (the CPU device, or CUDA<i>)
    base: UnsafeSync<sys::ggml_backend_dev_t>,
    target: Target,
}

impl Device {
    fn new(name: String, description: String, base: sys::ggml_backend_dev_t, target: Target) -> Box<Device> {
        Box::new(Device {
            dev: UnsafeSync(UnsafeCell::new(sys::ggml_backend_device {
                iface: DEVICE_IFACE,
                reg: std::ptr::null_mut(),
                context: std::ptr::null_mut(),
            })),
            name: CString::new(name).unwrap_or_default(),
            description: CString::new(description).unwrap_or_default(),
            base: UnsafeSync(UnsafeCell::new(base)),
            target,
        })
    }

    fn base(&self) -> sys::ggml_backend_dev_t {
        // SAFETY: written once at registration, read-only afterwards.
        unsafe { *self.base.ptr() }
    }
}

struct Plugin {
    reg: Box<UnsafeSync<sys::ggml_backend_reg>>,
    // boxed: ggml holds each device's address, which must not move
    #[allow(clippy::vec_box)]
    devices: Vec<Box<Device>>,
}

static PLUGIN: OnceLock<Result<Plugin, String>> = OnceLock::new();

/// Builds the registry once: the configuration must be valid and a CPU device registered.
fn plugin() -> Result<&'static Plugin, String> {
    PLUGIN.get_or_init(build).as_ref().map_err(Clone::clone)
}

fn build() -> Result<Plugin, String> {
    config::current().map_err(|e| format!("dhsa: {e}"))?;
    // SAFETY: registry queries; the returned device (if any) lives as long as the process.
    let cpu = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
    if cpu.is_null() {
        return Err("dhsa: no CPU backend is registered; load ggml's CPU backend before the DHSA plugin".into());
    }
    let reg = Box::new(UnsafeSync(UnsafeCell::new(sys::ggml_backend_reg {
        api_version: sys::GGML_BACKEND_API_VERSION as c_int,
        iface: REG_IFACE,
        context: std::ptr::null_mut(),
    })));
    let description = format!("DHSA sparse prefill attention (CPU kernels: {})", crate::kernels::simd_name());
    #[allow(unused_mut)]
    let mut devices = vec![Device::new("DHSA".into(), description, cpu, Target::Cpu)];
    #[cfg(feature = "cuda")]
    devices.extend(cuda_sidecars());
    for d in &devices {
        // SAFETY: each Box gives its device a stable address; ggml reads context to find it again.
        unsafe {
            (*d.dev.ptr()).reg = reg.ptr();
            (*d.dev.ptr()).context = &**d as *const Device as *mut c_void;
        }
    }
    Ok(Plugin { reg, devices })
}

/// A sidecar for each ggml device `CUDA<i>` of the registry that CUDA also sees here (boxed:
/// ggml holds each device's address).
#[cfg(feature = "cuda")]
#[allow(clippy::vec_box)]
fn cuda_sidecars() -> Vec<Box<Device>> {
    let n = crate::cuda::device_count();
    (0..n)
        .filter_map(|i| {
            let base = crate::ggml::device_by_name(&format!("CUDA{i}"))?;
            let gpu = crate::cuda::device_name(i).unwrap_or_else(|| "CUDA device".into());
            let description = format!("DHSA sparse prefill attention on {gpu} (sidecar of CUDA{i})");
            Some(Device::new(format!("DHSA-CUDA{i}"), description, base, Target::Cuda(i)))
        })
        .collect()
}

/// Registers the DHSA backend in this process (the runner calls this after loading ggml's
/// backends and before loading a model). Errors carry the message for an invalid `DHSA_*` value.
pub fn register() -> Result<(), String> {
    let p = plugin()?;
    // SAFETY: the registry struct lives in a 'static OnceLock; ggml keeps the pointer.
    unsafe { sys::ggml_backend_register(p.reg.ptr()) };
    Ok(())
}

// ---- exports for a dlopen'ing host -----------------------------------------------------------

/// Entry point of a dynamically loaded ggml backend: the registry, or NULL (with a message on
/// stderr) when the configuration is invalid or no CPU backend is loaded.
#[unsafe(no_mangle)]
pub extern "C" fn ggml_backend_init() -> sys::ggml_backend_reg_t {
    match catch_unwind(plugin) {
        Ok(Ok(p)) => p.reg.ptr(),
        Ok(Err(e)) => {
            stats::write_line(&e.to_string());
            std::ptr::null_mut()
        }
        Err(_) => std::ptr::null_mut(),
    }
}

/// Loader score: the plugin runs on any machine its kernels were built for.
#[unsafe(no_mangle)]
pub extern "C" fn ggml_backend_score() -> c_int {
    1
}

// ---- registry --------------------------------------------------------------------------------

/// Runs `f`, turning a panic into `fallback` (nothing may unwind into C).
fn guard<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

unsafe extern "C" fn reg_get_name(_reg: sys::ggml_backend_reg_t) -> *const c_char {
    c"DHSA".as_ptr()
}

unsafe extern "C" fn reg_get_device_count(_reg: sys::ggml_backend_reg_t) -> usize {
    guard(0, || plugin().map_or(0, |p| p.devices.len()))
}

unsafe extern "C" fn reg_get_device(_reg: sys::ggml_backend_reg_t, index: usize) -> sys::ggml_backend_dev_t {
    guard(std::ptr::null_mut(), || {
        plugin().ok().and_then(|p| p.devices.get(index)).map_or(std::ptr::null_mut(), |d| d.dev.ptr())
    })
}

unsafe extern "C" fn reg_get_proc_address(_reg: sys::ggml_backend_reg_t, name: *const c_char) -> *mut c_void {
    if name.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: ggml passes a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) };
    if name == c"ggml_backend_set_n_threads" {
        return set_n_threads as *const () as *mut c_void;
    }
    std::ptr::null_mut()
}

const REG_IFACE: sys::ggml_backend_reg_i = sys::ggml_backend_reg_i {
    get_name: Some(reg_get_name),
    get_device_count: Some(reg_get_device_count),
    get_device: Some(reg_get_device),
    get_proc_address: Some(reg_get_proc_address),
};

// ---- device ----------------------------------------------------------------------------------

/// # Safety
/// `dev` must be one of this plugin's devices.
unsafe fn device<'a>(dev: sys::ggml_backend_dev_t) -> &'a Device {
    // SAFETY: our devices' context points at their 'static Device.
    unsafe { &*((*dev).context as *const Device) }
}

unsafe extern "C" fn dev_get_name(dev: sys::ggml_backend_dev_t) -> *const c_char {
    // SAFETY: ggml calls device functions with our device.
    unsafe { device(dev) }.name.as_ptr()
}

unsafe extern "C" fn dev_get_description(dev: sys::ggml_backend_dev_t) -> *const c_char {
    // SAFETY: as above.
    unsafe { device(dev) }.description.as_ptr()
}

unsafe extern "C" fn dev_get_memory(dev: sys::ggml_backend_dev_t, free: *mut usize, total: *mut usize) {
    // SAFETY: ggml passes our device and valid out-pointers.
    unsafe {
        *free = 0;
        *total = 0;
        let d = device(dev);
        // the CPU device has no memory of its own; a sidecar shows its CUDA device's
        if d.target != Target::Cpu {
            sys::ggml_backend_dev_memory(d.base(), free, total);
        }
    }
}

fn dev_type(d: &Device) -> sys::ggml_backend_dev_type {
    match d.target {
        Target::Cpu => sys::GGML_BACKEND_DEVICE_TYPE_ACCEL,
        #[cfg(feature = "cuda")]
        Target::Cuda(_) => sys::GGML_BACKEND_DEVICE_TYPE_GPU,
    }
}

unsafe extern "C" fn dev_get_type(dev: sys::ggml_backend_dev_t) -> sys::ggml_backend_dev_type {
    // SAFETY: ggml calls device functions with our device.
    dev_type(unsafe { device(dev) })
}

unsafe extern "C" fn dev_get_props(dev: sys::ggml_backend_dev_t, props: *mut sys::ggml_backend_dev_props) {
    // SAFETY: ggml passes our device and a valid props struct.
    unsafe {
        let d = device(dev);
        let (mut free, mut total) = (0usize, 0usize);
        dev_get_memory(dev, &mut free, &mut total);
        // a sidecar shares its CUDA device's id, so llama.cpp's automatic device list keeps only
        // CUDA<i> (a duplicate id is skipped) and the sidecar is used when named with --device
        let device_id = if d.target == Target::Cpu {
            std::ptr::null()
        } else {
            let mut base = std::mem::zeroed::<sys::ggml_backend_dev_props>();
            sys::ggml_backend_dev_get_props(d.base(), &mut base);
            base.device_id
        };
        *props = sys::ggml_backend_dev_props {
            name: d.name.as_ptr(),
            description: d.description.as_ptr(),
            memory_free: free,
            memory_total: total,
            type_: dev_type(d),
            device_id,
            caps: sys::ggml_backend_dev_caps {
                async_: false,
                host_buffer: false,
                buffer_from_host_ptr: false,
                events: false,
                mmap_support: false,
            },
        };
    }
}

unsafe extern "C" fn dev_get_buffer_type(dev: sys::ggml_backend_dev_t) -> sys::ggml_backend_buffer_type_t {
    // SAFETY: our device; its base device pointer was checked non-null at registration.
    unsafe { sys::ggml_backend_dev_buffer_type(device(dev).base()) }
}

unsafe extern "C" fn dev_get_host_buffer_type(dev: sys::ggml_backend_dev_t) -> sys::ggml_backend_buffer_type_t {
    // SAFETY: our device; a sidecar offers its CUDA device's pinned host buffers (llama.cpp stages
    // inputs in the first listed device's), the CPU device none.
    unsafe {
        let d = device(dev);
        if d.target == Target::Cpu { std::ptr::null_mut() } else { sys::ggml_backend_dev_host_buffer_type(d.base()) }
    }
}

unsafe extern "C" fn dev_supports_buft(dev: sys::ggml_backend_dev_t, buft: sys::ggml_backend_buffer_type_t) -> bool {
    if buft.is_null() {
        return false;
    }
    // SAFETY: ggml passes our device and a valid buffer type.
    unsafe {
        let d = device(dev);
        match d.target {
            Target::Cpu => sys::ggml_backend_buft_is_host(buft),
            #[cfg(feature = "cuda")]
            // the mask is a graph input kept in host memory: accepted here (else the scheduler's
            // pass 3 never moves FA from CUDA<i> to the sidecar) and copied to the device once per
            // graph by the kernels' context
            Target::Cuda(_) => {
                buft == sys::ggml_backend_dev_buffer_type(d.base()) || sys::ggml_backend_buft_is_host(buft)
            }
        }
    }
}

unsafe extern "C" fn dev_supports_op(dev: sys::ggml_backend_dev_t, node: *const sys::ggml_tensor) -> bool {
    guard(false, || {
        // SAFETY: ggml calls device functions with our device.
        let target = unsafe { device(dev) }.target;
        // SAFETY: ggml passes a valid tensor whose sources are valid tensors.
        let node = unsafe { &*node };
        match node.op {
            sys::GGML_OP_NONE
            | sys::GGML_OP_RESHAPE
            | sys::GGML_OP_VIEW
            | sys::GGML_OP_PERMUTE
            | sys::GGML_OP_TRANSPOSE => true,
            sys::GGML_OP_FLASH_ATTN_EXT => {
                let Ok(cfg) = config::current() else {
                    return false;
                };
                // SAFETY: as above.
                let why = match unsafe { op::read(node) } {
                    Ok(o) if !op::engages(&o, &cfg) => Some("fewer queries or keys than DHSA_MIN_QUERIES/KEYS"),
                    Ok(o) => computes(target, &o, &cfg).err(),
                    Err(e) => Some(e),
                };
                if let Some(why) = why {
                    let key = decline_key(node);
                    // small ops (decode, short prompts) are declined by design: only the others
                    // are worth a line
                    let small = why.starts_with("fewer queries");
                    if stats::note_declined(key.clone()) && cfg.stats && !small {
                        // SAFETY: ggml calls device functions with our device.
                        let name = unsafe { device(dev) }.name.to_string_lossy();
                        stats::write_line(&format!("dhsa: {name} declines {key}: {why}"));
                    }
                }
                why.is_none()
            }
            _ => false,
        }
    })
}

/// Whether the device's kernels compute `o` exactly under `cfg` (op::read checked the CPU kernels).
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn computes(target: Target, o: &crate::kernels::Op, cfg: &Config) -> Result<(), &'static str> {
    match target {
        Target::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Target::Cuda(_) => crate::cuda::unsupported(o, cfg).map_or(Ok(()), Err),
    }
}

/// Identity of an FA node for counting distinct declined ops: its name and shapes.
fn decline_key(node: &sys::ggml_tensor) -> String {
    let name: Vec<u8> = node.name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    // SAFETY: FA nodes have q and k sources (checked non-null before use).
    let (q, k) = unsafe { (node.src[0].as_ref(), node.src[1].as_ref()) };
    format!("{}:{:?}:{:?}", String::from_utf8_lossy(&name), q.map(|t| t.ne), k.map(|t| t.ne))
}

unsafe extern "C" fn dev_init_backend(dev: sys::ggml_backend_dev_t, _params: *const c_char) -> sys::ggml_backend_t {
    guard(std::ptr::null_mut(), || {
        let cfg = match config::current() {
            Ok(c) => c,
            Err(e) => {
                stats::write_line(&format!("dhsa: {e}"));
                return std::ptr::null_mut();
            }
        };
        // SAFETY: ggml calls device functions with our device.
        let engine = match unsafe { device(dev) }.target {
            Target::Cpu => Engine::Cpu(Box::default()),
            #[cfg(feature = "cuda")]
            Target::Cuda(i) => match crate::cuda::CudaEngine::new(i) {
                Ok(e) => Engine::Cuda(e),
                Err(e) => {
                    stats::write_line(&format!("dhsa: {e}"));
                    return std::ptr::null_mut();
                }
            },
        };
        let b = Box::new(Backend {
            backend: sys::ggml_backend {
                guid: GUID.ptr(),
                iface: BACKEND_IFACE,
                device: dev,
                context: std::ptr::null_mut(),
            },
            state: Mutex::new(State {
                cfg,
                n_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                engine,
                stats: Stats::default(),
                mask_epoch: 0,
                last_slot: 0,
            }),
        });
        let raw = Box::into_raw(b);
        // SAFETY: raw is a fresh, valid allocation; the context lets callbacks find the Box.
        unsafe {
            (*raw).backend.context = raw as *mut c_void;
            &mut (*raw).backend
        }
    })
}

const DEVICE_IFACE: sys::ggml_backend_device_i = sys::ggml_backend_device_i {
    get_name: Some(dev_get_name),
    get_description: Some(dev_get_description),
    get_memory: Some(dev_get_memory),
    get_type: Some(dev_get_type),
    get_props: Some(dev_get_props),
    init_backend: Some(dev_init_backend),
    get_buffer_type: Some(dev_get_buffer_type),
    get_host_buffer_type: Some(dev_get_host_buffer_type),
    buffer_from_host_ptr: None,
    supports_op: Some(dev_supports_op),
    supports_buft: Some(dev_supports_buft),
    offload_op: None,
    event_new: None,
    event_free: None,
    event_synchronize: None,
};

// ---- backend ---------------------------------------------------------------------------------

/// A backend instance: ggml's struct first (ggml holds a pointer to it), our state after.
#[repr(C)]
struct Backend {
    backend: sys::ggml_backend,
    state: Mutex<State>,
}

struct State {
    /// the configuration at the time the backend was created
    cfg: Config,
    n_threads: usize,
    engine: Engine,
    stats: Stats,
    /// the sidecar's host-mask generation (see cuda::Flags::mask_epoch) and the address of the
    /// graph slot of the last FA node it ran
    mask_epoch: i64,
    last_slot: usize,
}

enum Engine {
    Cpu(Box<CpuEngine>),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaEngine),
}

/// # Safety
/// `b` must be a backend created by `dev_init_backend` and not yet freed.
unsafe fn backend<'a>(b: sys::ggml_backend_t) -> &'a Backend {
    // SAFETY: per the contract, context points at the live Box<Backend>.
    unsafe { &*((*b).context as *const Backend) }
}

fn is_ours(b: sys::ggml_backend_t) -> bool {
    // SAFETY: a non-null backend pointer from ggml is valid; GUIDs are 16 bytes.
    !b.is_null() && unsafe { sys::ggml_guid_matches((*b).guid, GUID.ptr()) }
}

unsafe extern "C" fn backend_get_name(_b: sys::ggml_backend_t) -> *const c_char {
    c"DHSA".as_ptr()
}

unsafe extern "C" fn backend_free(b: sys::ggml_backend_t) {
    guard((), || {
        if !is_ours(b) {
            return;
        }
        // SAFETY: ggml frees each backend once; the Box came from dev_init_backend.
        let boxed = unsafe { Box::from_raw((*b).context as *mut Backend) };
        let st = boxed.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.cfg.stats {
            let mut s = st.stats.clone();
            s.declined = stats::declined();
            // SAFETY: the backend's device is one of ours, alive for the registry's lifetime.
            s.device = unsafe { device(boxed.backend.device) }.name.to_string_lossy().into_owned();
            stats::write_line(&s.line());
        }
    })
}

extern "C" fn set_n_threads(b: sys::ggml_backend_t, n: c_int) {
    guard((), || {
        if is_ours(b) && n > 0 {
            // SAFETY: checked to be one of our live backends.
            let be = unsafe { backend(b) };
            be.state.lock().unwrap_or_else(|e| e.into_inner()).n_threads = n as usize;
        }
    })
}

unsafe extern "C" fn backend_graph_compute(b: sys::ggml_backend_t, graph: *mut sys::ggml_cgraph) -> sys::ggml_status {
    guard(sys::GGML_STATUS_FAILED, || {
        // SAFETY: ggml passes one of our backends and a valid graph.
        let be = unsafe { backend(b) };
        let mut st = be.state.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the graph is valid for the duration of the call.
        let n = unsafe { sys::ggml_graph_n_nodes(graph) };
        for i in 0..n {
            // SAFETY: i < n_nodes.
            let node = unsafe { &*sys::ggml_graph_node(graph, i) };
            if node.flags & sys::GGML_TENSOR_FLAG_COMPUTE as i32 == 0 {
                continue;
            }
            match node.op {
                sys::GGML_OP_NONE
                | sys::GGML_OP_RESHAPE
                | sys::GGML_OP_VIEW
                | sys::GGML_OP_PERMUTE
                | sys::GGML_OP_TRANSPOSE => {}
                sys::GGML_OP_FLASH_ATTN_EXT => {
                    // SAFETY: i < n_nodes indexes the graph's node array.
                    let slot = unsafe { sys::ggml_graph_nodes(graph).add(i as usize) } as usize;
                    if let Err(e) = compute_fa(&mut st, node, slot) {
                        stats::write_line(&format!("dhsa: {e}"));
                        return sys::GGML_STATUS_FAILED;
                    }
                }
                _ => {
                    stats::write_line(&format!("dhsa: asked to compute an op it never claimed (ggml op {})", node.op));
                    return sys::GGML_STATUS_FAILED;
                }
            }
        }
        sys::GGML_STATUS_SUCCESS
    })
}

/// `slot`: the address of the node's entry in the graph's node array (orders the FA nodes of a graph).
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn compute_fa(st: &mut State, node: &sys::ggml_tensor, slot: usize) -> anyhow::Result<()> {
    // SAFETY: the scheduler hands us a valid FA node with allocated sources.
    let o = unsafe { op::read(node) }.map_err(|e| anyhow::anyhow!("FA op declined at compute time: {e}"))?;
    if o.q.is_null() || o.k.is_null() || o.v.is_null() || o.dst.is_null() {
        anyhow::bail!("FA op with unallocated tensors");
    }
    let State { cfg, n_threads, engine, stats: s, mask_epoch, last_slot } = st;
    // SAFETY: the node's sources are valid tensors (as above).
    let layer = unsafe { op::layer_of(node) };
    // SAFETY: o was read from live, allocated tensors whose shapes and strides it copies; a
    // sidecar's tensors live in its CUDA device's buffers, except a host-side mask, which its
    // context copies to the device (and the context checks the others are device memory).
    let done = unsafe {
        match engine {
            Engine::Cpu(e) => e.compute_at(&o, cfg, *n_threads, layer)?,
            #[cfg(feature = "cuda")]
            Engine::Cuda(e) => {
                // The host-side mask is a graph input: llama.cpp rewrites it before each graph, and
                // every FA op of one graph reads the same one. The scheduler runs a graph's splits in
                // order over one node array, so the FA node's slot address grows within a graph and
                // falls back (or repeats) when the next graph starts: then the mask may be new.
                if *last_slot == 0 || slot <= *last_slot {
                    *mask_epoch += 1;
                }
                *last_slot = slot;
                // llama.cpp's CUDA backend queued this op's inputs on its own stream
                let flags = crate::cuda::Flags { sync_device: true, count_visible: cfg.stats, mask_epoch: *mask_epoch };
                if crate::engine::dense_layer(cfg, layer) {
                    let dense = crate::config::Config { mode: crate::config::Mode::Dense, ..cfg.clone() };
                    e.compute(&o, &dense, flags)?
                } else {
                    e.compute(&o, cfg, flags)?
                }
            }
        }
    };
    s.add(&done);
    stats::add_total(&done);
    Ok(())
}

const BACKEND_IFACE: sys::ggml_backend_i = sys::ggml_backend_i {
    get_name: Some(backend_get_name),
    free: Some(backend_free),
    set_tensor_async: None,
    get_tensor_async: None,
    set_tensor_2d_async: None,
    get_tensor_2d_async: None,
    cpy_tensor_async: None,
    synchronize: None,
    graph_plan_create: None,
    graph_plan_free: None,
    graph_plan_update: None,
    graph_plan_compute: None,
    graph_compute: Some(backend_graph_compute),
    event_record: None,
    event_wait: None,
    graph_optimize: None,
};
