#!/usr/bin/env bash
# The GPU run, end to end, on a fresh CUDA machine (no network, no Rust toolchain needed there).
#
#   scripts/stage-gpu.sh STAGE          here: build dhsa --features cuda and stage what the run needs
#   STAGE/scripts/gpu-run.sh [check|e2e|all]   there: OUT=results folder (default ./gpu-out)
#
# STAGE holds: bin/ (the pinned llama.cpp's shared libraries and stock tools: llama-bench,
# test-backend-ops; and libggml-cuda.so when it was built ahead), dhsa and libggml_dhsa.so (built
# with --features cuda), test-cuda (the tests/cuda.rs binary), gguf-py/, scripts/, COMMIT, and,
# when bin/ has no libggml-cuda.so, llama-src.tar.xz (the pinned tree's sources the CUDA build needs).
#
# check: builds llama.cpp's CUDA backend if needed (sm_90, GGML_BACKEND_DL, shared; about 6 minutes
#        on 16 cores), runs the CUDA tests (dense vs the f64 reference and the CPU kernel; selection
#        vs the CPU's), test-backend-ops on DHSA-CUDA0 in dense mode, and `dhsa bench kernels` on CUDA.
# e2e:   writes the random Llama-3.1-8B-shaped Q4_0 model, runs stock llama-bench with and without
#        the plugin at depths 65536 and 131072, `dhsa run -ngl 99` (which picks the sidecar itself),
#        and the CPU kernel bench at 8K and 32K.
# Results: OUT/*.json, OUT/*.png, logs, and OUT/summary.txt (also printed last).
set -uo pipefail
stage="$(cd "$(dirname "$0")/.." && pwd)"
phase="${1:-all}"
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
work="${DHSA_GPU_WORK:-/tmp/dhsa-gpu}"
bin="$work/bin"
mkdir -p "$bin"
log="$out/gpu-run.log"
say() { printf '\n== %s (%s)\n' "$*" "$(date +%T)" | tee -a "$log"; }

# ---- the CUDA libraries (cuBLAS for ggml-cuda) and the tools -----------------------------------
cp -a "$stage"/bin/. "$bin"/
cuda_lib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  if [ -e "$d/libcublas.so.13" ]; then cuda_lib="$cuda_lib:$d"; fi
done
export LD_LIBRARY_PATH="$bin$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DHSA_BACKEND_DIR="$bin"
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
export PATH="$CUDA_PATH/bin:$PATH"

ensure_ggml_cuda() {
  [ -e "$bin/libggml-cuda.so" ] && return 0
  if [ -e "$work/build/bin/libggml-cuda.so" ]; then cp -a "$work/build/bin/libggml-cuda.so" "$bin/"; return 0; fi
  say "building llama.cpp's CUDA backend (sm_90)"
  mkdir -p "$work/src"
  tar -xJf "$stage/llama-src.tar.xz" -C "$work/src"
  JOBS=$(nproc) bash "$stage/scripts/build-ggml-cuda.sh" "$work/src" "$work/build" ggml-cuda >>"$log" 2>&1 \
    || { echo "CUDA backend build failed (see $log)"; tail -30 "$log"; return 1; }
  cp -a "$work/build/bin/libggml-cuda.so" "$bin/"
}

check() {
  say "machine"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; cat "$stage/COMMIT"; } | tee -a "$log"
  ensure_ggml_cuda || return 1
  say "CUDA tests (tests/cuda.rs)"
  "$stage/test-cuda" --test-threads 1 --nocapture >"$out/tests.log" 2>&1
  echo "tests exit $?" | tee -a "$log"
  grep -E "^test |test result|worst|selection:|panicked" "$out/tests.log" | tee -a "$log"
  say "test-backend-ops -b DHSA-CUDA0 -o FLASH_ATTN_EXT (dense mode)"
  GGML_BACKEND_PATH="$stage/libggml_dhsa.so" DHSA_MODE=dense DHSA_MIN_QUERIES=2 DHSA_MIN_KEYS=1 \
    timeout 300 "$bin/test-backend-ops" -b DHSA-CUDA0 -o FLASH_ATTN_EXT >"$out/test-backend-ops.log" 2>&1
  echo "test-backend-ops exit $?" | tee -a "$log"
  grep -cE "OK$" "$out/test-backend-ops.log" | sed 's/^/cases OK: /' | tee -a "$log"
  grep -E "FAIL|tests passed|Backend DHSA|not supported" "$out/test-backend-ops.log" | sort | uniq -c | sort -rn | head -8 | tee -a "$log"
  say "dhsa bench kernels (CUDA)"
  "$stage/dhsa" bench kernels --backend cuda --kv "${KERNEL_KV:-8192,32768,131072}" --modes dense,dhsa,streaming \
    --json --plot "$out/kernels-cuda.png" >"$out/kernels-cuda.json" 2>>"$log"
  echo "bench exit $?" | tee -a "$log"
}

