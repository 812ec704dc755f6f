//! Compiles the kernels: `csrc/*.c` with the cc crate (always optimized), and with the `cuda`
//! feature `csrc/cuda/*.cu` with nvcc. Sets the rpath so every binary of this package (the runner,
//! tests, benches, the plugin) finds the upstream shared libraries without LD_LIBRARY_PATH.
//!
//! Knobs (environment, read at build time):
//! - `DHSA_CPU_SIMD`: `auto` (default: AVX2+FMA+F16C when this machine has them), `portable`
//!   (scalar C only, runs on any x86-64 or other CPU), `native` (-march=native).
//! - `DHSA_SANITIZE`: e.g. `address,undefined`: build the C kernels with those sanitizers.
//! - `CUDA_PATH` or `nvcc` on PATH (feature `cuda`); `scripts/install-cuda.sh` provides one.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// nvcc targets: SASS for Ampere and Hopper, plus PTX so newer GPUs can JIT it.
const CUDA_GENCODE: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
];

fn main() {
    for var in ["DHSA_CPU_SIMD", "DHSA_SANITIZE", "CUDA_PATH", "NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=csrc");

    let lib_dir = env::var("DEP_GGML_LIB_DIR").expect("ggml-sys exports lib_dir");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    for (key, var) in
        [("GGML_VERSION", "DHSA_GGML_VERSION"), ("UPSTREAM", "DHSA_UPSTREAM"), ("SRC_DIR", "DHSA_UPSTREAM_SRC")]
    {
        let v = env::var(format!("DEP_GGML_{key}")).unwrap_or_default();
        println!("cargo:rustc-env={var}={v}");
    }

    let simd = compile_c();
    bind_kernels();
    println!("cargo:rustc-env=DHSA_CPU_SIMD_BUILT={simd}");

    if env::var_os("CARGO_FEATURE_CUDA").is_some()
        && let Err(e) = compile_cuda()
    {
        eprintln!("\nerror: dhsa (feature cuda): {e}\n");
        println!("cargo:warning=dhsa (feature cuda): {e}");
        std::process::exit(1);
    }
}

fn sources(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == ext));
    v.sort();
    v
}

fn cpu_has(flags: &[&str]) -> bool {
    let Ok(info) = fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    let Some(line) = info.lines().find(|l| l.starts_with("flags")) else {
        return false;
    };
    let have: Vec<&str> = line.split_whitespace().collect();
    flags.iter().all(|f| have.contains(f))
}

/// Returns the SIMD level the C kernels were built for.
fn compile_c() -> String {
    let files = sources("csrc", "c");
    if files.is_empty() {
        return "none".into();
    }
    let mut b = cc::Build::new();
    b.files(files)
        .include("csrc")
        .opt_level(3)
        .std("c11")
        .flag("-fno-math-errno")
        .flag("-fopenmp")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings_into_errors(true);
    let x86 = env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
    let mode = env::var("DHSA_CPU_SIMD").unwrap_or_else(|_| "auto".into());
    let level = match mode.as_str() {
        "portable" => "portable".to_string(),
        "native" => {
            b.flag("-march=native");
            "native".to_string()
        }
        "auto" | "" => {
            if x86 && cpu_has(&["avx2", "fma", "f16c"]) {
                b.flag("-mavx2").flag("-mfma").flag("-mf16c");
                "avx2".to_string()
            } else {
                "portable".to_string()
            }
        }
        other => {
            eprintln!("error: DHSA_CPU_SIMD={other}: accepted values are auto, portable, native");
            std::process::exit(1);
        }
    };
    if let Ok(san) = env::var("DHSA_SANITIZE")
        && !san.is_empty()
    {
        b.flag(format!("-fsanitize={san}")).flag("-fno-omit-frame-pointer").flag("-fno-sanitize-recover=all");
        b.opt_level(2);
        // the sanitizer runtimes (gcc's), for every binary of the package; rustc links with
        // -nodefaultlibs, so they are named explicitly
        for (name, lib) in [("address", "asan"), ("undefined", "ubsan"), ("thread", "tsan")] {
            if san.split(',').any(|s| s.trim() == name) {
                let out = Command::new("gcc").arg(format!("-print-file-name=lib{lib}.so")).output();
                if let Some(dir) = out.ok().map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
                    && let Some(dir) = dir.parent().filter(|d| d.is_dir())
                {
                    println!("cargo:rustc-link-search=native={}", dir.display());
                }
                println!("cargo:rustc-link-lib=dylib={lib}");
            }
        }
    }
    b.compile("dhsa_kernels");
    // the kernels share libgomp's thread pool with ggml's CPU backend (same threads, no oversubscription)
    println!("cargo:rustc-link-lib=dylib=gomp");
    level
}

