//! `dhsa eval`: does sparse prefill change the answers? Three measurements, every mode side by
//! side in one process on one model (one llama context per mode, each taking its own
//! configuration): a passkey grid (`passkey`), perplexity and KL divergence against dense
//! (`ppl`), and the share of the exact attention mass the kept keys carry (`recall`).
//!
//! Runs are long on small machines, so every cell (one mode on one prompt or text window) is
//! cached under `$DHSA_CACHE/eval/` keyed by everything that decides its result (model bytes,
//! mode and configuration, text, sizes, and the source code of the kernels and the selection):
//! an interrupted run resumes where it stopped, and adding a mode computes only that mode.

pub mod passkey;
pub mod ppl;
pub mod recall;

use crate::config::{self, Config, Mode};
use crate::llama::{Context, ContextOptions, Model};
use crate::session::DhsaFlags;
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Once;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Needle in a haystack: a random passkey hidden at several depths of several lengths
    Passkey(Box<passkey::Args>),
    /// Perplexity over long text windows, and KL divergence / top-1 agreement against dense
    Ppl(Box<ppl::Args>),
    /// Share of the exact dense attention mass that each mode's kept keys carry, per layer and head
    Recall(Box<recall::Args>),
}

pub fn main(cmd: Cmd, verbose: bool) -> Result<()> {
    match cmd {
        Cmd::Passkey(a) => passkey::main(*a, verbose),
        Cmd::Ppl(a) => ppl::main(*a, verbose),
        Cmd::Recall(a) => recall::main(*a, verbose),
    }
}

/// Flags every eval command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// model: a GGUF path or a known name (smollm2, gemma3) [required]
    #[arg(short = 'm', long = "model")]
    pub model: Option<String>,
    /// modes to compare, comma-separated; a mode may carry settings after a colon, e.g.
    /// `dhsa:budget=1024,window=128` (a `key=value` item belongs to the mode before it)
    /// [default: dense,dhsa,block,streaming; recall: dhsa,block,streaming,oracle]
    #[arg(long)]
    pub modes: Option<String>,
    /// which half of the text: tune (first half of the pydoc topics, used to choose the
    /// defaults), test (second half, used for reports) or all
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// threads
    #[arg(short = 't', long = "threads")]
    pub threads: Option<i32>,
    /// physical batch size (queries per attention op during prefill)
    #[arg(long = "ubatch-size", default_value_t = 512)]
    pub ubatch: u32,
    /// print the results as JSON on stdout (the table goes to stderr)
    #[arg(long)]
    pub json: bool,
    /// recompute every cell instead of reading the cache
    #[arg(long)]
    pub fresh: bool,
    /// settings shared by every mode (each mode's own settings win)
    #[command(flatten)]
    pub dhsa: DhsaFlags,
}

impl Common {
    pub fn threads(&self) -> i32 {
        self.threads.unwrap_or_else(crate::llama::default_threads)
    }

    /// The modes to compare (`default` when --modes is not given).
    pub fn specs(&self, default: &str) -> Result<Vec<ModeSpec>> {
        parse_modes(self.modes.as_deref().unwrap_or(default), &self.dhsa.config()?)
    }

    pub fn context_options(&self, n_ctx: u32) -> ContextOptions {
        ContextOptions {
            n_ctx,
            n_batch: self.ubatch,
            n_ubatch: self.ubatch,
            n_threads: self.threads(),
            ..Default::default()
        }
    }
}

/// Which part of the text an evaluation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Tune,
    Test,
    All,
}

/// The evaluation text: `file` or the pydoc topics, cut in two halves at a paragraph break near the
/// middle. The topics are sorted by name, so the halves are different topics.
pub fn text(file: Option<&Path>, split: Split) -> Result<String> {
    let all = match file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("cannot read text file {}", f.display()))?,
        None => crate::text::natural_text()?,
    };
    let mid = all.len() / 2;
    let cut = all[..mid].rfind("\n\n").filter(|&i| i > mid / 2).unwrap_or_else(|| {
        let mut m = mid;
        while !all.is_char_boundary(m) {
            m -= 1;
        }
        m
    });
    Ok(match split {
        Split::All => all,
        Split::Tune => all[..cut].to_string(),
        Split::Test => all[cut..].trim_start().to_string(),
    })
}

