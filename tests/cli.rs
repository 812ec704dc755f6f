//! The `dhsa` commands end to end, through the real binary: run, --version, devices, models synth,
//! bench prefill and demo. Short prompts only; nothing here asserts on a timing.

mod common;
use common::*;

#[test]
fn run_answers_a_factual_prompt() {
    let m = smollm2();
    let o = run(&["run", "-m", m.to_str().unwrap(), "-p", "The capital of France is", "-n", "8"]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "stdout: {}", stdout(&o));
    // the timing table follows the text
    assert!(stderr(&o).contains("| prompt tokens |"), "stderr: {}", stderr(&o));
}

#[test]
fn run_json_reports_timings_and_text() {
    let m = smollm2();
    let o = run(&["run", "-m", m.to_str().unwrap(), "-p", "The capital of France is", "-n", "8", "--json"]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object on stdout");
    assert!(j["text"].as_str().unwrap().contains("Paris"), "{j}");
    assert!((4..=6).contains(&j["timings"]["prompt_tokens"].as_u64().unwrap()), "{j}");
    assert_eq!(j["timings"]["generated_tokens"].as_u64(), Some(8), "{j}");
    assert!(j["timings"]["prefill_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn version_names_all_three() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains(&format!("dhsa {}", env!("CARGO_PKG_VERSION"))), "{out}");
    assert!(out.lines().any(|l| l.starts_with("ggml 0.")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("llama.cpp ") && l.contains("llama-cpp-python")), "{out}");
}

#[test]
fn devices_lists_cpu_and_dhsa() {
    let o = run(&["devices"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("Available devices:"), "{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("CPU:") && l.contains("(CPU, ") && l.contains("MiB")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.trim_start().starts_with("DHSA:") && l.contains("(ACCEL, ")), "{out}");
}

#[test]
fn synth_writes_a_loadable_gguf_of_the_shape() {
    let d = TempDir::new("synth");
    let f = d.path("tiny.gguf");
    let o = run(&["models", "synth", "--shape", "tiny", "-o", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("for speed measurements only"), "no warning: {}", stderr(&o));
    let h = ggml_dhsa::gguf::check(&f).expect("a complete GGUF");
    let s = ggml_dhsa::synth::shape("tiny").unwrap();
    let u = |k: &str| h.get(k).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(u("llama.block_count"), s.n_layer as u64);
    assert_eq!(u("llama.embedding_length"), s.n_embd as u64);
    assert_eq!(u("llama.attention.head_count_kv"), s.n_head_kv as u64);
    assert_eq!(h.tensors.len(), 2 + 9 * s.n_layer as usize);
    let (end, len) = (h.data_end().unwrap(), std::fs::metadata(&f).unwrap().len());
    assert!(end <= len && len - end < 32, "data ends at {end}, the file at {len}");

    // llama.cpp loads it, reads text with its byte vocabulary and generates
    let o = run(&["run", "-m", f.to_str().unwrap(), "-p", "hello world", "-n", "4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["timings"]["prompt_tokens"].as_u64(), Some(12), "BOS + one token per byte: {j}");
    assert!(j["timings"]["generated_tokens"].as_u64().unwrap() >= 1, "{j}");

    // never overwritten without --force; replaced with it
    let before = std::fs::read(&f).unwrap();
    let o = run(&["models", "synth", "--shape", "tiny", "-o", f.to_str().unwrap(), "--seed", "7"]);
    assert_clean_error(&o, "exists; pass --force");
    assert_eq!(std::fs::read(&f).unwrap(), before);
    let o = run(&["models", "synth", "--shape", "tiny", "-o", f.to_str().unwrap(), "--seed", "7", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = std::fs::read(&f).unwrap();
    assert_eq!(after.len(), before.len());
    assert_ne!(after, before, "another seed, other weights");
    assert_eq!(std::fs::read_dir(&d.0).unwrap().count(), 1, "a temporary file was left behind");

    let o = run(&["models", "synth", "--shape", "llama-70b", "-o", d.path("x.gguf").to_str().unwrap()]);
    assert_clean_error(&o, "unknown shape \"llama-70b\": known shapes are llama-8b");
}

#[test]
fn bench_prefill_measures_every_mode_at_every_depth() {
    let d = TempDir::new("bench");
    let png = d.path("bench.png");
    let m = tiny_model();
    let o = run(&[
        "bench",
        "prefill",
        "-m",
        m.to_str().unwrap(),
        "--depth",
        "1536,0",
        "-p",
        "128",
        "-ub",
        "128",
        "-r",
        "2",
        "--modes",
        "dense,dhsa,ggml",
        "--budget",
        "512",
        "--json",
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON on stdout");
    let rs = j["results"].as_array().unwrap();
    assert_eq!(rs.len(), 6, "{j}");
    let find = |mode: &str, depth: u64| {
        rs.iter().find(|r| r["mode"] == mode && r["depth"].as_u64() == Some(depth)).unwrap_or_else(|| panic!("{j}"))
    };
    for r in rs {
        assert_eq!(r["times_s"].as_array().unwrap().len(), 2);
        let (lo, med, hi) =
            (r["tok_s_min"].as_f64().unwrap(), r["tok_s_median"].as_f64().unwrap(), r["tok_s_max"].as_f64().unwrap());
        assert!(lo > 0.0 && lo <= med && med <= hi, "{r}");
    }
    // at depth 1536 every op has more keys than the budget: dhsa keeps part of them, dense all,
    // and with ggml the plugin takes nothing
    let kept = |mode, depth| find(mode, depth)["kept_fraction"].as_f64();
    assert_eq!(kept("dense", 1536), Some(1.0));
    let k = kept("dhsa", 1536).unwrap();
    assert!(k > 0.0 && k < 0.6, "dhsa kept {k}");
    assert_eq!(kept("ggml", 1536), None);
    assert_eq!(find("dense", 0)["speedup"].as_f64(), Some(1.0));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");

    let o = run(&["bench", "prefill", "-m", m.to_str().unwrap(), "--depth", "0", "--modes", "dense,fast"]);
    assert_clean_error(&o, "unknown mode \"fast\"");
}

#[test]
fn demo_runs_dense_and_dhsa_and_reports_the_speedup() {
    // a small version of the demo, made sparse at this length by a smaller budget and op threshold
    let m = smollm2();
    let key = "73914";
    let o = run(&[
        "demo",
        "-m",
        m.to_str().unwrap(),
        "--tokens",
        "700",
        "-ub",
        "256",
        "--budget",
        "256",
        "--set",
        "DHSA_MIN_KEYS=256",
        "--key",
        key,
        "-n",
        "6",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON on stdout");
    let sides = j["sides"].as_array().unwrap();
    assert_eq!(sides.len(), 2);
    assert_eq!(sides[0]["mode"], "dense");
    assert_eq!(sides[1]["mode"], "dhsa");
    let n = j["prompt_tokens"].as_u64().unwrap();
    assert!((650..=700).contains(&n), "prompt of {n} tokens");
    for s in sides {
        let answer = s["answer"].as_str().unwrap();
        assert!(!answer.is_empty(), "{j}");
        assert_eq!(s["has_key"].as_bool(), Some(answer.contains(key)), "{j}");
        assert!(s["prefill_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(sides[0]["kept_fraction"].as_f64(), Some(1.0), "dense attends every key: {j}");
    let k = sides[1]["kept_fraction"].as_f64().unwrap();
    assert!(k > 0.0 && k < 1.0, "dhsa was not sparse: {j}");
    let ratio = sides[0]["prefill_s"].as_f64().unwrap() / sides[1]["prefill_s"].as_f64().unwrap();
    assert!((j["speedup"].as_f64().unwrap() - ratio).abs() < 1e-9);

    // the same as a table for people
    let o =
        run(&["demo", "-m", m.to_str().unwrap(), "--tokens", "300", "--key", key, "-n", "2", "--mode", "streaming"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("pass key {key} hidden at 40% depth")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("| dense |")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("| streaming |")), "{out}");
    assert!(out.contains("streaming prefill speedup: "), "{out}");
}

#[test]
fn readme_lists_every_knob_with_its_default() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = ggml_dhsa::config::Config::knob_table();
    assert!(readme.contains(&table), "README's knob table is out of date; it should read:\n{table}");
}
