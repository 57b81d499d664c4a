#!/usr/bin/env bash
# tests/soak/run.sh SECONDS [kvdrive-soak options]
#
# Builds (if needed) and runs the soak (soak.c) for SECONDS against the
# daemon of the same build: $KVDRIVE_BUILD (default build), configured with
# $KVDRIVE_MESON_ARGS when new, as tools/kvdrive-test does. Prints the
# soak's summary line; exits non-zero if anything was wrong.
set -euo pipefail
secs=${1:?usage: tests/soak/run.sh SECONDS [--clients N] [--restart-every S]}
shift
cd "$(dirname "$0")/../.."
build=${KVDRIVE_BUILD:-build}
if [ ! -f "$build/build.ninja" ]; then
        # shellcheck disable=SC2086
        meson setup "$build" ${KVDRIVE_MESON_ARGS:-} >/dev/null
fi
ninja -C "$build" kvdrived/kvdrived tests/soak/kvdrive-soak >/dev/null
export KVDRIVED=$PWD/$build/kvdrived/kvdrived
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec "$build/tests/soak/kvdrive-soak" --seconds "$secs" "$@"
