//! What every `dhsa` command that runs a model does first: settle the configuration (environment,
//! then flags), start llama.cpp's backends, register DHSA in-process, load the model.

use crate::config::{self, Config};
use crate::llama::{self, Model, ModelOptions};
use anyhow::{Result, anyhow};
use std::path::PathBuf;

/// Flags shared by run, demo, bench and eval; each overrides its `DHSA_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DhsaFlags {
    /// attention for prefill: dense, dhsa, block, streaming, oracle [env DHSA_MODE]
    #[arg(long)]
    pub mode: Option<String>,
    /// keys attended per query block, sink and window included [env DHSA_BUDGET]
    #[arg(long)]
    pub budget: Option<String>,
    /// queries per block sharing one selection [env DHSA_Q_BLOCK]
    #[arg(long = "q-block")]
    pub q_block: Option<String>,
    /// leading keys always kept [env DHSA_SINK]
    #[arg(long)]
    pub sink: Option<String>,
    /// keys before each query block always kept [env DHSA_WINDOW]
    #[arg(long)]
    pub window: Option<String>,
    /// dynamic or fixed chunks [env DHSA_CHUNKING]
    #[arg(long)]
    pub chunking: Option<String>,
    /// adaptive budget threshold, 0 = off [env DHSA_TAU]
    #[arg(long)]
    pub tau: Option<String>,
    /// any other knob, as VAR=value (repeatable), e.g. --set DHSA_CHUNK_MIN=4
    #[arg(long = "set", value_name = "VAR=VALUE")]
    pub set: Vec<String>,
    /// print the plugin's dhsa-stats line when a context ends [env DHSA_STATS]
    #[arg(long)]
    pub stats: bool,
}

impl DhsaFlags {
    /// The environment's configuration with these flags applied.
    pub fn config(&self) -> Result<Config> {
        let mut c = Config::from_env()?;
        for (var, v) in [
            ("DHSA_MODE", &self.mode),
            ("DHSA_BUDGET", &self.budget),
            ("DHSA_Q_BLOCK", &self.q_block),
            ("DHSA_SINK", &self.sink),
            ("DHSA_WINDOW", &self.window),
            ("DHSA_CHUNKING", &self.chunking),
            ("DHSA_TAU", &self.tau),
        ] {
            if let Some(v) = v {
                c.set(var, v)?;
            }
        }
        for kv in &self.set {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--set wants VAR=VALUE, got {kv:?}"))?;
            c.set(k.trim(), v)?;
        }
        if self.stats {
            c.stats = true;
        }
        Ok(c)
    }
}

/// Starts llama.cpp's backends and registers DHSA with `cfg` (what new contexts will use).
pub fn start(cfg: &Config, verbose: bool) -> Result<()> {
    forget_plugin_path();
    llama::init(verbose);
    config::install(cfg.clone());
    crate::plugin::register().map_err(|e| anyhow!(e))
}

/// The runner registers DHSA in-process; a GGML_BACKEND_PATH naming the plugin would add a
/// second copy, so it is dropped (with a note).
fn forget_plugin_path() {
    let Some(p) = std::env::var_os("GGML_BACKEND_PATH") else { return };
    if PathBuf::from(&p).file_name().is_some_and(|n| n.to_string_lossy().contains("ggml_dhsa")) {
        eprintln!("note: dhsa registers its plugin itself; ignoring GGML_BACKEND_PATH={}", p.to_string_lossy());
        // SAFETY: called before any thread of this process reads the environment concurrently
        // (the runner starts its threads later, in llama.cpp).
        unsafe { std::env::remove_var("GGML_BACKEND_PATH") };
    }
}

/// Options for a model with `n_gpu_layers` layers on the GPU. With the `cuda` feature and layers
/// on a GPU, each CUDA<i> gets its DHSA-CUDA<i> sidecar listed just before it with no share of the
/// layers (as `--device DHSA-CUDA0,CUDA0 -ts 0,1` does for llama.cpp's tools), so the scheduler moves
/// prefill FA from CUDA<i> to the sidecar (DESIGN section 2).
pub fn model_options(n_gpu_layers: i32) -> ModelOptions {
    #[allow(unused_mut)]
    let mut o = ModelOptions { n_gpu_layers, ..Default::default() };
    #[cfg(feature = "cuda")]
    if n_gpu_layers != 0 {
        use crate::ggml::device_by_name;
        for i in 0.. {
            match (device_by_name(&format!("DHSA-CUDA{i}")), device_by_name(&format!("CUDA{i}"))) {
                (Some(side), Some(cuda)) => {
                    o.devices.extend([side, cuda]);
                    o.tensor_split.extend([0.0, 1.0]);
                }
                _ => break,
            }
        }
    }
    o
}

/// Resolves `-m` (name or path) and loads the model.
pub fn load_model(name_or_path: &str, opts: &ModelOptions) -> Result<(PathBuf, Model)> {
    let path = crate::models::resolve(name_or_path, &mut |l| eprintln!("{l}"))?;
    let model = Model::load(&path, opts)?;
    Ok((path, model))
}
