#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS [TARGET...]
#
# Builds the libFuzzer targets (clang, ASan+UBSan, -Dfuzz=enabled) in their
# own build directory ($KVDRIVE_FUZZ_BUILD, default build-fuzz) and runs each
# (default: all) for SECONDS, starting from a copy of its committed corpus in
# tests/fuzz/corpus/TARGET. Fails if any target crashes, leaks, hangs or
# trips a sanitizer; the input that did it is kept in
# BUILD/fuzz-out/TARGET/crashes/ and the log next to it. One line per target.
set -euo pipefail
secs=${1:?usage: tests/fuzz/run.sh SECONDS [TARGET...]}
shift
cd "$(dirname "$0")/../.."
build=${KVDRIVE_FUZZ_BUILD:-build-fuzz}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz-frame fuzz-slot fuzz-daemon fuzz-daemon-ssd fuzz-recover fuzz-codec fuzz-ckpt)

if [ ! -f "$build/build.ninja" ]; then
        log=$(mktemp)
        CC=clang meson setup "$build" -Dfuzz=enabled -Db_sanitize=address,undefined -Db_lundef=false \
                -Dcuda=disabled --werror >"$log" 2>&1 || { cat "$log"; rm -f "$log"; exit 1; }
        rm -f "$log"
fi
ninja -C "$build" "${targets[@]/#/tests/fuzz/}" >"$build/fuzz-build.log" 2>&1 ||
        { tail -50 "$build/fuzz-build.log"; exit 1; }

failed=0
for t in "${targets[@]}"; do
        out=$build/fuzz-out/$t
        rm -rf "$out"
        mkdir -p "$out/corpus" "$out/crashes" "$out/tmp"
        cp tests/fuzz/corpus/"$t"/* "$out/corpus/"
        # TMPDIR: the SSD targets' tier directory stays in $out (libFuzzer
        # does not always run atexit handlers).
        if TMPDIR=$PWD/$out/tmp ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
                "$build/tests/fuzz/$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 \
                -print_final_stats=1 -artifact_prefix="$out/crashes/" "$out/corpus" >"$out/log" 2>&1; then
                status=clean
        else
                status="FAILED (log: $out/log)"
                failed=1
        fi
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/log" | tail -1)
        cov=$(grep -o 'cov: [0-9]*' "$out/log" | tail -1 | cut -d' ' -f2 || true)
        printf '%-16s %4ss  %8s runs  cov %5s  corpus %4s  %s\n' "$t" "$secs" "${runs:-?}" "${cov:-?}" \
                "$(ls "$out/corpus" | wc -l)" "$status"
        if [ "$status" != clean ]; then
                grep -E 'ERROR|SUMMARY|invariant|Test unit written|==[0-9]+==|^[a-z]+:' "$out/log" | head -20 || true
        fi
done
exit $failed