e2e() {
  ensure_ggml_cuda || return 1
  local model="$work/synth-8b-q4_0.gguf"
  if [ ! -e "$model" ]; then
    say "writing the random 8B-shaped Q4_0 model"
    PYTHONPATH="$stage/gguf-py" python3 "$stage/scripts/synth_model.py" "$model" >>"$log" 2>&1 || { echo "model write failed"; return 1; }
  fi
  local lb=("$bin/llama-bench" -m "$model" -ngl 99 -fa 1 -ub 2048 -p 2048 -n 0 -d "${DEPTHS:-65536,131072}" -r "${REPS:-2}" -o json)
  say "llama-bench, stock (CUDA0)"
  "${lb[@]}" >"$work/lb-stock.json" 2>>"$log"
  echo "exit $?" | tee -a "$log"
  say "llama-bench with the plugin (-dev DHSA-CUDA0/CUDA0 -ts 0/1)"
  GGML_BACKEND_PATH="$stage/libggml_dhsa.so" DHSA_STATS=1 "${lb[@]}" -dev DHSA-CUDA0/CUDA0 -ts 0/1 \
    >"$work/lb-dhsa.json" 2>>"$log"
  echo "exit $?" | tee -a "$log"
  grep "dhsa-stats" "$log" | tail -2
  python3 - "$work/lb-stock.json" "$work/lb-dhsa.json" "$out/llama-bench.json" <<'EOF'
import json, sys
stock, dhsa = (json.load(open(p)) for p in sys.argv[1:3])
json.dump({"stock": stock, "dhsa_plugin": dhsa}, open(sys.argv[3], "w"), indent=1)
for s in stock:
    d = next((x for x in dhsa if x["n_depth"] == s["n_depth"]), None)
    r = d["avg_ts"] / s["avg_ts"] if d else float("nan")
    print(f"pp{s['n_prompt']} @ depth {s['n_depth']}: stock {s['avg_ts']:.0f} t/s, dhsa {d['avg_ts'] if d else float('nan'):.0f} t/s, {r:.2f}x")
EOF
  say "dhsa run -ngl 99 (picks DHSA-CUDA0 itself)"
  python3 -c 'import pydoc_data.topics as t; print("".join(t.topics.values())[:60000])' >"$work/prompt.txt"
  "$stage/dhsa" run -m "$model" -ngl 99 -f "$work/prompt.txt" -n 4 -ub 2048 -c 65536 --stats --json \
    >"$work/run.json" 2>>"$log"
  echo "exit $?" | tee -a "$log"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("dhsa run:", json.dumps(d["timings"]), "stats:", json.dumps(d["stats"]))' "$work/run.json" | tee -a "$log"
  say "dhsa bench kernels (CPU, 16 cores)"
  "$stage/dhsa" bench kernels --backend cpu --kv 8192,32768 --modes dense,dhsa --reps 1 --json \
    >"$out/kernels-cpu.json" 2>>"$log"
  echo "exit $?" | tee -a "$log"
}

summary() {
  python3 - "$out" <<'EOF' | tee "$out/summary.txt"
import json, os, sys
out = sys.argv[1]
for name in ["kernels-cuda.json", "kernels-cpu.json"]:
    p = os.path.join(out, name)
    if not os.path.exists(p):
        continue
    d = json.load(open(p))
    print(f"{name}: n_q={d['shape']['n_q']} heads={d['shape']['n_head']}/{d['shape']['n_head_kv']} d={d['shape']['head_dim']}")
    print(f"  {'n_kv':>7} {'impl':<18} {'ms':>9} {'sel':>7} {'attn':>7} {'kept':>6} {'TF/s':>6} {'vs ggml':>7} {'relL2':>8}")
    for r in d["rows"]:
        kept = r["keys_attended"] / r["keys_visible"] if r["keys_visible"] else 1
        print(f"  {r['n_kv']:>7} {r['implementation']:<18} {r['ms']:>9.3f} {r['select_ms']:>7.3f} {r['attn_ms']:>7.3f} "
              f"{kept:>6.3f} {r['tflops']:>6.1f} {r['speedup_vs_ggml']:>6.2f}x {r['rel_l2_vs_ggml']:>8.1e}")
p = os.path.join(out, "llama-bench.json")
if os.path.exists(p):
    d = json.load(open(p))
    for s in d["stock"]:
        x = next((x for x in d["dhsa_plugin"] if x["n_depth"] == s["n_depth"]), None)
        if x:
            print(f"llama-bench pp{s['n_prompt']} depth {s['n_depth']}: stock {s['avg_ts']:.0f} t/s, "
                  f"plugin {x['avg_ts']:.0f} t/s: {x['avg_ts'] / s['avg_ts']:.2f}x")
EOF
}

case "$phase" in
  check) check ;;
  e2e) e2e ;;
  all) check && e2e ;;
  *) echo "usage: gpu-run.sh [check|e2e|all]"; exit 2 ;;
esac
rc=$?
summary
exit $rc
