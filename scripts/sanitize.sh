#!/usr/bin/env bash
# The C kernels built with AddressSanitizer and UndefinedBehaviorSanitizer (gcc), run over the
# kernel, sparse and property tests and the plugin's integration tests (the sanitized plugin inside
# the stock llama.cpp programs). Any sanitizer report fails the run. Separate target folder;
# the upstream build is shared with the normal one.
set -euo pipefail
cd "$(dirname "$0")/.."
export DHSA_SANITIZE=address,undefined
export DHSA_BUILD_CACHE="${DHSA_BUILD_CACHE:-$PWD/target/upstream}"
export CARGO_TARGET_DIR="$PWD/target/sanitize"
export ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cargo build --release --lib
bins=$(cargo test --release --no-run --message-format=json --test kernels --test sparse --test properties --test plugin 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
for b in $bins; do
  echo "== $(basename "$b") (ASan + UBSan)"
  # preloaded so the stock llama.cpp programs the plugin tests start can load the sanitized plugin;
  # test-backend-ops' 2700 cases run unsanitized in the normal suite (too slow here)
  LD_PRELOAD="$asan $ubsan" "$b" --test-threads 2 --skip test_backend_ops --skip declined --skip invalid_setting
done
echo "sanitizers: no reports"