/// Rust declarations of csrc/dhsa.h, the whole C ABI of the kernels.
fn bind_kernels() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindgen::Builder::default()
        .header("csrc/dhsa.h")
        .allowlist_function("dhsa_.*")
        .allowlist_type("dhsa_.*")
        .allowlist_var("DHSA_.*")
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .derive_default(true)
        .generate_comments(false)
        .generate()
        .expect("bindgen on csrc/dhsa.h")
        .write_to_file(out.join("dhsa_kernels.rs"))
        .expect("write kernel bindings");
}

fn find_nvcc() -> Result<PathBuf, String> {
    if let Some(p) = env::var_os("NVCC") {
        return Ok(PathBuf::from(p));
    }
    if let Some(root) = env::var_os("CUDA_PATH") {
        let p = Path::new(&root).join("bin/nvcc");
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!("CUDA_PATH={} has no bin/nvcc", p.display()));
    }
    if Command::new("nvcc").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(PathBuf::from("nvcc"));
    }
    Err("no CUDA compiler: set CUDA_PATH, put nvcc on PATH, or run scripts/install-cuda.sh and \
         `export CUDA_PATH=$(scripts/install-cuda.sh --print-path)`"
        .into())
}

fn compile_cuda() -> Result<(), String> {
    let nvcc = find_nvcc()?;
    let cuda_root = match env::var_os("CUDA_PATH") {
        Some(r) => PathBuf::from(r),
        None => nvcc
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().and_then(Path::parent).map(Path::to_path_buf))
            .ok_or("cannot tell the CUDA root from nvcc; set CUDA_PATH")?,
    };
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mut objects = vec![];
    for src in sources("csrc/cuda", "cu") {
        let obj = out.join(src.file_stem().unwrap()).with_extension("o");
        let mut cmd = Command::new(&nvcc);
        cmd.args(["-c", "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-lineinfo"])
            .args(CUDA_GENCODE)
            .arg("-Icsrc")
            .arg("-Icsrc/cuda")
            .arg(&src)
            .arg("-o")
            .arg(&obj);
        let o = cmd.output().map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
        if !o.status.success() {
            return Err(format!(
                "nvcc failed on {}:\n{}{}",
                src.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        objects.push(obj);
    }
    if objects.is_empty() {
        return Err("feature cuda is on but csrc/cuda holds no .cu file".into());
    }
    let lib = out.join("libdhsa_cuda.a");
    let _ = fs::remove_file(&lib);
    let st = Command::new("ar").arg("crs").arg(&lib).args(&objects).status().map_err(|e| format!("ar: {e}"))?;
    if !st.success() {
        return Err("ar failed to archive the CUDA objects".into());
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=dhsa_cuda");
    // static runtime: the plugin needs no libcudart.so of its own on the host; the driver's primary
    // context is shared with ggml-cuda's runtime, so device pointers pass between the two
    let libdir =
        ["lib64", "lib", "lib/x64"].iter().map(|d| cuda_root.join(d)).find(|d| d.join("libcudart_static.a").is_file());
    let libdir = libdir.ok_or(format!("no libcudart_static.a under {}", cuda_root.display()))?;
    println!("cargo:rustc-link-search=native={}", libdir.display());
    println!("cargo:rustc-link-lib=static=cudart_static");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-link-lib=dylib=dl");
    println!("cargo:rustc-link-lib=dylib=rt");
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-env=DHSA_CUDA_ROOT={}", cuda_root.display());
    Ok(())
}
