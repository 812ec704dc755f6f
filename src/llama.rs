//! A small safe layer over llama.h: backend start-up, model, context and tokenizer, each owning its
//! pointer and freeing it on drop. Only what the runner, benchmarks and evaluation need.

use anyhow::{Context as _, Result, anyhow, bail};
use ggml_sys as sys;
use std::ffi::{CStr, CString, c_char, c_void};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static INIT: Once = Once::new();
static LOG_LEVEL: AtomicI32 = AtomicI32::new(sys::GGML_LOG_LEVEL_ERROR as i32);

/// Where the backend modules (libggml-cpu.so, libggml-cuda.so) are loaded from: $DHSA_BACKEND_DIR,
/// else the upstream build this binary was linked against.
pub fn backend_dir() -> String {
    std::env::var("DHSA_BACKEND_DIR").ok().filter(|d| !d.is_empty()).unwrap_or_else(|| sys::BIN_DIR.to_string())
}

unsafe extern "C" fn log_cb(level: sys::ggml_log_level, text: *const c_char, _ud: *mut c_void) {
    let min = LOG_LEVEL.load(Ordering::Relaxed);
    // after Ctrl-C, llama.cpp reports the graph it was told to abort as failed: expected, not news
    if INTERRUPTED.load(Ordering::Relaxed) && min > sys::GGML_LOG_LEVEL_DEBUG as i32 {
        return;
    }
    // CONT lines continue whatever came before; keep them only when everything is shown
    let show =
        if level == sys::GGML_LOG_LEVEL_CONT { min <= sys::GGML_LOG_LEVEL_DEBUG as i32 } else { level as i32 >= min };
    if show && !text.is_null() {
        // SAFETY: llama.cpp passes a NUL-terminated string valid for the duration of the call.
        let s = unsafe { CStr::from_ptr(text) };
        eprint!("{}", s.to_string_lossy());
    }
}

/// Loads the ggml backends once per process and routes llama.cpp's log to stderr, errors only
/// unless `verbose`. Backends registered in-process (dhsa's own) must be registered after this.
pub fn init(verbose: bool) {
    LOG_LEVEL.store(
        if verbose { sys::GGML_LOG_LEVEL_DEBUG as i32 } else { sys::GGML_LOG_LEVEL_ERROR as i32 },
        Ordering::Relaxed,
    );
    INIT.call_once(|| {
        let dir = CString::new(backend_dir()).unwrap_or_default();
        // SAFETY: plain C calls with a valid callback and a NUL-terminated path that outlives them.
        unsafe {
            sys::llama_log_set(Some(log_cb), std::ptr::null_mut());
            sys::ggml_log_set(Some(log_cb), std::ptr::null_mut());
            sys::ggml_backend_load_all_from_path(dir.as_ptr());
            sys::llama_backend_init();
        }
    });
}

/// Checks that `path` is a readable, complete GGUF (header, tensor table, and data as long as the
/// table says) before llama.cpp sees it, so the user gets one clear line instead of a loader trace.
pub fn check_gguf(path: &Path) -> Result<()> {
    crate::gguf::check(path)?;
    Ok(())
}

/// Options for loading a model.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// layers to offload to GPU devices (0: CPU only; negative: all)
    pub n_gpu_layers: i32,
    /// explicit device list (as llama.cpp's --device); empty: llama.cpp's default
    pub devices: Vec<sys::ggml_backend_dev_t>,
    /// share of the model per device in `devices` order (as llama.cpp's -ts); empty: automatic
    pub tensor_split: Vec<f32>,
}

