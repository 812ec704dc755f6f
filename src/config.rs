//! The one configuration of dhsa. A stock llama.cpp host offers no channel but the environment, so
//! the plugin reads `DHSA_*` variables once when it registers; the `dhsa` runner starts from the
//! same values and lets its flags override them. Every knob is listed in `KNOBS` with its default
//! and accepted values; an invalid value is an error that names the variable and what it accepts.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

/// How the attention op is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// exact attention over every visible key (the reference)
    Dense,
    /// dynamic chunks, length-normalized chunk scores, budgeted top-k (the paper's method)
    Dhsa,
    /// fixed-size blocks, mean-pooled, top-k (the Block Sparse Attention baseline)
    Block,
    /// sink + local window only (StreamingLLM)
    Streaming,
    /// the true top-k keys per query block from exact dense scores (upper bound, slow)
    Oracle,
}

impl Mode {
    pub const ALL: [Mode; 5] = [Mode::Dense, Mode::Dhsa, Mode::Block, Mode::Streaming, Mode::Oracle];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Dense => "dense",
            Mode::Dhsa => "dhsa",
            Mode::Block => "block",
            Mode::Streaming => "streaming",
            Mode::Oracle => "oracle",
        }
    }

    pub fn is_sparse(self) -> bool {
        self != Mode::Dense
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("accepted values are {}", Mode::ALL.map(Mode::name).join(", ")))
    }
}

/// How key chunks are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Chunking {
    /// boundaries where the mean key left and right of a position differ most (training-free)
    Dynamic,
    /// every `chunk_max` tokens
    Fixed,
}

impl FromStr for Chunking {
    type Err = String;
    fn from_str(s: &str) -> Result<Chunking, String> {
        match s {
            "dynamic" => Ok(Chunking::Dynamic),
            "fixed" => Ok(Chunking::Fixed),
            _ => Err("accepted values are dynamic, fixed".into()),
        }
    }
}

/// How the query heads of a kv-head group score a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadScore {
    /// rows where it is implemented (the CPU), mean on CUDA (whose kernels score with mean only)
    Auto,
    /// the mean query of all the group's heads over the block, against the chunk key
    Mean,
    /// each head's mean query over the block against the chunk key; the group takes the best
    Max,
    /// the estimated attention mass per key: each head's softmax over the chunks (mean query .
    /// mean key, times the op's scale, plus log length), summed over the group's heads
    Mass,
    /// each head's mean query over the block against every key (one probe query per block and
    /// head): the attention mass it puts on each chunk, per key, summed over the group's heads
    Probe,
    /// every query row's softmax over the chunk mean keys (weighted by length): the attention
    /// mass it puts on each chunk, per key, summed over the block's rows and the group's heads
    Rows,
}

impl HeadScore {
    /// The scoring the CPU selection runs (auto: rows).
    pub fn on_cpu(self) -> HeadScore {
        if self == HeadScore::Auto { HeadScore::Rows } else { self }
    }
}

impl FromStr for HeadScore {
    type Err = String;
    fn from_str(s: &str) -> Result<HeadScore, String> {
        match s {
            "auto" => Ok(HeadScore::Auto),
            "mean" => Ok(HeadScore::Mean),
            "max" => Ok(HeadScore::Max),
            "mass" => Ok(HeadScore::Mass),
            "probe" => Ok(HeadScore::Probe),
            "rows" => Ok(HeadScore::Rows),
            _ => Err("accepted values are auto, mean, max, mass, probe, rows".into()),
        }
    }
}

/// How a dhsa chunk key is formed from its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkNorm {
    /// sum / sqrt(length): the paper's length-normalised chunk key
    Sqrt,
    /// the mean key (what block mode uses)
    Mean,
}

impl FromStr for ChunkNorm {
    type Err = String;
    fn from_str(s: &str) -> Result<ChunkNorm, String> {
        match s {
            "sqrt" => Ok(ChunkNorm::Sqrt),
            "mean" => Ok(ChunkNorm::Mean),
            _ => Err("accepted values are sqrt, mean".into()),
        }
    }
}

