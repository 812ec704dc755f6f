//! The states of the upstream tree that must stop the build with one clear message, and the happy
//! path of fetch -> verify -> extract, on small synthetic archives (no network).

#[path = "../build/upstream.rs"]
#[allow(dead_code)]
mod upstream;

use std::fs;
use std::path::{Path, PathBuf};
use upstream::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ggml-sys-test-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn manifest(archive: &str, sha: &str) -> Manifest {
    Manifest::parse(&format!(
        "[upstream]\npackage = \"llama-cpp-python\"\nversion = \"0.0.0-test\"\narchive = \"{archive}\"\n\
         sha256 = \"{sha}\"\npath = \"pkg/vendor/llama.cpp\"\nggml_version = \"0.0.0\"\nbackend_api_version = 2\n"
    ))
    .unwrap()
}

/// A .tar.gz holding a fake llama.cpp tree (just the marker files) under pkg/vendor/llama.cpp.
fn fake_archive(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let f = fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for m in TREE_MARKERS.iter().chain(["README.md"].iter()) {
        let data = format!("fake {m}\n");
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("pkg/vendor/llama.cpp/{m}"), data.as_bytes()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "pkg/setup.py", &b"x=1"[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    path
}

fn offline_pip() -> Pip {
    Pip {
        python: "python3".into(),
        extra_env: vec![("PIP_NO_INDEX".into(), "1".into()), ("PIP_FIND_LINKS".into(), "".into())],
    }
}

#[test]
fn the_committed_manifest_parses_and_pins_a_sha256() {
    let m = Manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/llama.cpp.toml")).unwrap();
    assert_eq!(m.package, "llama-cpp-python");
    assert_eq!(m.sha256.len(), 64);
    assert!(m.path.ends_with("vendor/llama.cpp"));
    assert_eq!(m.backend_api_version, 2);
}

#[test]
fn a_malformed_manifest_is_refused_with_the_reason() {
    let e = Manifest::parse("[upstream]\npackage = \"x\"\n").unwrap_err();
    assert!(e.contains("`version`"), "{e}");
    let e = Manifest::parse(
        "[upstream]\npackage=\"a\"\nversion=\"1\"\narchive=\"a\"\nsha256=\"abc\"\npath=\"p\"\nggml_version=\"0\"\nbackend_api_version=2\n",
    )
    .unwrap_err();
    assert!(e.contains("64 hex digits"), "{e}");
}

#[test]
fn a_user_tree_that_is_not_llama_cpp_is_refused() {
    let d = tmp("notatree");
    fs::write(d.join("CMakeLists.txt"), "project(x)").unwrap();
    let m = manifest("a.tar.gz", &"0".repeat(64));
    let e = resolve(&m, &tmp("cache0"), Some(&d), &offline_pip()).unwrap_err();
    assert!(e.starts_with("DHSA_LLAMA_CPP_DIR="), "{e}");
    assert!(e.contains("is not a llama.cpp source tree"), "{e}");
    assert!(e.contains("ggml/include/ggml.h"), "{e}");
    let e = resolve(&m, &tmp("cache1"), Some(&d.join("missing")), &offline_pip()).unwrap_err();
    assert!(e.contains("is not a directory"), "{e}");
}

#[test]
fn offline_with_nothing_cached_says_what_to_do() {
    let cache = tmp("offline");
    let m = manifest("llama_cpp_python-0.0.0-test.tar.gz", &"0".repeat(64));
    let e = resolve(&m, &cache, None, &offline_pip()).unwrap_err();
    assert!(e.contains("could not download llama-cpp-python==0.0.0-test"), "{e}");
    assert!(e.contains("DHSA_LLAMA_CPP_DIR"), "{e}");
    // nothing half-done is left behind to be mistaken for a download
    let left: Vec<_> = fs::read_dir(&cache).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_cached_archive_with_the_wrong_sha256_is_never_used() {
    let cache = tmp("badsha");
    let good = fake_archive(&cache, "good.tar.gz");
    let sha = sha256_file(&good).unwrap();
    // the pinned name holds different bytes (a corrupt or truncated download)
    let bytes = fs::read(&good).unwrap();
    fs::write(cache.join("pinned.tar.gz"), &bytes[..bytes.len() / 2]).unwrap();
    let m = manifest("pinned.tar.gz", &sha);
    let e = resolve(&m, &cache, None, &offline_pip()).unwrap_err();
    assert!(e.contains("sha256 mismatch"), "{e}");
    assert!(e.contains("delete it and build again"), "{e}");
    assert!(!cache.join(m.tree_dir_name()).exists());
}

#[test]
fn a_verified_archive_is_extracted_once_and_an_interrupted_extraction_is_redone() {
    let cache = tmp("extract");
    let a = fake_archive(&cache, "pinned.tar.gz");
    let m = manifest("pinned.tar.gz", &sha256_file(&a).unwrap());
    let src = resolve(&m, &cache, None, &offline_pip()).unwrap();
    assert!(src.pinned);
    assert_eq!(src.identity, m.sha256);
    assert!(src.dir.join("ggml/include/ggml.h").is_file());
    assert!(src.dir.join("README.md").is_file());
    assert!(!src.dir.join("setup.py").exists(), "only the llama.cpp folder is extracted");

    // simulate an extraction cut off before its stamp: the tree is redone, not trusted
    fs::remove_file(src.dir.join(".dhsa-extracted")).unwrap();
    fs::remove_file(src.dir.join("include/llama.h")).unwrap();
    let again = resolve(&m, &cache, None, &offline_pip()).unwrap();
    assert!(again.dir.join("include/llama.h").is_file());
}

#[test]
fn an_archive_without_the_tree_is_refused() {
    let cache = tmp("wrongtree");
    let a = fake_archive(&cache, "pinned.tar.gz");
    let mut m = manifest("pinned.tar.gz", &sha256_file(&a).unwrap());
    m.path = "pkg/elsewhere".into();
    let e = resolve(&m, &cache, None, &offline_pip()).unwrap_err();
    assert!(e.contains("holds nothing under pkg/elsewhere"), "{e}");
}