pub struct Model {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: a llama_model is immutable after loading and llama.cpp allows using it from several
// threads (each with its own context).
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Model {
    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Model> {
        check_gguf(path)?;
        let cpath = CString::new(path.to_string_lossy().as_bytes()).context("model path contains a NUL byte")?;
        let mut devices: Vec<sys::ggml_backend_dev_t> = opts.devices.clone();
        let mut split = vec![0f32; 128];
        // SAFETY: llama_model_default_params returns a plain struct by value.
        let mut p = unsafe { sys::llama_model_default_params() };
        p.n_gpu_layers = opts.n_gpu_layers;
        if !devices.is_empty() {
            devices.push(std::ptr::null_mut());
            p.devices = devices.as_mut_ptr();
        }
        if !opts.tensor_split.is_empty() {
            // SAFETY: llama_max_devices is a pure query.
            let max = unsafe { sys::llama_max_devices() };
            split.resize(max.max(opts.tensor_split.len()), 0.0);
            split[..opts.tensor_split.len()].copy_from_slice(&opts.tensor_split);
            p.tensor_split = split.as_ptr();
        }
        p.progress_callback = Some(quiet_progress);
        // SAFETY: cpath, devices and split outlive the call; the callback ignores its user data.
        let ptr = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), p) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            anyhow!("llama.cpp could not load {} (truncated, corrupt, or an unsupported model)", path.display())
        })?;
        Ok(Model { ptr })
    }

    pub fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    pub fn vocab(&self) -> Vocab<'_> {
        // SAFETY: the model is alive; the vocab lives as long as the model.
        let v = unsafe { sys::llama_model_get_vocab(self.ptr.as_ptr()) };
        Vocab { ptr: v, _model: std::marker::PhantomData }
    }

    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: pure query on a live model.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()).max(0) as u32 }
    }

    pub fn n_layer(&self) -> u32 {
        // SAFETY: pure query on a live model.
        unsafe { sys::llama_model_n_layer(self.ptr.as_ptr()).max(0) as u32 }
    }

    pub fn n_head(&self) -> u32 {
        // SAFETY: pure query on a live model.
        unsafe { sys::llama_model_n_head(self.ptr.as_ptr()).max(0) as u32 }
    }

    pub fn n_head_kv(&self) -> u32 {
        // SAFETY: pure query on a live model.
        unsafe { sys::llama_model_n_head_kv(self.ptr.as_ptr()).max(0) as u32 }
    }

    pub fn desc(&self) -> String {
        let mut buf = [0u8; 256];
        // SAFETY: buf is writable for its length; llama_model_desc NUL-terminates within it.
        let n = unsafe { sys::llama_model_desc(self.ptr.as_ptr(), buf.as_mut_ptr() as *mut c_char, buf.len()) };
        String::from_utf8_lossy(&buf[..(n.max(0) as usize).min(buf.len())]).into_owned()
    }

    /// The model's own chat template, if it has one.
    pub fn chat_template(&self) -> Option<CString> {
        // SAFETY: returns NULL or a string owned by the model.
        let p = unsafe { sys::llama_model_chat_template(self.ptr.as_ptr(), std::ptr::null()) };
        // SAFETY: non-null pointers are NUL-terminated strings owned by the model.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_owned())
    }

    /// Wraps `user` in the model's chat template as one user turn plus the assistant prefix.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let Some(tmpl) = self.chat_template() else {
            return Ok(user.to_string());
        };
        let role = CString::new("user").unwrap();
        let content = CString::new(user).context("prompt contains a NUL byte")?;
        let msg = sys::llama_chat_message { role: role.as_ptr(), content: content.as_ptr() };
        let mut buf = vec![0u8; user.len() * 2 + 1024];
        for _ in 0..2 {
            // SAFETY: tmpl, msg's strings and buf are valid for the call; buf's length is passed.
            let n = unsafe {
                sys::llama_chat_apply_template(
                    tmpl.as_ptr(),
                    &msg,
                    1,
                    true,
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as i32,
                )
            };
            if n < 0 {
                bail!("the model's chat template could not be applied");
            }
            if (n as usize) <= buf.len() {
                buf.truncate(n as usize);
                return Ok(String::from_utf8_lossy(&buf).into_owned());
            }
            buf.resize(n as usize, 0);
        }
        bail!("the model's chat template could not be applied")
    }
}

unsafe extern "C" fn quiet_progress(_p: f32, _ud: *mut c_void) -> bool {
    true
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: we own the model; every Context borrowing it has been dropped (lifetimes).
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

pub struct Vocab<'m> {
    ptr: *const sys::llama_vocab,
    _model: std::marker::PhantomData<&'m Model>,
}

