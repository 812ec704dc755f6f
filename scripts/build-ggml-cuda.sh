#!/usr/bin/env bash
# Builds llama.cpp's CUDA backend (libggml-cuda.so, sm_90) from the pinned tree, configured as the
# CPU build is (shared libraries, GGML_BACKEND_DL), so the stock programs of the CPU build
# (llama-bench, test-backend-ops) load it from their own folder.
#   scripts/build-ggml-cuda.sh SRC BUILD_DIR [TARGETS...]   (default target: ggml-cuda)
# CUDA: $CUDA_PATH (nvcc in bin/, cudart and cuBLAS headers and libraries) or nvcc on PATH.
# A toolkit without the driver's link stub (libcuda.so) gets an empty stub with the driver's
# soname: the real driver supplies the symbols at run time.
# Environment: JOBS (default: all cores), CUDA_ARCH (default 90-real).
set -euo pipefail
src="$1"; build="$2"; shift 2
targets=("${@:-ggml-cuda}")
[ ${#targets[@]} -gt 0 ] || targets=(ggml-cuda)
cuda="${CUDA_PATH:-$(dirname "$(dirname "$(command -v nvcc)")")}"
extra=()
have_driver=0
for f in "$cuda"/lib64/stubs/libcuda.so "$cuda"/lib/stubs/libcuda.so "$cuda"/lib64/libcuda.so "$cuda"/lib/libcuda.so \
    /usr/lib/x86_64-linux-gnu/libcuda.so; do
  [ -e "$f" ] && have_driver=1
done
if [ "$have_driver" = 0 ]; then
  stub="$build/cuda-stub"
  mkdir -p "$stub"
  echo 'void dhsa_cuda_driver_stub(void) {}' >"$stub/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
  # the stub defines none of the driver's symbols: keep it NEEDED so the real driver resolves them
  extra+=("-DCUDA_cuda_driver_LIBRARY=$stub/libcuda.so" "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--no-as-needed")
fi
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
cmake -S "$src" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=ON -DGGML_NATIVE=OFF \
  -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_CCACHE=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DGGML_SSE42="$(has sse4_2)" -DGGML_AVX="$(has avx)" -DGGML_AVX2="$(has avx2)" -DGGML_FMA="$(has fma)" \
  -DGGML_F16C="$(has f16c)" -DGGML_BMI2="$(has bmi2)" -DGGML_AVX512=OFF \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90-real}" \
  -DCUDAToolkit_ROOT="$cuda" -DCMAKE_CUDA_COMPILER="$cuda/bin/nvcc" "${extra[@]}" >"$build.configure.log" 2>&1 \
  || { tail -40 "$build.configure.log"; exit 1; }
cmake --build "$build" --parallel "${JOBS:-$(nproc)}" --target "${targets[@]}"
