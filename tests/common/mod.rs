//! Helpers shared by the integration tests: the stock llama.cpp programs, the plugin, the model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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

pub fn run(args: &[&str]) -> Output {
    dhsa().args(args).output().expect("the dhsa binary runs")
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

/// The last `n` bytes of `s` (from a char boundary), for failure messages.
pub fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The dhsa-stats lines a process printed.
pub fn stats_lines(o: &Output) -> Vec<ggml_dhsa::stats::Stats> {
    stderr(o).lines().filter_map(ggml_dhsa::stats::Stats::parse_line).collect()
}

/// A fresh folder under the target dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SmolLM2-135M-Instruct, fetched into the cache once (tests of one binary share a process, so
/// they must not fetch concurrently).
pub fn smollm2() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let spec = ggml_dhsa::models::spec("smollm2").unwrap();
        ggml_dhsa::models::Store::default().fetch(spec, &mut |l| eprintln!("{l}")).expect("smollm2 can be fetched")
    })
    .clone()
}

/// The small random-weight model written by `dhsa models synth --shape tiny`, once per test binary.
pub fn tiny_model() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        // one fixed name: synth writes through a temporary file and a rename, so a reader never
        // sees a half-written model
        let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synth-tiny.gguf");
        let o = run(&["models", "synth", "--shape", "tiny", "-o", p.to_str().unwrap(), "--force"]);
        assert!(o.status.success(), "synth failed: {}", stderr(&o));
        p
    })
    .clone()
}

/// Asserts a failed run: exit code 1, one `error:` line on stderr containing `want`, no panic.
pub fn assert_clean_error(o: &Output, want: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line on stderr, got: {err}");
    assert!(lines[0].starts_with("error: "), "not an error line: {err}");
    assert!(lines[0].contains(want), "stderr {err:?} does not say {want:?}");
}

pub fn write_truncated(src: &Path, dst: &Path, len: usize) {
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(dst, &bytes[..len.min(bytes.len())]).unwrap();
}