impl Vocab<'_> {
    /// False for models written without a tokenizer ("no_vocab"), on which llama.cpp's tokenizer
    /// aborts.
    pub fn has_tokenizer(&self) -> bool {
        // SAFETY: pure query.
        unsafe { sys::llama_vocab_type(self.ptr) != sys::LLAMA_VOCAB_TYPE_NONE }
    }

    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        if !self.has_tokenizer() {
            bail!("this model has no tokenizer (a speed-only model?); it cannot read text");
        }
        let len = i32::try_from(text.len()).context("prompt is larger than 2 GiB")?;
        let mut toks = vec![0i32; text.len() + 16];
        // SAFETY: text and toks are valid for the lengths passed.
        let mut n = unsafe {
            sys::llama_tokenize(
                self.ptr,
                text.as_ptr() as *const c_char,
                len,
                toks.as_mut_ptr(),
                toks.len() as i32,
                add_special,
                true,
            )
        };
        if n < 0 {
            toks.resize((-n) as usize, 0);
            // SAFETY: as above, with the size llama.cpp asked for.
            n = unsafe {
                sys::llama_tokenize(
                    self.ptr,
                    text.as_ptr() as *const c_char,
                    len,
                    toks.as_mut_ptr(),
                    toks.len() as i32,
                    add_special,
                    true,
                )
            };
            if n < 0 {
                bail!("tokenization failed");
            }
        }
        toks.truncate(n as usize);
        Ok(toks)
    }

    /// The bytes of one token (pieces of a UTF-8 character may span tokens).
    pub fn piece(&self, tok: i32) -> Vec<u8> {
        if !self.has_tokenizer() {
            return vec![];
        }
        let mut buf = vec![0u8; 64];
        for _ in 0..2 {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                sys::llama_token_to_piece(self.ptr, tok, buf.as_mut_ptr() as *mut c_char, buf.len() as i32, 0, false)
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
        vec![]
    }

    pub fn is_eog(&self, tok: i32) -> bool {
        // SAFETY: pure query.
        unsafe { sys::llama_vocab_is_eog(self.ptr, tok) }
    }

    pub fn n_tokens(&self) -> i32 {
        // SAFETY: pure query.
        unsafe { sys::llama_vocab_n_tokens(self.ptr) }
    }
}

/// Options for a context, named after llama.cpp's flags.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_threads: i32,
    /// -fa: Some(true) on, Some(false) off, None auto
    pub flash_attn: Option<bool>,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions { n_ctx: 0, n_batch: 2048, n_ubatch: 512, n_threads: default_threads(), flash_attn: Some(true) }
    }
}

pub fn default_threads() -> i32 {
    std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2)
}

/// Set by Ctrl-C; checked by llama.cpp between graph nodes through the abort callback.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn abort_cb(_ud: *mut c_void) -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    model: &'m Model,
}

/// Outcome of a decode call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Ok,
    Interrupted,
}

