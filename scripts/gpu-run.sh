#!/usr/bin/env bash
# The GPU run, end to end, on a fresh CUDA machine (no network, no Rust toolchain needed there).
#
#   scripts/stage-gpu.sh STAGE          here: build dhsa --features cuda and stage what the run needs
#   STAGE/scripts/gpu-run.sh [PHASE,...]       there: OUT=results folder (default ./gpu-out)
#
# STAGE holds: bin/ (the pinned llama.cpp's shared libraries and stock tools: llama-bench,
# test-backend-ops; and libggml-cuda.so when it was built ahead), dhsa and libggml_dhsa.so (built
# with --features cuda), test-cuda (the tests/cuda.rs binary), gguf-py/, scripts/, COMMIT, and,
# when bin/ has no libggml-cuda.so, libggml-cuda.so.xz (one built ahead, e.g. by a previous run's
# build phase) or llama-src.tar.xz (the pinned tree's sources the CUDA build needs).
#
# Phases (default: all of them, in this order):
# build:   llama.cpp's CUDA backend when STAGE/bin has none (sm_90, GGML_BACKEND_DL, shared; about 6
#          minutes on 16 cores); with RETURN_LIB=1 it also leaves it in OUT as xz parts of 15 MB
#          (cat them | xz -d) so the next machine need not build it again.
# check:   the CUDA tests (dense vs the f64 reference and the CPU kernel; selection vs the CPU's),
#          test-backend-ops on DHSA-CUDA0 in dense mode.
# kernels: `dhsa bench kernels` on CUDA (ggml-cuda FA, dhsa dense, dhsa, streaming, token-sparse FA).
# profile: ncu's time per dhsa kernel (selection stages, attention) on the 131072-key op.
# e2e:     writes the random Llama-3.1-8B-shaped Q4_0 model, runs stock llama-bench with and without
#        the plugin at depths 65536 and 131072, `dhsa run -ngl 99` (which picks the sidecar itself),
#        and the CPU kernel bench at 8K and 32K.
# multi:   (two GPUs; not in all) -sm layer over DHSA-CUDA0 and DHSA-CUDA1: per-device stats, the
#          same greedy text on one and on two GPUs, llama-bench with and without the plugin at
#          DEPTHS (default 131072) on one and on two GPUs.
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
# plots need a TrueType font; the stage may bring one for machines without fonts-dejavu-core
[ -e "$stage/DejaVuSans.ttf" ] && export DHSA_FONT="$stage/DejaVuSans.ttf"
export CUDA_PATH="${CUDA_PATH:-/usr/local/cuda}"
export PATH="$CUDA_PATH/bin:$PATH"

# the CUDA runtime and cuBLAS that libggml-cuda.so needs, wherever this machine keeps them
find_cuda_libs() {
  local lib missing
  missing=$(ldd "$bin/libggml-cuda.so" 2>/dev/null | awk '/not found/ {print $1}')
  for lib in $missing; do
    local hit
    hit=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$lib" -print 2>/dev/null | head -1)
    if [ -n "$hit" ]; then
      export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$hit")"
    else
      echo "libggml-cuda.so needs $lib, which this machine does not have" | tee -a "$log"
    fi
  done
  ldd "$bin/libggml-cuda.so" | grep -E "cublas|cudart|not found" | tee -a "$log"
  python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)' "$bin/libggml-cuda.so" 2>&1 \
    | tail -1 | sed 's/^/dlopen libggml-cuda.so: /' | tee -a "$log"
}

ensure_ggml_cuda() {
  # a backend built ahead (staged) first, then one already here, then one built by an earlier phase
  if [ -e "$stage/libggml-cuda.so.xz" ] && [ ! -e "$work/.staged-lib" ]; then
    xz -d -c "$stage/libggml-cuda.so.xz" >"$bin/libggml-cuda.so" && touch "$work/.staged-lib"
  fi
  if [ -e "$bin/libggml-cuda.so" ]; then find_cuda_libs; return 0; fi
  if [ -e "$work/build/bin/libggml-cuda.so" ]; then cp -a "$work/build/bin/libggml-cuda.so" "$bin/"; find_cuda_libs; return 0; fi
  say "building llama.cpp's CUDA backend (sm_90)"
  mkdir -p "$work/src"
  tar -xJf "$stage/llama-src.tar.xz" -C "$work/src"
  JOBS=$(nproc) bash "$stage/scripts/build-ggml-cuda.sh" "$work/src" "$work/build" ggml-cuda >>"$log" 2>&1 \
    || { echo "CUDA backend build failed (see $log)"; tail -30 "$log"; return 1; }
  cp -a "$work/build/bin/libggml-cuda.so" "$bin/"
  find_cuda_libs
}

