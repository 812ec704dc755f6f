#!/usr/bin/env bash
# Fuzzes dhsa's own input parsing with cargo-fuzz (libFuzzer), each target for a bounded time:
#   config  the DHSA_* settings (Config::from_lookup): a Config or an error naming the variable
#   gguf    GGUF pre-validation (gguf::check_bytes): a header or an error, never a panic
# Usage: scripts/fuzz.sh [SECONDS per target, default 60]
# Runs on stable Rust without sanitizer instrumentation (-s none); libFuzzer's coverage feedback
# still applies. Crashes are written under fuzz/artifacts/<target>/ and fail the script.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz --version 0.13.2
fi
# reuse the llama.cpp build of the main target dir (the fuzz crate has its own target dir)
export DHSA_BUILD_CACHE="${DHSA_BUILD_CACHE:-$PWD/target/upstream}"
cargo fuzz build -s none --release
key=$(cd "$DHSA_BUILD_CACHE" && ls -d */ | head -1)
export LD_LIBRARY_PATH="$DHSA_BUILD_CACHE/${key%/}/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# seed corpora (git-ignored): each knob by index ("N=value" names knob N), a few real settings,
# and a small GGUF written by dhsa itself
corpus=fuzz/corpus
mkdir -p "$corpus/config" "$corpus/gguf"
for i in $(seq 0 31); do printf '%s=1\n%s=dense\n' "$i" "$((i + 1))" > "$corpus/config/knob-$i"; done
printf 'DHSA_MODE=dhsa\nDHSA_BUDGET=2048\nDHSA_TAU=0.9\n' > "$corpus/config/settings"
cargo run --release -q --bin dhsa -- models synth --shape tiny -o "$corpus/gguf/tiny.gguf" --force >/dev/null 2>&1
head -c 65536 "$corpus/gguf/tiny.gguf" > "$corpus/gguf/tiny-head.gguf"
rm "$corpus/gguf/tiny.gguf"

for t in config gguf; do
    printf '\n== fuzz %s for %s s\n' "$t" "$secs"
    rc=0
    cargo fuzz run -s none --release "$t" "$corpus/$t" -- -max_total_time="$secs" -max_len=65536 \
        -rss_limit_mb=2048 >"target/fuzz-$t.log" 2>&1 || rc=$?
    grep -E "^#[0-9]+ +(INITED|DONE)|^Done [0-9]+ runs" "target/fuzz-$t.log" || true
    if [ "$rc" != 0 ]; then
        tail -40 "target/fuzz-$t.log" >&2
        echo "fuzz target $t failed (exit $rc): see target/fuzz-$t.log and fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