impl<'m> Context<'m> {
    pub fn new(model: &'m Model, o: &ContextOptions) -> Result<Context<'m>> {
        // SAFETY: returns a plain struct by value.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = o.n_ctx;
        p.n_batch = o.n_batch.max(o.n_ubatch);
        p.n_ubatch = o.n_ubatch;
        p.n_threads = o.n_threads;
        p.n_threads_batch = o.n_threads;
        p.no_perf = false;
        p.flash_attn_type = match o.flash_attn {
            Some(true) => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            Some(false) => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            None => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
        };
        p.abort_callback = Some(abort_cb);
        // SAFETY: the model is alive for 'm, which bounds the context.
        let ptr = unsafe { sys::llama_init_from_model(model.as_ptr(), p) };
        let ptr =
            NonNull::new(ptr).ok_or_else(|| anyhow!("llama.cpp could not create a context (n_ctx {})", o.n_ctx))?;
        Ok(Context { ptr, model })
    }

    pub fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn n_ctx(&self) -> u32 {
        // SAFETY: pure query on a live context.
        unsafe { sys::llama_n_ctx(self.ptr.as_ptr()) }
    }

    pub fn n_ubatch(&self) -> u32 {
        // SAFETY: pure query on a live context.
        unsafe { sys::llama_n_ubatch(self.ptr.as_ptr()) }
    }

    /// Empties the KV cache.
    pub fn clear(&mut self) {
        // SAFETY: the memory handle belongs to this live context.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) }
    }

    /// Drops cached positions >= `p0` of sequence 0; false where the cache cannot drop part of a
    /// sequence (then `clear` and decode again).
    pub fn truncate(&mut self, p0: i32) -> bool {
        // SAFETY: as above.
        unsafe { sys::llama_memory_seq_rm(sys::llama_get_memory(self.ptr.as_ptr()), 0, p0, -1) }
    }

    /// Sequence 0's cache (keys, values, positions) as bytes, for `set_seq_state` on another
    /// context of the same model.
    pub fn seq_state(&mut self) -> Result<Vec<u8>> {
        // SAFETY: a live context; the buffer has the size llama.cpp asked for.
        unsafe {
            let n = sys::llama_state_seq_get_size(self.ptr.as_ptr(), 0);
            let mut buf = vec![0u8; n];
            let got = sys::llama_state_seq_get_data(self.ptr.as_ptr(), buf.as_mut_ptr(), n, 0);
            if got == 0 && n > 0 {
                bail!("llama.cpp could not copy the KV cache");
            }
            buf.truncate(got);
            Ok(buf)
        }
    }

    /// Replaces sequence 0's cache by `state` from `seq_state`.
    pub fn set_seq_state(&mut self, state: &[u8]) -> Result<()> {
        self.clear();
        // SAFETY: a live context; state is valid for its length.
        let n = unsafe { sys::llama_state_seq_set_data(self.ptr.as_ptr(), state.as_ptr(), state.len(), 0) };
        if n == 0 && !state.is_empty() {
            bail!("llama.cpp could not restore a KV cache of {} bytes", state.len());
        }
        Ok(())
    }

    /// Waits until the work queued by `decode` is done (GPU backends return early).
    pub fn synchronize(&mut self) {
        // SAFETY: a live context.
        unsafe { sys::llama_synchronize(self.ptr.as_ptr()) }
    }

    /// Decodes `tokens` at positions `pos0..` of sequence 0; logits are kept for the last token,
    /// or for every token with `all_logits`.
    pub fn decode(&mut self, tokens: &[i32], pos0: i32, all_logits: bool) -> Result<Decoded> {
        if tokens.is_empty() {
            return Ok(Decoded::Ok);
        }
        // SAFETY: llama_batch_init allocates a batch for tokens.len() tokens of one sequence; it is
        // filled within those bounds and freed below.
        unsafe {
            let mut b = sys::llama_batch_init(tokens.len() as i32, 0, 1);
            for (i, &t) in tokens.iter().enumerate() {
                *b.token.add(i) = t;
                *b.pos.add(i) = pos0 + i as i32;
                *b.n_seq_id.add(i) = 1;
                **b.seq_id.add(i) = 0;
                *b.logits.add(i) = (all_logits || i + 1 == tokens.len()) as i8;
            }
            b.n_tokens = tokens.len() as i32;
            let rc = sys::llama_decode(self.ptr.as_ptr(), b);
            sys::llama_batch_free(b);
            match rc {
                0 => Ok(Decoded::Ok),
                2 => Ok(Decoded::Interrupted),
                1 => bail!("the KV cache has no room for {} more tokens (context {})", tokens.len(), self.n_ctx()),
                rc => bail!("llama_decode failed ({rc})"),
            }
        }
    }

    /// Logits of output `i` (as counted by llama.cpp: -1 is the last output).
    pub fn logits(&self, i: i32) -> &[f32] {
        // SAFETY: llama_get_logits_ith returns n_vocab floats owned by the context, valid until the
        // next decode, which needs &mut self.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), i);
            if p.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(p, self.model.vocab().n_tokens() as usize)
        }
    }

    /// llama.cpp's own timings: (prompt ms, prompt tokens, eval ms, eval tokens).
    pub fn perf(&self) -> (f64, i32, f64, i32) {
        // SAFETY: pure query on a live context.
        let d = unsafe { sys::llama_perf_context(self.ptr.as_ptr()) };
        (d.t_p_eval_ms, d.n_p_eval, d.t_eval_ms, d.n_eval)
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the context.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

pub fn argmax(logits: &[f32]) -> i32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as i32
}
