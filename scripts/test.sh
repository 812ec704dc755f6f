#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (README's test command).
#  1. formatting and lints (-D warnings), CPU build and CUDA build (feature `cuda`)
#  2. the stock llama.cpp programs the tests drive (cargo upstream-tools, cached)
#  3. every test in release mode
#  4. the C kernels under ASan + UBSan (scripts/sanitize.sh)
#  5. the CUDA kernels compile and link (--features cuda; no GPU is needed or used here)
#  6. each cargo-fuzz target for a bounded time (scripts/fuzz.sh; DHSA_FUZZ_SECONDS, default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_PATH="${CUDA_PATH:-$(bash scripts/install-cuda.sh --print-path)}"
step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (CPU and CUDA builds)"
cargo clippy --workspace --all-targets --release -- -D warnings
cargo clippy --release --features cuda --lib -- -D warnings
step "stock llama.cpp programs"
cargo upstream-tools >/dev/null
step "build (the plugin libggml_dhsa.so and the dhsa binary the tests drive)"
cargo build --workspace --release
step "tests"
cargo test --workspace --release
step "C kernels under AddressSanitizer + UndefinedBehaviorSanitizer"
bash scripts/sanitize.sh
step "CUDA build (compile and link)"
cargo build --release --features cuda --lib
step "fuzzing (config, GGUF pre-validation)"
bash scripts/fuzz.sh "${DHSA_FUZZ_SECONDS:-30}"
echo "all checks passed"