/// One mode to evaluate: a label (as given) and its complete configuration.
#[derive(Debug, Clone)]
pub struct ModeSpec {
    pub label: String,
    pub cfg: Config,
}

/// Parses `dense,dhsa:budget=1024,window=128,block` over `base`.
pub fn parse_modes(list: &str, base: &Config) -> Result<Vec<ModeSpec>> {
    let mut items: Vec<String> = vec![];
    for it in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match items.last_mut() {
            Some(last) if it.contains('=') && !it.contains(':') => {
                last.push(',');
                last.push_str(it);
            }
            _ => items.push(it.to_string()),
        }
    }
    ensure!(!items.is_empty(), "--modes names no mode");
    let mut out: Vec<ModeSpec> = vec![];
    for label in items {
        let (mode, sets) = label.split_once(':').unwrap_or((&label, ""));
        let mut cfg = base.clone();
        cfg.set("DHSA_MODE", mode).map_err(|e| anyhow!("mode {label:?}: {e}"))?;
        for kv in sets.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("mode {label:?}: {kv:?} is not key=value"))?;
            let k = k.trim().to_uppercase();
            let var = if k.starts_with("DHSA_") { k } else { format!("DHSA_{k}") };
            cfg.set(&var, v.trim()).map_err(|e| anyhow!("mode {label:?}: {e}"))?;
        }
        cfg.stats = true; // the kernels count visible keys only then; the kept fraction needs them
        ensure!(!out.iter().any(|s| s.label == label), "mode {label:?} is listed twice");
        out.push(ModeSpec { label, cfg });
    }
    Ok(out)
}

/// The settings that decide a mode's result (dense: none).
pub fn config_key(cfg: &Config) -> serde_json::Value {
    if cfg.mode == Mode::Dense {
        return serde_json::json!({ "mode": "dense", "code": dense_code_id() });
    }
    let pairs: serde_json::Map<String, serde_json::Value> =
        cfg.pairs().into_iter().filter(|(k, _)| *k != "DHSA_STATS").map(|(k, v)| (k.to_string(), v.into())).collect();
    serde_json::json!({ "config": pairs, "code": sparse_code_id() })
}

fn sha_hex(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The exact attention kernel's source: dense results change only when it does.
fn dense_code_id() -> String {
    sha_hex(&[include_bytes!("../../csrc/attention.c"), include_bytes!("../../csrc/dhsa.h")])[..16].to_string()
}

/// Everything a sparse result depends on: the kernels, the selection and the engine.
fn sparse_code_id() -> String {
    sha_hex(&[
        include_bytes!("../../csrc/attention.c"),
        include_bytes!("../../csrc/dhsa.h"),
        include_bytes!("../../csrc/select.c"),
        include_bytes!("../select.rs"),
        include_bytes!("../engine.rs"),
    ])[..16]
        .to_string()
}

/// A model's identity for cache keys: file name, size and sha256 of its bytes.
pub fn model_id(path: &Path) -> Result<String> {
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    let sha = crate::models::sha256_file(path)?;
    let name = path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    Ok(format!("{name}:{size}:{}", &sha[..16]))
}

pub fn text_id(text: &str) -> String {
    sha_hex(&[text.as_bytes()])[..16].to_string()
}

/// Finished cells of one kind of evaluation, as JSON files named by the hash of their key.
pub struct Cache {
    dir: PathBuf,
    fresh: bool,
}

impl Cache {
    pub fn new(kind: &str, fresh: bool) -> Cache {
        Cache { dir: crate::models::cache_root().join("eval").join(kind), fresh }
    }

    fn path(&self, key: &serde_json::Value) -> PathBuf {
        self.dir.join(format!("{}.json", &sha_hex(&[key.to_string().as_bytes()])[..32]))
    }

    pub fn get<T: serde::de::DeserializeOwned>(&self, key: &serde_json::Value) -> Option<T> {
        if self.fresh {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(self.path(key)).ok()?).ok()?;
        // a hash collision or a file from an older layout is a miss, not an error
        if v.get("key") != Some(key) {
            return None;
        }
        serde_json::from_value(v.get("value")?.clone()).ok()
    }

    pub fn put<T: serde::Serialize>(&self, key: &serde_json::Value, value: &T) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let p = self.path(key);
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let body = serde_json::to_vec(&serde_json::json!({ "key": key, "value": value }))?;
        std::fs::write(&tmp, body).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
        Ok(())
    }
}