build() {
  say "machine"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; cat "$stage/COMMIT"; } | tee -a "$log"
  local had=0
  [ -e "$bin/libggml-cuda.so" ] && had=1
  ensure_ggml_cuda || return 1
  if [ "$had" = 0 ] && [ "${RETURN_LIB:-0}" = 1 ]; then
    xz -T0 -6 -c "$bin/libggml-cuda.so" | split -b 15M - "$out/libggml-cuda.so.xz.part-"
    ls -la "$out"/libggml-cuda.so.xz.part-* | tee -a "$log"
  fi
}

check() {
  ensure_ggml_cuda || return 1
  say "CUDA tests (tests/cuda.rs)"
  "$stage/test-cuda" --test-threads 1 --nocapture >"$out/tests.log" 2>&1
  echo "tests exit $?" | tee -a "$log"
  grep -E "^test |test result|worst|selection:|panicked" "$out/tests.log" | tee -a "$log"
  say "test-backend-ops -b DHSA-CUDA0 -o FLASH_ATTN_EXT (dense mode)"
  GGML_BACKEND_PATH="$stage/libggml_dhsa.so" DHSA_MODE=dense DHSA_MIN_QUERIES=2 DHSA_MIN_KEYS=1 \
    timeout 300 "$bin/test-backend-ops" -b DHSA-CUDA0 -o FLASH_ATTN_EXT >"$out/test-backend-ops.log" 2>&1
  echo "test-backend-ops exit $?" | tee -a "$log"
  grep -E "tests passed|Backend DHSA|backends passed|FAIL" "$out/test-backend-ops.log" | tee -a "$log"
  echo "ops declined (not supported): $(grep -c 'not supported' "$out/test-backend-ops.log")" | tee -a "$log"
  return 0
}

kernels() {
  ensure_ggml_cuda || return 1
  say "dhsa bench kernels (CUDA)"
  "$stage/dhsa" bench kernels --backend cuda --kv "${KERNEL_KV:-8192,32768,131072}" --modes dense,dhsa,streaming \
    --json --plot "$out/kernels-cuda.png" >"$out/kernels-cuda.json" 2>>"$log"
  echo "bench exit $?" | tee -a "$log"
}

profile() {
  ensure_ggml_cuda || return 1
  say "ncu: dhsa kernels on the 131072-key op"
  local ncu
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  [ -n "$ncu" ] || { echo "no ncu on this machine"; return 0; }
  timeout 240 "$ncu" -k 'regex:^(dhsa::)?k_' --metrics gpu__time_duration.sum,dram__bytes.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed \
    --csv "$stage/dhsa" bench kernels --backend cuda --kv 131072 --modes dhsa --reps 1 >"$work/ncu.csv" 2>>"$log"
  python3 - "$work/ncu.csv" <<'EOF2' | tee "$out/ncu-kernels.txt"
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; rows = rows[1:]
ki, mi, vi = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
t = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    name = r[ki].split("(")[0].split("<")[0]
    t[name][r[mi]].append(float(r[vi].replace(",", "")))
print(f"{'kernel':<22} {'calls':>5} {'us/call':>9} {'MB/call':>9} {'SM %':>6}")
for k, m in sorted(t.items(), key=lambda kv: -sum(kv[1]["gpu__time_duration.sum"])):
    n = len(m["gpu__time_duration.sum"])
    us = sum(m["gpu__time_duration.sum"]) / n / 1e3
    mb = sum(m.get("dram__bytes.sum", [0])) / n / 1e6
    sm = sum(m.get("sm__throughput.avg.pct_of_peak_sustained_elapsed", [0])) / n
    print(f"{k:<22} {n:>5} {us:>9.1f} {mb:>9.1f} {sm:>6.1f}")
EOF2
}

model="$work/synth-8b-q4_0.gguf"
synth_model() {
  if [ ! -e "$model" ]; then
    say "writing the random 8B-shaped Q4_0 model"
    PYTHONPATH="$stage/gguf-py" python3 "$stage/scripts/synth_model.py" "$model" >>"$log" 2>&1 || { echo "model write failed"; return 1; }
  fi
}

e2e() {
  ensure_ggml_cuda || return 1
  synth_model || return 1
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
  python3 -c 'import pydoc_data.topics as t; print("".join(t.topics.values())[:40000])' >"$work/prompt.txt"
  "$stage/dhsa" run -m "$model" -ngl 99 -f "$work/prompt.txt" -n 4 -ub 2048 -c 65536 --stats --json \
    >"$work/run.json" 2>>"$log"
  echo "exit $?" | tee -a "$log"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("dhsa run:", json.dumps(d["timings"]), "stats:", json.dumps(d["stats"]))' "$work/run.json" | tee -a "$log"
  say "dhsa bench kernels (CPU, 16 cores)"
  "$stage/dhsa" bench kernels --backend cpu --kv 8192,32768 --modes dense,dhsa --reps 1 --json \
    >"$out/kernels-cpu.json" 2>>"$log"
  echo "exit $?" | tee -a "$log"
}

