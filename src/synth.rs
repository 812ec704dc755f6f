//! `dhsa models synth`: random-weight GGUF models of real shapes, for speed measurements only.
//!
//! The file is a Llama-architecture GGUF that llama.cpp (and `llama-bench`) loads like any other:
//! Q4_0 matrices with small random scales (activations stay finite through every layer), F32 norms
//! of one, and a byte-level BPE vocabulary (the 256 GPT-2 byte symbols, no merges, BOS/EOS, and
//! filler tokens up to the real vocabulary size) so that text, random token ids and generation all
//! work. What it generates is noise; its attention is not a trained model's attention, so sparse
//! selection quality cannot be judged on it, only speed.

use crate::gguf::{Value, Writer};
use anyhow::{Context, Result, anyhow, bail};
use ggml_sys as sys;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A model shape (the hyper-parameters that set the cost of prefill).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub about: &'static str,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_ff: u32,
    pub n_vocab: u32,
    pub rope_theta: f32,
    pub n_ctx: u32,
    /// the output matrix is the token embedding (no output.weight)
    pub tied: bool,
}

pub const SHAPES: &[Shape] = &[
    Shape {
        name: "llama-8b",
        about: "Llama-3.1-8B: 32 layers, n_embd 4096, 32 q / 8 kv heads of 128, ffn 14336, vocab 128256, 128K context",
        n_layer: 32,
        n_embd: 4096,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 128,
        n_ff: 14336,
        n_vocab: 128256,
        rope_theta: 500000.0,
        n_ctx: 131072,
        tied: false,
    },
    Shape {
        name: "llama-3b",
        about: "Llama-3.2-3B: 28 layers, n_embd 3072, 24 q / 8 kv heads of 128, ffn 8192, vocab 128256, 128K context",
        n_layer: 28,
        n_embd: 3072,
        n_head: 24,
        n_head_kv: 8,
        head_dim: 128,
        n_ff: 8192,
        n_vocab: 128256,
        rope_theta: 500000.0,
        n_ctx: 131072,
        tied: true,
    },
    Shape {
        name: "llama-1b",
        about: "Llama-3.2-1B: 16 layers, n_embd 2048, 32 q / 8 kv heads of 64, ffn 8192, vocab 128256, 128K context",
        n_layer: 16,
        n_embd: 2048,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 64,
        n_ff: 8192,
        n_vocab: 128256,
        rope_theta: 500000.0,
        n_ctx: 131072,
        tied: true,
    },
    Shape {
        name: "smollm2",
        about: "SmolLM2-135M: 30 layers, n_embd 576, 9 q / 3 kv heads of 64, ffn 1536, vocab 49152, 8K context",
        n_layer: 30,
        n_embd: 576,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
        n_ff: 1536,
        n_vocab: 49152,
        rope_theta: 100000.0,
        n_ctx: 8192,
        tied: true,
    },
    Shape {
        name: "tiny",
        about: "a small shape for tests: 2 layers, n_embd 256, 4 q / 2 kv heads of 64, ffn 512, vocab 512, 16K context",
        n_layer: 2,
        n_embd: 256,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 64,
        n_ff: 512,
        n_vocab: 512,
        rope_theta: 10000.0,
        n_ctx: 16384,
        tied: true,
    },
];

pub fn shape(name: &str) -> Result<&'static Shape> {
    SHAPES.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        anyhow!("unknown shape {name:?}: known shapes are {}", names.join(", "))
    })
}

#[derive(clap::Args)]
pub struct Args {
    /// model shape: llama-8b, llama-3b, llama-1b, smollm2, tiny
    #[arg(long)]
    pub shape: String,
    /// output GGUF file
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// replace an existing file
    #[arg(long)]
    pub force: bool,
    /// seed of the random weights
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn main(a: Args) -> Result<()> {
    let s = shape(&a.shape)?;
    if a.output.exists() && !a.force {
        bail!("{} exists; pass --force to replace it", a.output.display());
    }
    eprintln!(
        "warning: {} has random weights: it is for speed measurements only (its output and its attention are noise)",
        a.output.display()
    );
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if show { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("writing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    write(s, &a.output, a.force, a.seed, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    println!("{}", a.output.display());
    Ok(())
}

/// The GPT-2 byte-to-symbol table: printable bytes stand for themselves, the rest are moved to
/// code points from U+0100 on, so every byte is one visible character (llama.cpp's BPE decoder
/// maps them back).
pub fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut next = 256u32;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                let c = char::from_u32(next).unwrap_or('?');
                next += 1;
                c
            }
        })
        .collect()
}

pub const BOS: u32 = 256;
pub const EOS: u32 = 257;

