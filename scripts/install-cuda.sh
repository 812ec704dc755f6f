#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler (nvcc, cudart, CCCL, CRT headers, NVVM) from PyPI into a cache
# folder, so a machine without a CUDA toolkit can build `cargo build --features cuda`.
#   scripts/install-cuda.sh               install (once; later runs only check) and print CUDA_PATH
#   scripts/install-cuda.sh --print-path  the same, printing only the path (for $(...))
# Cache: $DHSA_CACHE/cuda-13.0 (default ~/.cache/dhsa/cuda-13.0). Wheels are verified by sha256.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
req="$here/cuda-13.0.requirements"
dest="${DHSA_CACHE:-$HOME/.cache/dhsa}/cuda-13.0"
root="$dest/nvidia/cu13"
stamp="$dest/.installed-$(sha256sum "$req" | cut -c1-16)"
quiet=0
[ "${1:-}" = "--print-path" ] && quiet=1
if [ ! -f "$stamp" ]; then
  [ $quiet = 1 ] || echo "installing the CUDA 13.0 compiler from PyPI into $dest" >&2
  tmp="$dest.tmp-$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
      --only-binary :all: --target "$tmp" -r "$req" >&2; then
    rm -rf "$tmp"
    echo "error: could not install the CUDA compiler wheels with pip (offline?)" >&2
    exit 1
  fi
  chmod +x "$tmp"/nvidia/cu13/bin/* "$tmp"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
  rm -rf "$dest"
  mv "$tmp" "$dest"
  touch "$stamp"
fi
if ! "$root/bin/nvcc" --version >/dev/null 2>&1; then
  echo "error: $root/bin/nvcc does not run; delete $dest and run this script again" >&2
  exit 1
fi
echo "$root"
