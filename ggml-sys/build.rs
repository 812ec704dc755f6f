//! Builds the pinned llama.cpp tree (ggml-base, ggml, ggml-cpu, llama) as shared libraries with
//! GGML_BACKEND_DL=ON, and generates Rust bindings for the headers dhsa needs.
//!
//! The cmake build lives in a cache folder keyed by the tree and the options (default
//! `<target>/upstream/<key>`, or $DHSA_BUILD_CACHE), shared by every cargo profile, so it is built
//! once; cargo only re-runs this script when the manifest or an input variable changes.

#[path = "build/upstream.rs"]
mod upstream;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Libraries built here; ggml-cpu is a backend module loaded at run time, never linked.
const LIB_TARGETS: &[&str] = &["ggml-base", "ggml", "ggml-cpu", "llama"];
const HEADERS: &[&str] = &["ggml.h", "ggml-backend.h", "ggml-cpu.h", "gguf.h", "llama.h", "ggml-backend-impl.h"];

fn main() {
    if let Err(e) = run() {
        // one clear message, then stop the build
        eprintln!("\nerror: ggml-sys: {e}\n");
        println!("cargo:warning=ggml-sys: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let manifest_file = manifest_dir.join("../vendor/llama.cpp.toml");
    for var in ["DHSA_LLAMA_CPP_DIR", "DHSA_CACHE", "DHSA_BUILD_CACHE", "DHSA_CMAKE_ARGS", "PYTHON"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={}", manifest_file.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/upstream.rs");

    let manifest = upstream::Manifest::load(&manifest_file)?;
    let user_dir = env::var_os("DHSA_LLAMA_CPP_DIR").filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = &user_dir {
        // a user's tree: pick up their edits
        println!("cargo:rerun-if-changed={}", d.join("ggml").display());
        println!("cargo:rerun-if-changed={}", d.join("include").display());
        println!("cargo:rerun-if-changed={}", d.join("src").display());
    }
    let cache = upstream::cache_root().join("upstream");
    let source = upstream::resolve(&manifest, &cache, user_dir.as_deref(), &upstream::Pip::default())?;

    check_api_version(&source.dir, manifest.backend_api_version)?;
    let cmake_args = cmake_args();
    let key = build_key(&source.identity, &cmake_args);
    let build_root = match env::var_os("DHSA_BUILD_CACHE").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => target_dir().join("upstream"),
    };
    let build_dir = build_root.join(&key);
    fs::create_dir_all(&build_root).map_err(|e| format!("cannot create {}: {e}", build_root.display()))?;

    // Several cargo invocations (profiles, worktrees sharing DHSA_BUILD_CACHE) may get here at once.
    let lock = fs::File::create(build_root.join(format!("{key}.lock")))
        .map_err(|e| format!("cannot create the build lock: {e}"))?;
    lock.lock().map_err(|e| format!("cannot lock {}: {e}", build_root.display()))?;
    cmake_build(&source.dir, &build_dir, &cmake_args)?;
    drop(lock);

    let bin_dir = build_dir.join("bin");
    bindings(&source.dir)?;

    println!("cargo:rustc-link-search=native={}", bin_dir.display());
    for lib in ["llama", "ggml", "ggml-base"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    // our own test and example binaries find the shared libraries without LD_LIBRARY_PATH
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", bin_dir.display());
    // metadata for dependents (DEP_GGML_*): the root crate sets its rpath and runtime paths from these
    println!("cargo:lib_dir={}", bin_dir.display());
    println!("cargo:build_dir={}", build_dir.display());
    println!("cargo:src_dir={}", source.dir.display());
    println!("cargo:pinned={}", source.pinned);
    println!("cargo:ggml_version={}", ggml_version(&source.dir).unwrap_or_else(|| manifest.ggml_version.clone()));
    println!("cargo:upstream={} {}", manifest.package, manifest.version);
    println!("cargo:rustc-env=GGML_SYS_BUILD_DIR={}", build_dir.display());
    println!("cargo:rustc-env=GGML_SYS_BIN_DIR={}", bin_dir.display());
    Ok(())
}

/// `<target>` from OUT_DIR = <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out
fn target_dir() -> PathBuf {
    if let Some(d) = env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    out.ancestors().nth(4).map(Path::to_path_buf).unwrap_or(out)
}

fn cmake_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DGGML_BACKEND_DL=ON",
        "-DGGML_NATIVE=OFF",
        "-DGGML_CPU_ALL_VARIANTS=OFF",
        "-DGGML_CCACHE=OFF",
        "-DLLAMA_OPENSSL=OFF",
        // the stock programs the tests use are configured here and built on demand (upstream-tools)
        "-DLLAMA_BUILD_COMMON=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_TESTS=ON",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // GGML_NATIVE is refused with GGML_BACKEND_DL: name the instruction sets this machine has.
    let flags = cpu_flags();
    let has = |f: &str| flags.iter().any(|x| x == f);
    for (opt, flag) in [
        ("GGML_SSE42", "sse4_2"),
        ("GGML_AVX", "avx"),
        ("GGML_AVX2", "avx2"),
        ("GGML_FMA", "fma"),
        ("GGML_F16C", "f16c"),
        ("GGML_BMI2", "bmi2"),
        ("GGML_AVX512", "avx512f"),
    ] {
        args.push(format!("-D{opt}={}", if has(flag) { "ON" } else { "OFF" }));
    }
    if let Ok(extra) = env::var("DHSA_CMAKE_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_owned));
    }
    args
}

fn cpu_flags() -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/cpuinfo") else {
        return vec![];
    };
    info.lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn build_key(identity: &str, args: &[String]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(identity.as_bytes());
    for a in args {
        h.update(b"\0");
        h.update(a.as_bytes());
    }
    h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn cmake_build(src: &Path, build: &Path, args: &[String]) -> Result<(), String> {
    if !have("cmake") {
        return Err("cmake is not installed; install it (Debian: apt-get install cmake) and build again".into());
    }
    if !build.join("CMakeCache.txt").is_file() {
        let mut cmd = Command::new("cmake");
        cmd.arg("-S").arg(src).arg("-B").arg(build).args(args);
        if have("ninja") {
            cmd.args(["-G", "Ninja"]);
        }
        run_logged(cmd, &build.join("configure.log"), "configuring llama.cpp with cmake")?;
    }
    let jobs = env::var("NUM_JOBS").unwrap_or_else(|_| "2".into());
    let mut cmd = Command::new("cmake");
    cmd.arg("--build").arg(build).args(["--parallel", &jobs, "--target"]).args(LIB_TARGETS);
    run_logged(cmd, &build.join("build.log"), "building llama.cpp")?;
    for lib in ["libggml-base.so", "libggml.so", "libllama.so", "libggml-cpu.so"] {
        if !build.join("bin").join(lib).exists() {
            return Err(format!(
                "the llama.cpp build finished but {} is missing",
                build.join("bin").join(lib).display()
            ));
        }
    }
    Ok(())
}

fn run_logged(mut cmd: Command, log: &Path, what: &str) -> Result<(), String> {
    if let Some(p) = log.parent() {
        fs::create_dir_all(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
    }
    let out = cmd.output().map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    let mut text = out.stdout.clone();
    text.extend_from_slice(&out.stderr);
    let _ = fs::write(log, &text);
    if !out.status.success() {
        let s = String::from_utf8_lossy(&text);
        let tail: Vec<&str> = s.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what} failed (full log: {}):\n{}", log.display(), tail.join("\n")));
    }
    Ok(())
}

/// The backend vtables dhsa fills in are those of one GGML_BACKEND_API_VERSION.
fn check_api_version(src: &Path, want: i64) -> Result<(), String> {
    let impl_h = src.join("ggml/src/ggml-backend-impl.h");
    let text = fs::read_to_string(&impl_h).map_err(|e| format!("cannot read {}: {e}", impl_h.display()))?;
    let found = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define GGML_BACKEND_API_VERSION"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or(format!("{} defines no GGML_BACKEND_API_VERSION: not a supported llama.cpp tree", impl_h.display()))?;
    if found != want {
        return Err(format!(
            "{} has GGML_BACKEND_API_VERSION {found}, but dhsa implements version {want} \
             (vendor/llama.cpp.toml); use a llama.cpp tree of that API version",
            src.display()
        ));
    }
    Ok(())
}

fn ggml_version(src: &Path) -> Option<String> {
    let text = fs::read_to_string(src.join("ggml/CMakeLists.txt")).ok()?;
    let get = |name: &str| -> Option<String> {
        let needle = format!("set(GGML_VERSION_{name} ");
        let line = text.lines().find(|l| l.trim_start().starts_with(&needle))?;
        Some(line.trim_start()[needle.len()..].trim_end_matches(')').trim().to_owned())
    };
    Some(format!("{}.{}.{}", get("MAJOR")?, get("MINOR")?, get("PATCH")?))
}

fn bindings(src: &Path) -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let wrapper: String = HEADERS.iter().map(|h| format!("#include \"{h}\"\n")).collect();
    let b = bindgen::Builder::default()
        .header_contents("ggml_sys_wrapper.h", &wrapper)
        .clang_arg(format!("-I{}", src.join("ggml/include").display()))
        .clang_arg(format!("-I{}", src.join("ggml/src").display()))
        .clang_arg(format!("-I{}", src.join("include").display()))
        .allowlist_function("(ggml|gguf|llama)_.*")
        .allowlist_type("(ggml|gguf|llama)_.*")
        .allowlist_var("(GGML|GGUF|LLAMA)_.*")
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .derive_default(true)
        .generate_comments(false)
        .layout_tests(true)
        .generate()
        .map_err(|e| format!("bindgen failed on the llama.cpp headers: {e}"))?;
    b.write_to_file(out.join("bindings.rs")).map_err(|e| format!("cannot write bindings: {e}"))
}