/// Everything the plugin and the runner read. See `KNOBS` for meanings and defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub mode: Mode,
    /// the op is taken only with at least this many queries (prefill-shaped; >= 2)
    pub min_queries: usize,
    /// the op is taken only with at least this many keys
    pub min_keys: usize,
    /// keys attended per query block (sink + window + selected chunks)
    pub budget: usize,
    /// queries per block that share one selection
    pub q_block: usize,
    /// leading keys always kept
    pub sink: usize,
    /// keys before each query block always kept
    pub window: usize,
    pub chunking: Chunking,
    /// dynamic chunks: shortest and longest chunk; fixed chunks: `chunk_max` each
    pub chunk_min: usize,
    pub chunk_max: usize,
    /// dynamic chunks: tokens on each side whose mean keys are compared
    pub boundary_window: usize,
    /// block mode: size of the fixed, mean-pooled blocks
    pub block_size: usize,
    /// adaptive budget: stop adding chunks once their estimated attention mass reaches tau (0: off)
    pub tau: f32,
    /// one selection for all heads (the paper) instead of one per kv-head group
    pub shared_heads: bool,
    /// the first `dense_layers` layers of the model attend to every key (sparse modes)
    pub dense_layers: usize,
    /// dhsa: how the query heads of a group score a chunk
    pub head_score: HeadScore,
    /// dhsa probe scores: mean queries per block (of q_block / probes queries each)
    pub probes: usize,
    /// dhsa rows scores: every `row_step`-th query row of a block scores the chunks
    pub row_step: usize,
    /// dhsa rows scores: keys per scored piece of a chunk (0: the whole chunk)
    pub row_pool: usize,
    /// dhsa: how a chunk key is formed
    pub chunk_norm: ChunkNorm,
    /// write one `dhsa-stats {...}` line to stderr when a backend is freed
    pub stats: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Dhsa,
            min_queries: 32,
            min_keys: 1024,
            budget: 2048,
            q_block: 64,
            sink: 64,
            window: 256,
            chunking: Chunking::Dynamic,
            chunk_min: 8,
            chunk_max: 32,
            boundary_window: 4,
            block_size: 64,
            tau: 0.0,
            shared_heads: false,
            dense_layers: 0,
            head_score: HeadScore::Auto,
            probes: 1,
            row_step: 1,
            row_pool: 0,
            chunk_norm: ChunkNorm::Sqrt,
            stats: false,
        }
    }
}

/// A knob: its variable, what it means, and its accepted values (for errors and README).
pub struct Knob {
    pub var: &'static str,
    pub about: &'static str,
    pub accepted: &'static str,
    set: fn(&mut Config, &str) -> Result<(), String>,
    get: fn(&Config) -> String,
}

fn int(v: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("accepted values are integers from {lo} to {hi}")),
    }
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.trim() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" | "" => Ok(false),
        _ => Err("accepted values are 1, 0, true, false, on, off".into()),
    }
}

const MAX_TOKENS: usize = 1 << 24;