/// The metadata and tensor table of `s`.
pub fn layout(s: &Shape) -> Result<Writer> {
    if s.n_vocab < 258 {
        bail!("shape {} needs a vocabulary of at least 258 tokens", s.name);
    }
    let mut w = Writer::default();
    let u32v = Value::U32;
    w.kv("general.architecture", Value::Str("llama".into()));
    w.kv("general.name", Value::Str(format!("synthetic {} (random weights, speed only)", s.name)));
    w.kv("general.file_type", u32v(2)); // LLAMA_FTYPE_MOSTLY_Q4_0
    w.kv("general.quantization_version", u32v(2));
    w.kv("llama.block_count", u32v(s.n_layer));
    w.kv("llama.context_length", u32v(s.n_ctx));
    w.kv("llama.embedding_length", u32v(s.n_embd));
    w.kv("llama.feed_forward_length", u32v(s.n_ff));
    w.kv("llama.attention.head_count", u32v(s.n_head));
    w.kv("llama.attention.head_count_kv", u32v(s.n_head_kv));
    w.kv("llama.attention.key_length", u32v(s.head_dim));
    w.kv("llama.attention.value_length", u32v(s.head_dim));
    w.kv("llama.rope.dimension_count", u32v(s.head_dim));
    w.kv("llama.rope.freq_base", Value::F32(s.rope_theta));
    w.kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    w.kv("llama.vocab_size", u32v(s.n_vocab));

    let sym = byte_symbols();
    let mut tokens: Vec<String> = sym.iter().map(|c| c.to_string()).collect();
    tokens.push("<|begin_of_text|>".into());
    tokens.push("<|end_of_text|>".into());
    tokens.extend((tokens.len() as u32..s.n_vocab).map(|i| format!("<|synth_{i}|>")));
    let types: Vec<i32> = (0..s.n_vocab).map(|i| if i == BOS || i == EOS { 3 } else { 1 }).collect();
    w.kv("tokenizer.ggml.model", Value::Str("gpt2".into()));
    w.kv("tokenizer.ggml.pre", Value::Str("default".into()));
    w.kv("tokenizer.ggml.tokens", Value::strs(&tokens));
    w.kv("tokenizer.ggml.token_type", Value::i32s(&types));
    w.kv("tokenizer.ggml.merges", Value::strs::<&str>(&[]));
    w.kv("tokenizer.ggml.bos_token_id", u32v(BOS));
    w.kv("tokenizer.ggml.eos_token_id", u32v(EOS));
    w.kv("tokenizer.ggml.add_bos_token", Value::Bool(true));

    let (e, v, ff) = (s.n_embd as u64, s.n_vocab as u64, s.n_ff as u64);
    let (q, kv) = ((s.n_head * s.head_dim) as u64, (s.n_head_kv * s.head_dim) as u64);
    let (f32t, q4) = (sys::GGML_TYPE_F32, sys::GGML_TYPE_Q4_0);
    w.tensor("token_embd.weight", &[e, v], q4)?;
    w.tensor("output_norm.weight", &[e], f32t)?;
    if !s.tied {
        w.tensor("output.weight", &[e, v], q4)?;
    }
    for i in 0..s.n_layer {
        w.tensor(&format!("blk.{i}.attn_norm.weight"), &[e], f32t)?;
        w.tensor(&format!("blk.{i}.attn_q.weight"), &[e, q], q4)?;
        w.tensor(&format!("blk.{i}.attn_k.weight"), &[e, kv], q4)?;
        w.tensor(&format!("blk.{i}.attn_v.weight"), &[e, kv], q4)?;
        w.tensor(&format!("blk.{i}.attn_output.weight"), &[q, e], q4)?;
        w.tensor(&format!("blk.{i}.ffn_norm.weight"), &[e], f32t)?;
        w.tensor(&format!("blk.{i}.ffn_gate.weight"), &[e, ff], q4)?;
        w.tensor(&format!("blk.{i}.ffn_up.weight"), &[e, ff], q4)?;
        w.tensor(&format!("blk.{i}.ffn_down.weight"), &[ff, e], q4)?;
    }
    Ok(w)
}

/// Removes a half-written file unless it was kept.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes a model of shape `s` to `out` (through a temporary file renamed at the end, so `out`
/// is either absent or complete). `progress(bytes done, total)`.
pub fn write(s: &Shape, out: &Path, force: bool, seed: u64, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    if out.exists() && !force {
        bail!("{} exists; pass --force to replace it", out.display());
    }
    if out.is_dir() {
        bail!("{} is a directory", out.display());
    }
    let w = layout(s)?;
    let total = w.file_len();
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out.file_name().ok_or_else(|| anyhow!("{} names no file", out.display()))?;
    let tmp = TempFile(Some(dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()))));
    let tmp_path = tmp.0.clone().unwrap_or_default();
    let f = std::fs::File::create(&tmp_path).with_context(|| format!("cannot create {}", tmp_path.display()))?;
    let mut bw = BufWriter::with_capacity(1 << 20, f);
    let mut rng = crate::rng::Rng::new(seed);
    let mut done = 0u64;
    let types: Vec<u32> = w.tensors().iter().map(|t| t.ggml_type).collect();
    w.write(&mut bw, &mut |i, chunk| {
        if types[i] == sys::GGML_TYPE_Q4_0 {
            fill_q4_0(&mut rng, chunk);
        } else {
            for x in chunk.chunks_exact_mut(4) {
                x.copy_from_slice(&1f32.to_le_bytes());
            }
        }
        done += chunk.len() as u64;
        progress(done, total);
    })
    .with_context(|| format!("cannot write {}", tmp_path.display()))?;
    bw.flush().with_context(|| format!("cannot write {}", tmp_path.display()))?;
    let f = bw.into_inner().map_err(|e| anyhow!("cannot write {}: {}", tmp_path.display(), e.error()))?;
    f.sync_all().with_context(|| format!("cannot write {}", tmp_path.display()))?;
    std::fs::rename(&tmp_path, out).with_context(|| format!("cannot move the model to {}", out.display()))?;
    let mut tmp = tmp;
    tmp.0 = None;
    Ok(())
}

/// Q4_0 blocks (f16 scale, 32 4-bit values around 8): random nibbles and scales in [1e-3, 1e-2],
/// small enough that activations stay finite through 32 layers.
fn fill_q4_0(rng: &mut crate::rng::Rng, chunk: &mut [u8]) {
    for b in chunk.chunks_exact_mut(18) {
        let d = crate::kernels::f32_to_f16(rng.range(1e-3, 1e-2));
        b[..2].copy_from_slice(&d.to_le_bytes());
        b[2..10].copy_from_slice(&rng.next_u64().to_le_bytes());
        b[10..18].copy_from_slice(&rng.next_u64().to_le_bytes());
    }
}
