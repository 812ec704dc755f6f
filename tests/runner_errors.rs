//! Bad input to the runner: each case gives one clear line on stderr and exit code 1, never a
//! panic or an abort; Ctrl-C during prefill stops cleanly. Every case runs the real binary.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn missing_model() {
    let d = TempDir::new("missing");
    let m = d.path("no-such-model.gguf");
    let o = run(&["run", "-m", m.to_str().unwrap(), "-p", "hi", "-n", "1"]);
    assert_clean_error(&o, "cannot read model");
    assert!(stderr(&o).contains("no-such-model.gguf"));
}

#[test]
fn unreadable_model() {
    // a directory cannot be read as a file, even by root (who reads any chmod 000 file)
    let d = TempDir::new("unreadable");
    let m = d.path("model.gguf");
    std::fs::create_dir_all(&m).unwrap();
    let o = run(&["run", "-m", m.to_str().unwrap(), "-p", "hi", "-n", "1"]);
    assert_clean_error(&o, "is a directory");
}

#[test]
fn not_a_gguf_file() {
    let d = TempDir::new("notgguf");
    let m = d.path("model.gguf");
    std::fs::write(&m, "this is a text file, not a model\n".repeat(100)).unwrap();
    for cmd in [&["run", "-p", "hi", "-n", "1"][..], &["bench", "prefill", "--depth", "0", "-r", "1"][..]] {
        let mut args = cmd.to_vec();
        args.extend(["-m", m.to_str().unwrap()]);
        assert_clean_error(&run(&args), "is not a GGUF model file");
    }
}

#[test]
fn truncated_gguf_data() {
    let d = TempDir::new("trunc");
    let m = d.path("model.gguf");
    let full = std::fs::metadata(tiny_model()).unwrap().len() as usize;
    write_truncated(&tiny_model(), &m, full / 2);
    let o = run(&["run", "-m", m.to_str().unwrap(), "-p", "hi", "-n", "1"]);
    assert_clean_error(&o, "is a truncated GGUF file: its tensors need");
    assert!(stderr(&o).contains(&format!("need {full} bytes")), "{}", stderr(&o));
}

#[test]
fn truncated_gguf_header() {
    let d = TempDir::new("trunchead");
    let m = d.path("model.gguf");
    write_truncated(&tiny_model(), &m, 200);
    let o = run(&["run", "-m", m.to_str().unwrap(), "-p", "hi", "-n", "1"]);
    assert_clean_error(&o, "is a truncated GGUF file: it ends inside its header");
}

#[test]
fn empty_model_file() {
    let d = TempDir::new("empty");
    let m = d.path("model.gguf");
    std::fs::write(&m, b"").unwrap();
    assert_clean_error(&run(&["run", "-m", m.to_str().unwrap(), "-p", "hi", "-n", "1"]), "is not a GGUF model file");
}

#[test]
fn bit_flipped_models_give_an_error_or_a_run_never_a_crash() {
    // one bit flipped at a time, at spread positions of the header and tensor table (where a flip
    // changes a count, a length, a type or an offset) and of the tensor data (where it only
    // changes a weight): every run either works or ends with one clean error line
    let src = std::fs::read(tiny_model()).unwrap();
    let header_end = 4096.min(src.len());
    let d = TempDir::new("bitflip");
    let m = d.path("model.gguf");
    let mut positions: Vec<usize> = (0..40).map(|i| 4 + i * (header_end - 4) / 40).collect();
    positions.extend([src.len() / 2, src.len() - 1]);
    let (mut errors, mut runs) = (0, 0);
    for (i, &pos) in positions.iter().enumerate() {
        let mut b = src.clone();
        b[pos] ^= 1 << (i % 8);
        std::fs::write(&m, &b).unwrap();
        let o = run(&["run", "-m", m.to_str().unwrap(), "-p", "hi", "-n", "1", "-c", "256"]);
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "flip at byte {pos}: {err}");
        match o.status.code() {
            Some(0) => runs += 1,
            Some(1) => {
                errors += 1;
                let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                assert!(last.starts_with("error: "), "flip at byte {pos}: no error line: {err}");
            }
            c => panic!("flip at byte {pos}: exit {c:?} (a crash or a signal); stderr: {err}"),
        }
    }
    eprintln!("{} flips: {errors} clean errors, {runs} runs", positions.len());
    assert!(errors > 0 && runs > 0, "flips in the header must be caught, flips in the data must not be");
}

#[test]
fn context_larger_than_the_model_allows() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    // the tiny shape is trained for 16384 tokens
    let o = run(&["run", "-m", m, "-c", "100000", "-p", "hi", "-n", "1"]);
    assert_clean_error(&o, "context 100000 is larger than the model allows (16384)");
    let o = run(&["bench", "prefill", "-m", m, "--depth", "0,16000", "-p", "512", "-r", "1"]);
    assert_clean_error(&o, "is larger than the model allows (16384)");
}

#[test]
fn prompt_longer_than_the_context() {
    let m = tiny_model();
    // the tiny model's vocabulary is bytes: 1000 characters are about 1000 tokens
    let prompt = "word ".repeat(200);
    let o = run(&["run", "-m", m.to_str().unwrap(), "-c", "256", "-p", &prompt, "-n", "1"]);
    assert_clean_error(&o, "does not fit the context of 256");
}

#[test]
fn ctrl_c_during_prefill_stops_cleanly() {
    let m = tiny_model();
    let d = TempDir::new("ctrlc");
    let f = d.path("prompt.txt");
    // about 16K tokens in dense mode (seconds of prefill on two cores), while loading takes
    // milliseconds
    std::fs::write(&f, "The grass is green. The sky is blue. ".repeat(430)).unwrap();
    let mut child = dhsa()
        .args([
            "run",
            "-m",
            m.to_str().unwrap(),
            "-f",
            f.to_str().unwrap(),
            "-n",
            "4",
            "-c",
            "16384",
            "--mode",
            "dense",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
    // SAFETY: signalling a child process we spawned and have not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the run did not stop within 120 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(matches!(o.status.code(), Some(1) | Some(130)), "exit {:?}; stderr: {err}", o.status);
    assert!(err.contains("interrupted"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
    assert!(!err.contains("failed"), "llama.cpp's abort noise on stderr: {err}");
    assert!(!err.contains("prefill t/s"), "a timing table after an interrupted run: {err}");
}
