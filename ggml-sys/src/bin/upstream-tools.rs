//! Builds the stock llama.cpp programs (llama-completion, llama-bench, llama-perplexity,
//! test-backend-ops) from the same cached upstream build that ggml-sys links against.
//! Run through the cargo alias: `cargo upstream-tools`. A no-change run takes about a second.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).to_string();
    eprintln!("building {} in {}", ggml_sys::TOOLS.join(", "), ggml_sys::BUILD_DIR);
    let status = Command::new("cmake")
        .args(["--build", ggml_sys::BUILD_DIR, "--parallel", &jobs, "--target"])
        .args(ggml_sys::TOOLS)
        .status();
    match status {
        Ok(s) if s.success() => {
            for t in ggml_sys::TOOLS {
                println!("{}/{}", ggml_sys::BIN_DIR, t);
            }
            ExitCode::SUCCESS
        }
        Ok(s) => {
            eprintln!("error: building the upstream tools failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: cannot run cmake: {e}");
            ExitCode::FAILURE
        }
    }
}