pub const KNOBS: &[Knob] = &[
    Knob {
        var: "DHSA_MODE",
        about: "attention mode for prefill ops the plugin takes",
        accepted: "dense, dhsa, block, streaming, oracle",
        set: |c, v| {
            c.mode = v.trim().parse()?;
            Ok(())
        },
        get: |c| c.mode.to_string(),
    },
    Knob {
        var: "DHSA_MIN_QUERIES",
        about: "take an FA op only with at least this many queries (2 or more: one-token ops stay with llama.cpp)",
        accepted: "2..=16777216",
        set: |c, v| {
            c.min_queries = int(v, 2, MAX_TOKENS)?;
            Ok(())
        },
        get: |c| c.min_queries.to_string(),
    },
    Knob {
        var: "DHSA_MIN_KEYS",
        about: "take an FA op only with at least this many keys",
        accepted: "1..=16777216",
        set: |c, v| {
            c.min_keys = int(v, 1, MAX_TOKENS)?;
            Ok(())
        },
        get: |c| c.min_keys.to_string(),
    },
    Knob {
        var: "DHSA_BUDGET",
        about: "keys attended per query block, sink and window included",
        accepted: "1..=16777216",
        set: |c, v| {
            c.budget = int(v, 1, MAX_TOKENS)?;
            Ok(())
        },
        get: |c| c.budget.to_string(),
    },
    Knob {
        var: "DHSA_Q_BLOCK",
        about: "queries per block sharing one selection",
        accepted: "1..=4096",
        set: |c, v| {
            c.q_block = int(v, 1, 4096)?;
            Ok(())
        },
        get: |c| c.q_block.to_string(),
    },
    Knob {
        var: "DHSA_SINK",
        about: "leading keys always kept",
        accepted: "0..=16777216",
        set: |c, v| {
            c.sink = int(v, 0, MAX_TOKENS)?;
            Ok(())
        },
        get: |c| c.sink.to_string(),
    },
    Knob {
        var: "DHSA_WINDOW",
        about: "keys just before each query block always kept",
        accepted: "0..=16777216",
        set: |c, v| {
            c.window = int(v, 0, MAX_TOKENS)?;
            Ok(())
        },
        get: |c| c.window.to_string(),
    },
    Knob {
        var: "DHSA_CHUNKING",
        about: "how key chunks are formed",
        accepted: "dynamic, fixed",
        set: |c, v| {
            c.chunking = v.trim().parse()?;
            Ok(())
        },
        get: |c| format!("{:?}", c.chunking).to_lowercase(),
    },
    Knob {
        var: "DHSA_CHUNK_MIN",
        about: "shortest dynamic chunk",
        accepted: "1..=4096",
        set: |c, v| {
            c.chunk_min = int(v, 1, 4096)?;
            Ok(())
        },
        get: |c| c.chunk_min.to_string(),
    },
    Knob {
        var: "DHSA_CHUNK_MAX",
        about: "longest dynamic chunk; the size of fixed chunks",
        accepted: "1..=4096",
        set: |c, v| {
            c.chunk_max = int(v, 1, 4096)?;
            Ok(())
        },
        get: |c| c.chunk_max.to_string(),
    },
    Knob {
        var: "DHSA_BOUNDARY_WINDOW",
        about: "dynamic chunks: tokens each side whose mean keys are compared",
        accepted: "1..=64",
        set: |c, v| {
            c.boundary_window = int(v, 1, 64)?;
            Ok(())
        },
        get: |c| c.boundary_window.to_string(),
    },
    Knob {
        var: "DHSA_BLOCK_SIZE",
        about: "block mode: tokens per fixed, mean-pooled block",
        accepted: "1..=4096",
        set: |c, v| {
            c.block_size = int(v, 1, 4096)?;
            Ok(())
        },
        get: |c| c.block_size.to_string(),
    },
    Knob {
        var: "DHSA_TAU",
        about: "adaptive budget: stop once the kept chunks' estimated attention mass reaches tau (0 = off)",
        accepted: "a number in [0, 1]",
        set: |c, v| {
            c.tau = match v.trim().parse::<f32>() {
                Ok(t) if (0.0..=1.0).contains(&t) => t,
                _ => return Err("accepted values are numbers from 0 to 1".into()),
            };
            Ok(())
        },
        get: |c| c.tau.to_string(),
    },
    Knob {
        var: "DHSA_SHARED_HEADS",
        about: "one selection shared by all heads (as in the paper) instead of one per kv-head group",
        accepted: "1, 0, true, false, on, off",
        set: |c, v| {
            c.shared_heads = boolean(v)?;
            Ok(())
        },
        get: |c| (c.shared_heads as u8).to_string(),
    },
    Knob {
        var: "DHSA_DENSE_LAYERS",
        about: "the first N layers attend to every key in every mode (layers whose attention is spread too thin for a budget)",
        accepted: "0..=4096",
        set: |c, v| {
            c.dense_layers = int(v, 0, 4096)?;
            Ok(())
        },
        get: |c| c.dense_layers.to_string(),
    },
    Knob {
        var: "DHSA_HEAD_SCORE",
        about: "dhsa: chunk score of a kv-head group: rows on the CPU and mean on CUDA (auto), or from the mean query of its heads (mean, the paper's), the best of its heads (max), or the heads' estimated attention mass per key (mass), or the mass each head's mean query puts on the chunk's keys (probe), or the mass every query row puts on the chunk when its softmax runs over chunk mean keys (rows)",
        accepted: "auto, mean, max, mass, probe, rows",
        set: |c, v| {
            c.head_score = v.trim().parse()?;
            Ok(())
        },
        get: |c| format!("{:?}", c.head_score).to_lowercase(),
    },
    Knob {
        var: "DHSA_PROBES",
        about: "dhsa probe scores: probe queries per query block, each the mean of q_block / probes queries",
        accepted: "1..=64",
        set: |c, v| {
            c.probes = int(v, 1, 64)?;
            Ok(())
        },
        get: |c| c.probes.to_string(),
    },
    Knob {
        var: "DHSA_ROW_STEP",
        about: "dhsa rows scores: every row_step-th query row of a block scores the chunks (1: every row)",
        accepted: "1..=64",
        set: |c, v| {
            c.row_step = int(v, 1, 64)?;
            Ok(())
        },
        get: |c| c.row_step.to_string(),
    },
    Knob {
        var: "DHSA_ROW_POOL",
        about: "dhsa rows scores: the rows score pieces of at most this many keys of each chunk, a chunk gets the mass of its pieces (0: whole chunks; finer is more accurate and slower)",
        accepted: "0..=4096",
        set: |c, v| {
            c.row_pool = int(v, 0, 4096)?;
            Ok(())
        },
        get: |c| c.row_pool.to_string(),
    },
    Knob {
        var: "DHSA_CHUNK_NORM",
        about: "dhsa: chunk key = sum / sqrt(length) (sqrt, the paper's) or the mean key (mean)",
        accepted: "sqrt, mean",
        set: |c, v| {
            c.chunk_norm = v.trim().parse()?;
            Ok(())
        },
        get: |c| format!("{:?}", c.chunk_norm).to_lowercase(),
    },
    Knob {
        var: "DHSA_STATS",
        about: "print one dhsa-stats JSON line to stderr when a backend is freed",
        accepted: "1, 0, true, false, on, off",
        set: |c, v| {
            c.stats = boolean(v)?;
            Ok(())
        },
        get: |c| (c.stats as u8).to_string(),
    },
];

