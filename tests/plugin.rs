//! The plugin inside stock llama.cpp programs built from the pinned tree: test-backend-ops against
//! ggml's CPU backend, llama-completion with and without the plugin, the loader's checks.

mod common;
use common::*;
use std::process::Command;

/// Every FA case test-backend-ops has that the plugin claims (dense mode; thresholds lowered so
/// small ops are claimed too) matches ggml's CPU backend (NMSE < 5e-4).
#[test]
fn test_backend_ops_passes_every_claimed_flash_attn_case() {
    let o = Command::new(tool("test-backend-ops"))
        .args(["-o", "FLASH_ATTN_EXT", "-b", "DHSA"])
        .env("GGML_BACKEND_PATH", plugin())
        .env("DHSA_MODE", "dense")
        .env("DHSA_MIN_QUERIES", "2")
        .env("DHSA_MIN_KEYS", "1")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "test-backend-ops failed:\n{}\n{}",
        out.lines().rev().take(30).collect::<Vec<_>>().join("\n"),
        stderr(&o)
    );
    let line = out.lines().find(|l| l.contains("tests passed")).expect("a summary line");
    let (pass, total) = line.trim().split_once(' ').unwrap().0.split_once('/').unwrap();
    let (pass, total): (usize, usize) = (pass.parse().unwrap(), total.parse().unwrap());
    assert_eq!(pass, total);
    assert!(pass >= 1000, "only {pass} cases were claimed");
    // every K/V type the kernels compute was exercised, with the op's options
    for needle in [
        "type_K=f32",
        "type_K=f16",
        "type_K=bf16",
        "type_K=q8_0",
        "sinks=1",
        "max_bias=8",
        "logit_softcap=10",
        "permute=[0,2,1,3]",
    ] {
        assert!(out.lines().any(|l| l.contains(needle) && l.contains("OK")), "no passing case with {needle}");
    }
    // and what the kernels cannot compute was declined, not attempted
    assert!(out.lines().any(|l| l.contains("type_K=q4_0") && l.contains("not supported")));
}

#[test]
fn the_plugin_reports_the_backend_api_version_of_its_tree() {
    ggml_dhsa::llama::init(false);
    let path = std::ffi::CString::new(plugin().to_str().unwrap()).unwrap();
    // SAFETY: dlopen/dlsym with valid NUL-terminated strings; the symbol has the signature every
    // ggml backend module exports; the returned registry is a static struct in the library.
    unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!h.is_null(), "dlopen failed");
        let init = libc::dlsym(h, c"ggml_backend_init".as_ptr());
        let score = libc::dlsym(h, c"ggml_backend_score".as_ptr());
        assert!(!init.is_null() && !score.is_null(), "the plugin must export ggml_backend_init and ggml_backend_score");
        let init: extern "C" fn() -> *mut ggml_sys::ggml_backend_reg = std::mem::transmute(init);
        let score: extern "C" fn() -> i32 = std::mem::transmute(score);
        assert!(score() > 0);
        let reg = init();
        assert!(!reg.is_null());
        // the loader refuses a registry whose version differs from its own; ours is the tree's
        assert_eq!((*reg).api_version, ggml_sys::GGML_BACKEND_API_VERSION as i32);
        assert_eq!(std::ffi::CStr::from_ptr(ggml_sys::ggml_backend_reg_name(reg)).to_str().unwrap(), "DHSA");
        assert!(ggml_sys::ggml_backend_reg_dev_count(reg) >= 1);
    }
}

#[test]
fn an_invalid_setting_stops_the_plugin_from_loading_with_its_reason() {
    let o = Command::new(tool("test-backend-ops"))
        .args(["-o", "FLASH_ATTN_EXT", "-b", "DHSA"])
        .env("GGML_BACKEND_PATH", plugin())
        .env("DHSA_MODE", "fast")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(
        err.contains("invalid DHSA_MODE=\"fast\": accepted values are dense, dhsa, block, streaming, oracle"),
        "{err}"
    );
    assert!(!stdout(&o).contains("Backend DHSA"), "the plugin must not have loaded");

    let o = dhsa().args(["run", "-m", "/nonexistent.gguf", "-p", "x"]).env("DHSA_BUDGET", "0").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid DHSA_BUDGET=\"0\": accepted values are integers from 1 to 16777216"),
        "{}",
        stderr(&o)
    );
}

fn completion(extra: &[&str], envs: &[(&str, &str)], prompt: &std::path::Path) -> std::process::Output {
    let mut c = Command::new(tool("llama-completion"));
    c.arg("-m").arg(smollm2()).arg("-f").arg(prompt);
    c.args([
        "-n",
        "6",
        "--temp",
        "0",
        "-fa",
        "on",
        "-c",
        "4096",
        "-t",
        "2",
        "--no-display-prompt",
        "-no-cnv",
        "--no-warmup",
    ]);
    c.args(extra);
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "llama-completion failed: {}", stderr(&o));
    o
}

/// Stock llama-completion answers a long passkey prompt the same with the plugin (dense mode,
/// computing every prefill FA op) as without it.
#[test]
fn llama_completion_gives_the_same_answer_with_the_plugin() {
    let prompt = passkey_file("completion", 11_000, "68417");
    let stock = completion(&[], &[], &prompt);
    let plug = completion(
        &[],
        &[("GGML_BACKEND_PATH", plugin().to_str().unwrap()), ("DHSA_MODE", "dense"), ("DHSA_STATS", "1")],
        &prompt,
    );
    assert!(stdout(&stock).contains("68417"), "the stock run itself must find the key: {}", stdout(&stock));
    assert_eq!(stdout(&plug), stdout(&stock));
    let s = stats_lines(&plug);
    let ops: u64 = s.iter().map(|s| s.ops).sum();
    assert!(ops > 0, "the plugin computed no FA op: {s:?}\nstderr ends: {}", tail(&stderr(&plug), 3000));
    assert!(s.iter().all(|s| s.keys_attended == s.keys_visible), "dense mode attends every visible key");

    // The same through dhsa run (the plugin registered in-process).
    let o = dhsa()
        .args([
            "run",
            "-m",
            smollm2().to_str().unwrap(),
            "-f",
            prompt.to_str().unwrap(),
            "-n",
            "6",
            "-c",
            "4096",
            "-t",
            "2",
            "--mode",
            "dense",
            "--stats",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), stdout(&stock).trim());
    assert!(stats_lines(&o).iter().map(|s| s.ops).sum::<u64>() > 0);
    let _ = std::fs::remove_file(prompt);
}

/// A KV cache type the kernels do not compute (q4_0) is declined: llama.cpp computes every FA op
/// and the answer is the stock one.
#[test]
fn declined_ops_leave_the_answer_unchanged() {
    let prompt = passkey_file("declined", 3_000, "31415");
    let flags = ["-ctk", "q4_0", "-ctv", "q4_0"];
    let stock = completion(&flags, &[], &prompt);
    let plug = completion(&flags, &[("GGML_BACKEND_PATH", plugin().to_str().unwrap()), ("DHSA_STATS", "1")], &prompt);
    assert_eq!(stdout(&plug), stdout(&stock));
    let s = stats_lines(&plug);
    assert!(!s.is_empty());
    assert!(s.iter().all(|s| s.ops == 0), "{s:?}");
    assert!(s.iter().any(|s| s.declined > 0), "{s:?}");
    let _ = std::fs::remove_file(prompt);
}