# multi: two GPUs, layers split (-sm layer): DHSA-CUDA0 and DHSA-CUDA1 each take the FA ops of the
# layers on their GPU. Per-device stats, the same greedy answer on one and on two GPUs (dhsa run,
# same mode), and stock llama-bench with and without the plugin at DEPTHS on one and on two GPUs.
multi() {
  ensure_ggml_cuda || return 1
  local n
  n=$(nvidia-smi -L 2>/dev/null | wc -l)
  [ "$n" -ge 2 ] || { echo "multi: this machine has $n GPU(s); two are needed" | tee -a "$log"; return 1; }
  synth_model || return 1
  python3 -c 'import pydoc_data.topics as t; print("".join(t.topics.values())[:40000])' >"$work/prompt.txt"
  local g
  for g in 1 2; do
    local vis=0; [ "$g" = 2 ] && vis=0,1
    say "dhsa run on $g GPU(s) (CUDA_VISIBLE_DEVICES=$vis; sidecars picked by dhsa)"
    CUDA_VISIBLE_DEVICES=$vis "$stage/dhsa" run -m "$model" -ngl 99 -f "$work/prompt.txt" -n 16 -ub 2048 -c 65536 \
      --stats --json >"$out/run-${g}gpu.json" 2>"$work/run-${g}gpu.err"
    echo "exit $?" | tee -a "$log"
    cat "$work/run-${g}gpu.err" >>"$log"
    grep "dhsa-stats" "$work/run-${g}gpu.err" | tee "$out/stats-${g}gpu.txt"
  done
  python3 - "$out/run-1gpu.json" "$out/run-2gpu.json" <<'EOF2' | tee -a "$log"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print("same text on 1 and 2 GPUs:", a["text"] == b["text"], "| prefill s 1 GPU %.2f, 2 GPUs %.2f" % (a["timings"]["prefill_s"], b["timings"]["prefill_s"]))
EOF2
  local lb=("$bin/llama-bench" -m "$model" -ngl 99 -fa 1 -ub 2048 -p 2048 -n 0 -d "${DEPTHS:-131072}" -r "${REPS:-1}" -o json)
  say "llama-bench, stock, one GPU"
  "${lb[@]}" -dev CUDA0 >"$work/lb1-stock.json" 2>>"$log"; echo "exit $?" | tee -a "$log"
  say "llama-bench, plugin, one GPU (-dev DHSA-CUDA0/CUDA0 -ts 0/1)"
  GGML_BACKEND_PATH="$stage/libggml_dhsa.so" "${lb[@]}" -dev DHSA-CUDA0/CUDA0 -ts 0/1 >"$work/lb1-dhsa.json" 2>>"$log"
  echo "exit $?" | tee -a "$log"
  say "llama-bench, stock, two GPUs (-sm layer -dev CUDA0/CUDA1)"
  "${lb[@]}" -sm layer -dev CUDA0/CUDA1 >"$work/lb2-stock.json" 2>>"$log"; echo "exit $?" | tee -a "$log"
  say "llama-bench, plugin, two GPUs (-sm layer -dev DHSA-CUDA0/CUDA0/DHSA-CUDA1/CUDA1 -ts 0/1/0/1)"
  GGML_BACKEND_PATH="$stage/libggml_dhsa.so" DHSA_STATS=1 "${lb[@]}" -sm layer -dev DHSA-CUDA0/CUDA0/DHSA-CUDA1/CUDA1 \
    -ts 0/1/0/1 >"$work/lb2-dhsa.json" 2>"$work/lb2-dhsa.err"
  echo "exit $?" | tee -a "$log"
  cat "$work/lb2-dhsa.err" >>"$log"
  grep "dhsa-stats" "$work/lb2-dhsa.err" | tee "$out/stats-llama-bench-2gpu.txt"
  python3 - "$work" "$out/llama-bench-multi.json" <<'EOF2' | tee -a "$log"
import json, os, sys
w = sys.argv[1]
runs = {k: json.load(open(os.path.join(w, k + ".json"))) for k in ["lb1-stock", "lb1-dhsa", "lb2-stock", "lb2-dhsa"]
        if os.path.getsize(os.path.join(w, k + ".json")) > 0}
json.dump(runs, open(sys.argv[2], "w"), indent=1)
for g in ["1", "2"]:
    s, d = runs.get(f"lb{g}-stock", []), runs.get(f"lb{g}-dhsa", [])
    for x in s:
        y = next((y for y in d if y["n_depth"] == x["n_depth"]), None)
        if y:
            print(f"{g} GPU(s) pp{x['n_prompt']} depth {x['n_depth']}: stock {x['avg_ts']:.0f} t/s, plugin {y['avg_ts']:.0f} t/s: {y['avg_ts'] / x['avg_ts']:.2f}x")
EOF2
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

[ "$phase" = all ] && phase=build,check,kernels,e2e
rc=0
for p in ${phase//,/ }; do
  case "$p" in
    build | check | kernels | profile | e2e | multi) "$p" || { rc=1; break; } ;;
    *) echo "usage: gpu-run.sh [build,check,kernels,profile,e2e,multi | all]"; exit 2 ;;
  esac
done
summary
exit $rc