/// An invalid setting: names the variable (or flag) and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Applies `DHSA_*` values from `lookup` (the environment, or a map in tests) over the defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        for k in KNOBS {
            if let Some(v) = lookup(k.var) {
                (k.set)(&mut c, &v).map_err(|e| ConfigError(format!("invalid {}={v:?}: {e}", k.var)))?;
            }
        }
        c.validate()?;
        Ok(c)
    }

    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Sets one knob by variable name (the runner maps its flags onto these).
    pub fn set(&mut self, var: &str, value: &str) -> Result<(), ConfigError> {
        let k = KNOBS.iter().find(|k| k.var == var).ok_or_else(|| ConfigError(format!("unknown setting {var}")))?;
        (k.set)(self, value).map_err(|e| ConfigError(format!("invalid {var}={value:?}: {e}")))?;
        self.validate()
    }

    pub fn get(&self, var: &str) -> Option<String> {
        KNOBS.iter().find(|k| k.var == var).map(|k| (k.get)(self))
    }

    /// The README table of every knob: variable, default, accepted values, meaning.
    pub fn knob_table() -> String {
        let d = Config::default();
        let mut t = String::from("| variable | default | accepted | what |\n|---|---|---|---|\n");
        for k in KNOBS {
            t += &format!("| `{}` | `{}` | {} | {} |\n", k.var, (k.get)(&d), k.accepted, k.about);
        }
        t
    }

    /// Cross-knob rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chunk_min > self.chunk_max {
            return Err(ConfigError(format!(
                "invalid DHSA_CHUNK_MIN={} with DHSA_CHUNK_MAX={}: the shortest chunk cannot exceed the longest",
                self.chunk_min, self.chunk_max
            )));
        }
        Ok(())
    }

    /// All knobs as `VAR=value` pairs (for --json output and reports).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        KNOBS.iter().map(|k| (k.var, (k.get)(self))).collect()
    }
}

static CURRENT: Mutex<Option<Config>> = Mutex::new(None);

/// The configuration new backends take: what `install` set last, else the environment (read once).
pub fn current() -> Result<Config, ConfigError> {
    let mut g = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = g.as_ref() {
        return Ok(c.clone());
    }
    let c = Config::from_env()?;
    *g = Some(c.clone());
    Ok(c)
}

/// Replaces the configuration that backends created from now on take (the runner's flags).
pub fn install(c: Config) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
}
