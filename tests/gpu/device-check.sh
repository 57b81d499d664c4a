#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The GPU path on a machine with an NVIDIA GPU (docs/gpu.md), in about 10
# minutes on an H200 with 16 cores: a fresh build with CUDA on, the gpu suite
# (kernels against their C references, GPU -> host -> SSD -> GPU round trip,
# a GPU client killed mid-transfer, the decode bench on the GPU against the
# CPU) with skips counted as failures, the whole suite, the transfer
# benchmark, then the decode sweep on the GPU (decode-sweep.sh), which writes
# docs/bench/gpu.md. Prints a short Markdown table last.
#
#   tests/gpu/device-check.sh [BUILD_DIR]      (default: build-gpu)
#   BENCH_BYTES=1G BENCH_BLOCK=1M JOBS=16 GPU_MD=docs/bench/gpu.md tests/gpu/device-check.sh
#   SKIP_DECODE_SWEEP=1: stop after the transfer benchmark
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$src/build-gpu}
jobs=${JOBS:-$(nproc)}
gpu_md=${GPU_MD:-$src/docs/bench/gpu.md}
export PATH=/usr/local/cuda/bin:$PATH
start=$SECONDS
results=()

step() {        # step NAME SECONDS COMMAND...
        local name=$1 limit=$2 t0=$SECONDS rc=0
        shift 2
        echo "=== $name (limit ${limit}s)"
        timeout --kill-after=10 "$limit" "$@" || rc=$?
        results+=("| $name | $([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)") | $((SECONDS - t0)) s |")
        if [ $rc -ne 0 ]; then
                echo "=== $name failed with status $rc" >&2
                summary
                exit 1
        fi
}

summary() {
        echo
        echo "| step | result | time |"
        echo "|---|---|---|"
        printf '%s\n' "${results[@]}"
        echo "| total | | $((SECONDS - start)) s |"
        if [ -s "$build/bench.md" ]; then
                cat "$build/bench.md"
        fi
        if [ -s "$build/decode-sweep/results.csv" ]; then
                echo
                echo "decode sweep (tokens/s, mass recall): $gpu_md"
                awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
                         { printf "| %sK | %s | %s clients | %s tokens/s | mass recall %s |\n", $col["context_tokens"] / 1024,
                                  $col["policy"], $col["clients"], $col["tokens_per_s"], $col["mass_recall_mean"] }' \
                        "$build/decode-sweep/results.csv"
        fi
}

command -v nvcc >/dev/null || { echo "nvcc not found (PATH=$PATH)" >&2; exit 1; }
nvidia-smi -L || { echo "no NVIDIA GPU visible: nothing to check here" >&2; exit 1; }

rm -rf "$build"
step "meson setup (CUDA on)" 120 meson setup "$build" "$src" -Dcuda=enabled -Dwerror=true
step "build" 240 ninja -C "$build" -j"$jobs"
# A GPU suite that skips here has not proven anything: make it fail instead.
export KVD_GPU_REQUIRED=1
step "gpu suite" 180 meson test -C "$build" --suite gpu --print-errorlogs
if grep -q "SKIP" "$build/meson-logs/testlog.txt"; then
        results+=("| gpu suite skips | FAILED | |")
        echo "=== a gpu test skipped on a GPU machine" >&2
        summary
        exit 1
fi
step "full suite" 240 meson test -C "$build" --print-errorlogs --num-processes "$jobs"
step "transfer benchmark" 90 sh -c "'$build/tests/gpu/bench-gpu-transfer' --bytes '${BENCH_BYTES:-1G}' \
        --block '${BENCH_BLOCK:-1M}' > '$build/bench.md'"
if [ "${SKIP_DECODE_SWEEP:-0}" != 1 ]; then
        # full, sparse, lru, kvdrive at 64K and 128K, medians of 3: about 3 minutes.
        step "decode sweep (GPU)" 330 "$src/tests/gpu/decode-sweep.sh" "$build" "$gpu_md"
fi
summary
