//! Raw bindings to the pinned llama.cpp tree: `ggml.h`, `ggml-backend.h`, `ggml-cpu.h`, `gguf.h`,
//! `llama.h` and `ggml/src/ggml-backend-impl.h` (the backend vtables a plugin fills in).
//!
//! Everything here is `unsafe` C; the `dhsa` crate wraps what it uses. The libraries are shared
//! (`libggml-base`, `libggml`, `libllama`); the CPU backend is a module the registry loads at run
//! time, so the `ggml-cpu.h` functions are declared but not linked.

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// Folder holding the built shared libraries, backend modules and stock programs.
pub const BIN_DIR: &str = env!("GGML_SYS_BIN_DIR");
/// The cmake build folder of the upstream tree.
pub const BUILD_DIR: &str = env!("GGML_SYS_BUILD_DIR");

/// The stock llama.cpp programs the tests and benchmarks use, built by `cargo upstream-tools`.
pub const TOOLS: &[&str] = &["llama-completion", "llama-bench", "llama-perplexity", "test-backend-ops"];
