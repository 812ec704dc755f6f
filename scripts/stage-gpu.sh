#!/usr/bin/env bash
# Builds dhsa with --features cuda here and stages everything scripts/gpu-run.sh needs on a GPU
# machine into one folder (see gpu-run.sh for the layout). Stripped binaries; the pinned llama.cpp's
# shared libraries and stock tools come from the upstream build (DHSA_BUILD_CACHE).
#   scripts/stage-gpu.sh STAGE
# GGML_CUDA_LIB=path/libggml-cuda.so[.xz] stages a CUDA backend built ahead (scripts/build-ggml-cuda.sh,
# or a previous gpu-run's build phase);
# without it the sources the CUDA build needs go along as llama-src.tar.xz.
# CARGO_TARGET_DIR builds elsewhere than target/ (e.g. while tests use target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
stage="$1"
export CUDA_PATH="${CUDA_PATH:-$(bash scripts/install-cuda.sh --print-path)}"
cargo build --release --features cuda
test_bin=$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
upstream_bin="${UPSTREAM_BIN:-$(ls -d "${DHSA_BUILD_CACHE:-${CARGO_TARGET_DIR:-target}/upstream}"/*/bin | head -1)}"
src=$(grep -m1 -o '/[^"]*llama.cpp-llama-cpp-python[^"/]*' "$upstream_bin/../CMakeCache.txt")

rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/scripts"
cp -a "$upstream_bin"/lib*.so* "$upstream_bin/llama-bench" "$upstream_bin/test-backend-ops" "$stage/bin/"
tdir="${CARGO_TARGET_DIR:-target}"
cp "$tdir/release/dhsa" "$tdir/release/libggml_dhsa.so" "$stage/"
cp "$test_bin" "$stage/test-cuda"
strip --strip-debug "$stage/dhsa" "$stage/libggml_dhsa.so" "$stage/test-cuda" "$stage"/bin/*
cp scripts/gpu-run.sh scripts/build-ggml-cuda.sh scripts/synth_model.py "$stage/scripts/"
cp -a "$src/gguf-py" "$stage/gguf-py"
for f in /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf /usr/share/fonts/TTF/DejaVuSans.ttf; do
  [ -e "$f" ] && cp "$f" "$stage/" && break
done
if [ -n "${GGML_CUDA_LIB:-}" ]; then
  case "$GGML_CUDA_LIB" in
    *.xz) cp "$GGML_CUDA_LIB" "$stage/libggml-cuda.so.xz" ;;
    *) cp "$GGML_CUDA_LIB" "$stage/bin/" ;;
  esac
else
  tar -C "$src" -cJf "$stage/llama-src.tar.xz" --exclude='*.md' --exclude='docs' \
    CMakeLists.txt LICENSE cmake ggml include src common vendor tools tests licenses
fi
{ echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"; date -u +%FT%TZ; } >"$stage/COMMIT"
du -sh "$stage"
