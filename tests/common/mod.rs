//! Helpers shared by the integration tests: the stock llama.cpp programs, the plugin, the model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A stock llama.cpp program built from the pinned tree (`cargo upstream-tools`).
pub fn tool(name: &str) -> PathBuf {
    let p = Path::new(ggml_sys::BIN_DIR).join(name);
    assert!(p.is_file(), "{} is missing: build the stock programs with `cargo upstream-tools`", p.display());
    p
}

/// The plugin built next to this test binary (target/<profile>/libggml_dhsa.so).
pub fn plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let p = dir.join("libggml_dhsa.so");
    assert!(p.is_file(), "{} is missing (it is built with the library)", p.display());
    p
}

/// The dhsa binary.
pub fn dhsa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dhsa"))
}

/// SmolLM2-135M-Instruct, fetched and verified once.
pub fn smollm2() -> PathBuf {
    let spec = ggml_dhsa::models::spec("smollm2").unwrap();
    ggml_dhsa::models::Store::default().fetch(spec, &mut |l| eprintln!("{l}")).expect("fetch smollm2")
}

/// A passkey prompt of several thousand tokens written to a temp file; returns (file, key).
pub fn passkey_file(name: &str, chars: usize, key: &str) -> PathBuf {
    let text = ggml_dhsa::text::natural_text().unwrap();
    let p = ggml_dhsa::text::passkey_prompt(ggml_dhsa::text::Haystack::Natural, &text, 20_000, chars, 0.5, key);
    let f = std::env::temp_dir().join(format!("dhsa-{name}-{}.txt", std::process::id()));
    std::fs::write(&f, p).unwrap();
    f
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The dhsa-stats lines a process printed.
pub fn stats_lines(o: &Output) -> Vec<ggml_dhsa::stats::Stats> {
    stderr(o).lines().filter_map(ggml_dhsa::stats::Stats::parse_line).collect()
}
