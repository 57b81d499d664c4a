#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The decode sweep on the GPU (docs/gpu.md), the last step of
# device-check.sh: a kvdrived of BUILD_DIR with its CUDA module, an SSD tier
# under BUILD_DIR and a host tier smaller than the 128K runs' KV, then
#
#   kvdrive-bench report --device cuda --quick --contexts 64K,128K --main-geometry --scale 28 --repeat 3
#
# (full, sparse, lru and kvdrive at 64K and 128K tokens of context, 32 decode
# steps, traces made by `gen --scale 28`, the median of 3 runs for every row
# but full's), and OUT_MD written from its results with the machine it ran
# on. About 3 minutes on an H200 with 16 cores (docs/gpu.md).
#
#   tests/gpu/decode-sweep.sh BUILD_DIR OUT_MD
#   DECODE_HOST_BYTES=1G DECODE_SSD_BYTES=6G DECODE_REPEAT=3 DECODE_CONTEXTS=64K,128K (the defaults)
#   DECODE_DEVICE=cpu DECODE_CONTEXTS=16K DECODE_REPEAT=1: a dry run of the script without a GPU
set -euo pipefail

if [ $# -ne 2 ]; then
        echo "usage: $0 BUILD_DIR OUT_MD" >&2
        exit 2
fi
build=$(cd "$1" && pwd)
out_md=$2
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
host_bytes=${DECODE_HOST_BYTES:-1G}
ssd_bytes=${DECODE_SSD_BYTES:-6G}
repeat=${DECODE_REPEAT:-3}
contexts=${DECODE_CONTEXTS:-64K,128K}
device=${DECODE_DEVICE:-cuda}
work=$build/decode-sweep
sock=$work/kvd.sock
bench=$build/tools/kvdrive-bench
daemon=

stop_daemon() {
        if [ -n "$daemon" ]; then
                kill "$daemon" 2>/dev/null || true
                wait "$daemon" 2>/dev/null || true
                daemon=
        fi
        rm -rf "$work/ssd" "$work/traces"
}
trap stop_daemon EXIT
trap 'exit 143' TERM INT        # timeout(1) stops us: the EXIT trap still runs

rm -rf "$work"
mkdir -p "$work/ssd" "$work/traces"
# The SSD tier on the build's file system: it needs O_DIRECT, which tmpfs lacks.
KVDRIVE_CUDA_MODULE=$build/kvdrived/kvdrive-cuda.so "$build/kvdrived/kvdrived" --foreground --socket "$sock" \
        --host-bytes "$host_bytes" --ssd-dir "$work/ssd" --ssd-bytes "$ssd_bytes" --log-level warning \
        2> "$work/kvdrived.log" &
daemon=$!
for _ in $(seq 200); do
        if "$build/tools/kvdrivectl" --socket "$sock" status > /dev/null 2>&1; then
                break
        fi
        if ! kill -0 "$daemon" 2>/dev/null; then
                echo "kvdrived did not start:" >&2
                cat "$work/kvdrived.log" >&2
                exit 1
        fi
        sleep 0.1
done

report_args=(report --socket "$sock" --device "$device" --quick --contexts "$contexts" --main-geometry --scale 28
             --repeat "$repeat"
             --traces "$work/traces" --out "$work/report")
echo "kvdrive-bench ${report_args[*]}"
# One line per run here, the whole story in the log.
if ! "$bench" "${report_args[@]}" 2> "$work/report.log"; then
        echo "the decode sweep failed; the end of $work/report.log:" >&2
        tail -n 30 "$work/report.log" >&2
        echo "the end of $work/kvdrived.log:" >&2
        tail -n 10 "$work/kvdrived.log" >&2
        exit 1
fi
grep -E 'report: (\[|  )' "$work/report.log" | sed -e 's/ --socket [^ ]*//' -e 's/ --trace [^ ]*//' || true
stop_daemon

gpus=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd ';' -) ||
        gpus=
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1) || cpu=
mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo "unknown")
if [ "$commit" != unknown ] && [ -n "$(git -C "$src" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        commit="$commit (with local changes)"
fi
mkdir -p "$(dirname "$out_md")"
{
        echo "# The decode benchmark on a GPU (\`--device $device\`)"
        echo
        echo "Written by \`tests/gpu/device-check.sh\` (its last step, \`tests/gpu/decode-sweep.sh\`) on" \
             "$(date -u '+%Y-%m-%d %H:%M UTC'), on the machine below, from commit $commit; the tables are" \
             "\`kvdrive-bench report\`'s. How to read them: [decode/README.md](decode/README.md); the same" \
             "sweep on the CPU (2 cores): [decode/results.md](decode/results.md)."
        echo
        echo "Machine: ${gpus:-no nvidia-smi}; ${cpu:-unknown CPU}, $(nproc) cores, $mem; Linux $(uname -r)."
        echo
        echo '```sh'
        echo "KVDRIVE_CUDA_MODULE=BUILD/kvdrived/kvdrive-cuda.so kvdrived --foreground --socket SOCK \\"
        echo "        --host-bytes $host_bytes --ssd-dir DIR --ssd-bytes $ssd_bytes"
        echo "kvdrive-bench report --socket SOCK --device $device --quick --contexts $contexts --main-geometry \\"
        echo "        --scale 28 --repeat $repeat \\"
        echo "        --traces TRACES --out OUT"
        echo '```'
        echo
        # report's own Markdown, one heading level down, without its plots
        # (PNGs next to it there, not here) and with its links from here.
        awk '/^```/ { code = !code } !code && /^#/ { $0 = "#" $0 } !/^!\[/ { print }' "$work/report/results.md" |
                sed -e 's|(README.md)|(decode/README.md)|g' | cat -s
} > "$out_md"
cp "$work/report/results.csv" "$work/results.csv"
echo "wrote $out_md"