/// Starts llama.cpp and registers DHSA once per process; later calls only install `cfg`.
pub fn start(cfg: &Config, verbose: bool) -> Result<()> {
    static STARTED: Once = Once::new();
    let mut r = Ok(());
    STARTED.call_once(|| r = crate::session::start(cfg, verbose));
    r?;
    config::install(cfg.clone());
    Ok(())
}

/// A context whose DHSA backend computes with `cfg`.
pub fn context<'m>(model: &'m Model, cfg: &Config, opts: &ContextOptions) -> Result<Context<'m>> {
    config::install(cfg.clone());
    Context::new(model, opts)
}

/// Starts llama.cpp, loads the model named by `-m` and returns (path, identity, model).
pub fn load(common: &Common, specs: &[ModeSpec], verbose: bool) -> Result<(PathBuf, String, Model)> {
    start(&specs[0].cfg, verbose)?;
    let name =
        common.model.as_deref().ok_or_else(|| anyhow!("give a model with -m (a GGUF path or smollm2, gemma3)"))?;
    let (path, model) = crate::session::load_model(name, &Default::default())?;
    let id = model_id(&path)?;
    Ok((path, id, model))
}

/// The model's BOS token as its tokenizer adds it (empty when it adds none).
pub fn bos(model: &Model) -> Result<Vec<i32>> {
    model.vocab().tokenize("", true)
}

/// Tokens of `text` cut into `n` windows of `len` tokens (each starting with BOS when the model
/// uses one), spread evenly over the text.
pub fn windows(model: &Model, text: &str, len: usize, n: usize) -> Result<Vec<Vec<i32>>> {
    let bos = bos(model)?;
    let toks = model.vocab().tokenize(text, false)?;
    let body = len.checked_sub(bos.len()).filter(|&b| b > 0).ok_or_else(|| anyhow!("window of {len} tokens"))?;
    let fit = toks.len() / body;
    if fit < n {
        bail!("the text has {} tokens: room for {fit} windows of {len}, not {n}", toks.len());
    }
    // evenly spaced starts, windows never overlapping
    let stride = toks.len() / n;
    Ok((0..n)
        .map(|i| {
            let s = (i * stride).min(toks.len() - body);
            bos.iter().copied().chain(toks[s..s + body].iter().copied()).collect()
        })
        .collect())
}

/// A markdown table from a header and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", header.join(" | "));
    for (i, _) in header.iter().enumerate() {
        s.push_str(if i == 0 { "---|" } else { "---:|" });
    }
    for r in rows {
        s.push_str(&format!("\n| {} |", r.join(" | ")));
    }
    s
}

/// Prints `text` for a person: on stdout, or on stderr when stdout carries JSON.
pub fn report(json: bool, text: &str) {
    if json {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_with_their_settings() {
        let s = parse_modes("dense, dhsa:budget=1024,window=128 ,block:block_size=32,streaming", &Config::default())
            .unwrap();
        let labels: Vec<&str> = s.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels, ["dense", "dhsa:budget=1024,window=128", "block:block_size=32", "streaming"]);
        assert_eq!((s[1].cfg.budget, s[1].cfg.window, s[1].cfg.mode), (1024, 128, Mode::Dhsa));
        assert_eq!((s[2].cfg.block_size, s[2].cfg.mode), (32, Mode::Block));
        assert!(parse_modes("dhsa:budget=0", &Config::default()).is_err());
        assert!(parse_modes("sparse", &Config::default()).is_err());
        assert!(parse_modes("dhsa,dhsa", &Config::default()).is_err());
        assert!(parse_modes("dhsa:nonsense=1", &Config::default()).is_err());
    }

    #[test]
    fn cache_keys_separate_configurations_but_not_dense_settings() {
        let a = Config { mode: Mode::Dense, budget: 1, ..Config::default() };
        let b = Config { mode: Mode::Dense, budget: 2, ..Config::default() };
        assert_eq!(config_key(&a), config_key(&b));
        let c = Config { mode: Mode::Dhsa, budget: 1, ..Config::default() };
        let d = Config { mode: Mode::Dhsa, budget: 2, ..Config::default() };
        assert_ne!(config_key(&c), config_key(&d));
        assert_eq!(config_key(&c), config_key(&Config { stats: true, ..c.clone() }));
    }
}
