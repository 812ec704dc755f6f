//! dhsa: Dynamic Hierarchical Sparse Attention for llama.cpp prefill.
//!
//! One library, built twice: as the rlib behind the `dhsa` runner and as the plugin
//! `libggml_dhsa.so` that a stock llama.cpp loads through `GGML_BACKEND_PATH`.

pub mod bench;
pub mod capture;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod eval;
pub mod ggml;
pub mod gguf;
pub mod kernels;
pub mod llama;
pub mod models;
pub mod op;
pub mod opgen;
pub mod plugin;
pub mod reference;
pub mod rng;
pub mod runner;
pub mod stats;

pub use plugin::register;
pub mod demo;
pub mod ggml_fa;
pub mod inspect;
pub mod plot;
pub mod run;
pub mod select;
pub mod session;
pub mod synth;
pub mod text;
