//! Long natural text (Python's own `pydoc_data/topics.py`, about 800 KB of English that every
//! machine with python3 has) and passkey prompts built from it.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// The pydoc topics as one text, cached under $DHSA_CACHE/text after the first call.
pub fn natural_text() -> Result<String> {
    let path = crate::models::cache_root().join("text").join("pydoc_topics.txt");
    if let Ok(t) = std::fs::read_to_string(&path)
        && t.len() > 100_000
    {
        return Ok(t);
    }
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&py)
        .args(["-c", "import pydoc_data.topics as t, sys; sys.stdout.write('\\n\\n'.join(t.topics[k] for k in sorted(t.topics)))"])
        .output()
        .with_context(|| format!("cannot run {py} to read pydoc_data.topics"))?;
    if !out.status.success() || out.stdout.len() < 100_000 {
        bail!("{py} could not provide pydoc_data.topics ({})", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8(out.stdout).context("pydoc topics are not UTF-8")?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
        let tmp = dir.join(format!(".topics-{}", std::process::id()));
        if std::fs::write(&tmp, &text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(text)
}

/// The classic filler of passkey benchmarks.
pub const REPEAT_FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Haystack {
    Natural,
    Repeat,
}

impl std::str::FromStr for Haystack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "natural" => Ok(Haystack::Natural),
            "repeat" => Ok(Haystack::Repeat),
            _ => Err("accepted values are natural, repeat".into()),
        }
    }
}

/// `n` characters of filler starting at `offset` (natural text wraps around), cut at a line or
/// sentence end.
pub fn filler(kind: Haystack, natural: &str, offset: usize, n: usize) -> String {
    let src: String = match kind {
        Haystack::Repeat => REPEAT_FILLER.repeat(n / REPEAT_FILLER.len() + 2),
        Haystack::Natural => {
            // start at a line boundary at or after the offset
            let from = offset % natural.len();
            let start = natural[from..].find('\n').map_or(0, |i| from + i + 1);
            let mut s = natural[start..].to_string();
            while s.len() < n + 1 {
                s.push_str("\n\n");
                s.push_str(natural);
            }
            s
        }
    };
    let mut cut = n.min(src.len());
    while !src.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &src[..cut];
    let end = head.rfind(['\n', '.']).map_or(cut, |i| i + 1);
    head[..end].to_string()
}

/// A passkey prompt: `key` hidden at relative `depth` (0 = start, 1 = end) of `chars` characters
/// of filler. The model should continue it with the key.
pub fn passkey_prompt(kind: Haystack, natural: &str, offset: usize, chars: usize, depth: f64, key: &str) -> String {
    let hay = filler(kind, natural, offset, chars);
    let mut at = ((hay.len() as f64) * depth.clamp(0.0, 1.0)) as usize;
    while !hay.is_char_boundary(at) {
        at -= 1;
    }
    let at = hay[..at].rfind('\n').or_else(|| hay[..at].rfind(". ").map(|i| i + 1)).unwrap_or(at);
    format!(
        "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n\n{}\nThe pass key is {key}. Remember it. {key} is the pass key.\n{}\n\nWhat is the pass key? The pass key is",
        &hay[..at],
        &hay[at..]
    )
}

/// Builds the prompt with about `tokens` tokens by adjusting the filler length to the tokenizer.
pub fn passkey_prompt_tokens(
    kind: Haystack,
    natural: &str,
    offset: usize,
    tokens: usize,
    depth: f64,
    key: &str,
    count: &mut dyn FnMut(&str) -> Result<usize>,
) -> Result<String> {
    let mut chars = tokens * 4;
    let mut p = passkey_prompt(kind, natural, offset, chars, depth, key);
    for _ in 0..4 {
        let n = count(&p)?;
        if n <= tokens && n + tokens / 50 + 8 >= tokens {
            break;
        }
        chars = ((chars as f64) * (tokens as f64 - 4.0) / n as f64) as usize;
        p = passkey_prompt(kind, natural, offset, chars, depth, key);
    }
    Ok(p)
}

/// A random 5-digit key.
pub fn random_key(rng: &mut crate::rng::Rng) -> String {
    format!("{}", 10000 + rng.below(90000))
}

pub fn cache_path(name: &str) -> PathBuf {
    crate::models::cache_root().join("text").join(name)
}
